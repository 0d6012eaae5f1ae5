"""Trimming leading and trailing silence by frame energy (no VAD model)."""

from __future__ import annotations

import numpy as np

SILENT_POWER = 1e-10  # mean square of a frame that counts as digital silence


def trim_silence(signal: np.ndarray, sample_rate: int, top_db: float = 40.0, frame_seconds: float = 0.025,
                 hop_seconds: float = 0.010, pad_seconds: float = 0.0, centered: bool = True) -> np.ndarray:
    """Cut leading and trailing frames quieter than ``top_db`` below the loudest frame; signal (T,) → (T',).

    ``centered`` frames are centred every ``hop_seconds`` (as ``librosa.effects.trim``, with whose
    output this agrees for the same frame and hop lengths); otherwise frames start every
    ``hop_seconds`` from sample 0 and a partial last frame is ignored. ``pad_seconds`` of audio
    are kept on each side of the loud part. A signal with no frame above the floor, or a silent one, comes back whole.

    >>> tone = np.sin(np.arange(16000) / 5).astype(np.float32)
    >>> trim_silence(np.concatenate([np.zeros(8000, np.float32), tone, np.zeros(8000, np.float32)]), 16000).size
    16480
    """
    frame, hop = int(round(frame_seconds * sample_rate)), int(round(hop_seconds * sample_rate))
    source = signal.astype(np.float64)
    if centered:
        source = np.pad(source, frame // 2)
    count = 1 + (len(source) - frame) // hop
    if count < 1:
        return signal
    frames = np.lib.stride_tricks.as_strided(source, (count, frame), (source.strides[0] * hop, source.strides[0]))
    power = np.maximum(np.mean(frames ** 2, axis=1), SILENT_POWER)
    loud = np.flatnonzero(10 * np.log10(power / power.max()) > -top_db)
    if len(loud) == 0 or power.max() <= SILENT_POWER:
        return signal
    keep = int(pad_seconds * sample_rate)
    end = loud[-1] * hop + (hop if centered else frame)  # a centred frame's hop, or the frame itself
    return signal[max(0, loud[0] * hop - keep): min(len(signal), end + keep)]
