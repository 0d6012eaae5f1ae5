"""Trimming leading and trailing silence by frame energy (no VAD model)."""

from __future__ import annotations

import numpy as np

SILENT_POWER = 1e-10  # mean square of a frame that counts as digital silence


def trim_silence(signal: np.ndarray, sample_rate: int, top_db: float = 40.0, frame_seconds: float = 0.025,
                 hop_seconds: float = 0.010, pad_seconds: float = 0.0, centered: bool = True) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``top_db`` below the loudest frame; signal (T,) → (T',).

    ``centered`` frames are centred every ``hop_seconds``: that is ``librosa.effects.trim``, which
    does it. Otherwise frames start every ``hop_seconds`` from sample 0 and a partial last frame is
    ignored (the synthetic corpus's framing, which librosa does not offer). ``pad_seconds`` of audio
    are kept on each side of the loud part. A silent signal comes back whole.

    >>> tone = np.sin(np.arange(16000) / 5).astype(np.float32)
    >>> trim_silence(np.concatenate([np.zeros(8000, np.float32), tone, np.zeros(8000, np.float32)]), 16000).size
    16480
    """
    frame, hop = int(round(frame_seconds * sample_rate)), int(round(hop_seconds * sample_rate))
    if centered:
        import librosa

        _, (start, end) = librosa.effects.trim(signal, top_db=top_db, frame_length=frame, hop_length=hop)
    else:
        start, end = _uncentred_span(signal, top_db, frame, hop)
    keep = int(pad_seconds * sample_rate)
    return signal[max(0, start - keep): min(len(signal), end + keep)]


def _uncentred_span(signal: np.ndarray, top_db: float, frame: int, hop: int) -> tuple[int, int]:
    """(start, end) samples of the loud frames, frames starting at 0, hop, 2 hop, ...; the whole signal if silent."""
    count = 1 + (len(signal) - frame) // hop
    if count < 1:
        return 0, len(signal)
    energy = np.concatenate(([0.0], np.cumsum(np.square(signal, dtype=np.float64))))
    starts = np.arange(count) * hop
    power = np.maximum((energy[starts + frame] - energy[starts]) / frame, SILENT_POWER)
    loud = np.flatnonzero(10 * np.log10(power / power.max()) > -top_db)
    if len(loud) == 0 or power.max() <= SILENT_POWER:
        return 0, len(signal)
    return int(loud[0] * hop), int(loud[-1] * hop + frame)
