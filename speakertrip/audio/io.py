"""Reading audio: whole files, in-memory signals and partial crops, with errors that name the file.

soundfile (libsndfile) reads wav, flac, ogg/opus, mp3, aiff and more (:func:`readable_formats`
lists what the installed libsndfile reads) at any channel count, at sample rates from 8 to 192 kHz
(:data:`MIN_SAMPLE_RATE`, :data:`MAX_SAMPLE_RATE`); :func:`resample` is SciPy's polyphase resampler with
torchaudio's kernel, whose cost stays bounded for any pair of rates.
Signals come back mono float32 in [-1, 1], except :func:`read_crop`, which keeps 16-bit PCM
as int16 (half the bytes to move through a DataLoader; :func:`to_float` converts on the device).
"""

from __future__ import annotations

import math
import os
import struct
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Union

import numpy as np
import soundfile as sf

from speakertrip.errors import AudioError

PathLike = Union[str, Path]
FLOAT_SUBTYPES = ("FLOAT", "DOUBLE")  # the sample formats that can hold NaN or infinity
COMMON_FORMATS = ("WAV", "FLAC", "OGG", "MP3", "AIFF", "CAF", "W64", "RF64")
Signal = Union[np.ndarray, "torch.Tensor"]  # noqa: F821 - torch is imported only where a tensor can exist
_INT_SCALE = {np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0, np.dtype(np.int8): 128.0}
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 8000, 192000  # Hz: the rates audio is accepted at
MAX_PHASES = 10000  # the ratio up/down is reduced to terms of at most this: a filter of at most 13 * MAX_PHASES taps
LOWPASS_WIDTH, ROLLOFF = 6, 0.99  # torchaudio's resampling kernel: a Hann-windowed sinc of 6 zero crossings a side


def is_tensor(value: object) -> bool:
    """True for a torch tensor, without importing torch (a tensor cannot exist before torch is imported)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


@dataclass(frozen=True)
class AudioInfo:
    """What the header of an audio file says."""

    frames: int
    sample_rate: int
    channels: int
    subtype: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _open(path: PathLike) -> sf.SoundFile:
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: no such audio file" + (" (it is a directory)" if path.is_dir() else ""))
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: empty file (0 bytes)")
    try:
        return sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as error:
        reason = getattr(error, "error_string", str(error)).rstrip(".")
        hint = " Convert m4a/aac with `speakertrip convert`." if path.suffix.lower() in {".m4a", ".aac", ".mp4"} else ""
        raise AudioError(f"{path}: not a readable audio file (expected {readable_formats()}): {reason}.{hint}") from None


def readable_formats() -> str:
    """The common formats the installed libsndfile reads, e.g. ``"wav, flac, ogg, mp3, aiff, ..."``.

    >>> "wav" in readable_formats()
    True
    """
    available = sf.available_formats()
    return ", ".join(name.lower() for name in COMMON_FORMATS if name in available) + ", ..."


def check_finite_samples(path: PathLike, block_frames: int = 1 << 20) -> None:
    """AudioError naming ``path`` when a sample is NaN or infinite; reads in blocks of ``block_frames``.

    Only float files can hold such samples; what their header says cannot tell (see FLOAT_SUBTYPES).
    """
    bad = total = 0
    with _open(path) as handle:
        try:
            for block in handle.blocks(block_frames, dtype="float32", always_2d=True):
                bad += int(block.size - np.count_nonzero(np.isfinite(block)))
                total += block.size
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{path}: corrupt audio data: {error}") from None
    if bad:
        raise AudioError(f"{path}: contains NaN or infinite samples ({bad} of {total})")


def audio_info(path: PathLike) -> AudioInfo:
    """Frames, sample rate, channels and sample format of ``path``, read from its header."""
    with _open(path) as handle:
        return AudioInfo(handle.frames, handle.samplerate, handle.channels, handle.subtype)


def to_float(waves: Signal) -> Signal:
    """Integer PCM → float32 in [-1, 1); float input is returned as float32. Works on any device.

    >>> import torch
    >>> to_float(torch.tensor([-32768, 16384], dtype=torch.int16)).tolist()
    [-1.0, 0.5]
    """
    if is_tensor(waves):
        if waves.is_floating_point():
            return waves.float()
        return waves.float() / (1 << (waves.element_size() * 8 - 1))
    waves = np.asarray(waves)
    if np.issubdtype(waves.dtype, np.floating):
        return waves.astype(np.float32, copy=False)
    if waves.dtype not in _INT_SCALE:
        raise AudioError(f"unsupported sample type {waves.dtype}; expected int8/16/32 or float")
    return (waves.astype(np.float32) / _INT_SCALE[waves.dtype]).astype(np.float32)


def check_sample_rate(sample_rate: int, name: str = "<array>") -> int:
    """``sample_rate`` if it is an integer in [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE] Hz, else AudioError naming ``name``.

    >>> check_sample_rate(44100)
    44100
    """
    if isinstance(sample_rate, bool) or not float(sample_rate).is_integer() or \
            not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(f"{name}: sample rate {sample_rate} Hz is outside the accepted {MIN_SAMPLE_RATE}-"
                         f"{MAX_SAMPLE_RATE} Hz; convert the audio to a common rate such as 16000 or 48000 Hz")
    return int(sample_rate)


def resampling_ratio(sample_rate: int, target_rate: int) -> tuple[int, int]:
    """``(up, down)``: target / sample rate in lowest terms, or its closest fraction with terms of at most
    MAX_PHASES (co-prime rates such as 44101 → 16000), which changes the rate by at most 5e-5 of itself
    between 8 and 192 kHz (a pitch shift far below one cent).

    >>> resampling_ratio(44100, 16000), resampling_ratio(8000, 16000), resampling_ratio(44101, 16000)
    ((160, 441), (2, 1), (1703, 4694))
    """
    ratio = Fraction(target_rate, sample_rate)
    if ratio <= 1:
        ratio = ratio.limit_denominator(MAX_PHASES)
    else:
        ratio = 1 / (1 / ratio).limit_denominator(MAX_PHASES)
    return ratio.numerator, ratio.denominator


def resample(signal: np.ndarray, sample_rate: int, target_rate: int) -> np.ndarray:
    """Band-limited polyphase resampling; signal (T,) float32 → (ceil(T * target_rate / sample_rate),) float32.

    The filter is torchaudio's default kernel (a Hann-windowed sinc, 6 zero crossings a side, cut off at
    0.99 of the lower Nyquist frequency) designed by ``scipy.signal.firwin`` and applied by
    ``scipy.signal.resample_poly``. Time and memory are O(T + MAX_PHASES) for any pair of rates in the
    accepted range: the ratio is reduced to :func:`resampling_ratio`'s bounded terms first (torchaudio's
    table grows with the product of co-prime rates: 44101 Hz took it 100 s). On real voices the result
    is within 0.2 % (relative RMS) of torchaudio's ``resample`` from 8-96 kHz to 16 kHz
    (``scripts/bench_resample.py``).

    >>> resample(np.ones(44100, np.float32), 44100, 16000).shape
    (16000,)
    """
    if sample_rate == target_rate:
        return signal
    from scipy.signal import firwin, resample_poly

    up, down = resampling_ratio(sample_rate, target_rate)
    phases = max(up, down)
    kernel = firwin(2 * math.ceil(LOWPASS_WIDTH * phases / ROLLOFF) + 1, ROLLOFF / phases, window="hann")
    length = math.ceil(len(signal) * target_rate / sample_rate)
    result = resample_poly(signal, up, down, window=kernel).astype(np.float32, copy=False)[:length]
    if len(result) < length:  # a rounded ratio can fall a sample short
        result = np.pad(result, (0, length - len(result)))
    return np.ascontiguousarray(result)


def prepare_waveform(signal: Signal, sample_rate: int, target_rate: int | None = None,
                     min_duration: float = 0.0, name: str = "<array>") -> np.ndarray:
    """Validate an in-memory signal and make it mono float32 at ``target_rate``.

    Parameters
    ----------
    signal : (T,) or 2-D with channels on the shorter axis ((T, C) as soundfile, (C, T) as torchaudio)
    sample_rate : rate of ``signal`` in Hz
    target_rate : resample to this rate; None keeps ``sample_rate``
    min_duration : seconds; shorter signals raise AudioError
    name : how errors refer to the signal (a file name when it came from one)

    Returns
    -------
    np.ndarray float32 (T',)

    >>> prepare_waveform(np.ones((8000, 2), np.float32) * 0.1, 8000, 16000).shape
    (16000,)
    """
    if is_tensor(signal):
        signal = signal.detach().cpu().numpy()
    signal = to_float(np.asarray(signal))
    if signal.size == 0:
        raise AudioError(f"{name}: no samples (empty audio)")
    if signal.ndim == 2:
        signal = signal.mean(axis=int(np.argmin(signal.shape)), dtype=np.float32)
    if signal.ndim != 1:
        raise AudioError(f"{name}: expected a 1-D or 2-D (channels) signal, got shape {signal.shape}")
    sample_rate = check_sample_rate(sample_rate, name)
    if not np.isfinite(signal).all():
        bad = int((~np.isfinite(signal)).sum())
        raise AudioError(f"{name}: contains NaN or infinite samples ({bad} of {signal.size})")
    if not signal.any():
        raise AudioError(f"{name}: all samples are zero (silent audio)")
    duration = signal.size / sample_rate
    if duration < min_duration:
        raise AudioError(f"{name}: {duration:.3f} s of audio is shorter than the minimum {min_duration:g} s")
    return resample(np.ascontiguousarray(signal, dtype=np.float32), sample_rate, target_rate or sample_rate)


def load_audio(path: PathLike, sample_rate: int | None = None, min_duration: float = 0.0) -> np.ndarray:
    """Read a whole file as mono float32, resampled to ``sample_rate`` when given.

    >>> import tempfile
    >>> from speakertrip.testing import speech_like
    >>> path = Path(tempfile.mkdtemp()) / "utt1.wav"
    >>> sf.write(path, speech_like(speaker=1, duration=1.0), 16000)
    >>> signal = load_audio(path, sample_rate=8000)
    >>> signal.dtype, signal.shape
    (dtype('float32'), (8000,))

    Raises AudioError naming the file when it is missing, empty, not audio, corrupt, silent,
    holds NaN/inf or is shorter than ``min_duration`` seconds.
    """
    with _open(path) as handle:
        rate = handle.samplerate
        try:
            signal = handle.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{path}: corrupt audio data: {error}") from None
    mono = signal[:, 0] if signal.shape[1] == 1 else signal.mean(axis=1, dtype=np.float32)
    return prepare_waveform(mono, rate, sample_rate, min_duration, name=str(path))


def _pcm16_wav_layout(handle: BinaryIO) -> tuple[int, int, int, int] | None:
    """``(data offset, frames, channels, sample rate)`` of a 16-bit PCM wav, else None (use soundfile)."""
    head = handle.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    layout = None
    while True:
        chunk = handle.read(8)
        if len(chunk) < 8:
            return None
        name, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
        if name == b"fmt ":
            fmt = handle.read(size + (size & 1))
            if len(fmt) < 16:
                return None
            tag, channels, rate, _, align, bits = struct.unpack("<HHIIHH", fmt[:16])
            if tag == 0xFFFE and len(fmt) >= 26:  # WAVE_FORMAT_EXTENSIBLE: the sub-format says PCM or not
                tag = struct.unpack("<H", fmt[24:26])[0]
            if tag != 1 or bits != 16 or align != 2 * channels or channels == 0:
                return None
            layout = (channels, rate)
        elif name == b"data":
            if layout is None:
                return None
            offset = handle.tell()
            available = os.fstat(handle.fileno()).st_size - offset
            return offset, min(size, available) // (2 * layout[0]), layout[0], layout[1]
        else:
            handle.seek(size + (size & 1), os.SEEK_CUR)


def _read_pcm16_wav(path: PathLike, start: int, num_frames: int, sample_rate: int | None) -> np.ndarray | None:
    """Crop of a 16-bit PCM wav read with one seek and one read; None when the file is anything else."""
    try:
        with open(path, "rb") as handle:
            layout = _pcm16_wav_layout(handle)
            if layout is None or (sample_rate and sample_rate != layout[3]):
                return None
            offset, frames, channels, _ = layout
            count = max(0, min(num_frames, frames - start))
            handle.seek(offset + 2 * channels * min(start, frames))
            data = handle.read(2 * channels * count)
    except (OSError, struct.error):
        return None
    block = np.frombuffer(data, dtype="<i2").reshape(-1, channels)
    if channels == 1:
        return block[:, 0].astype(np.int16)  # a writable native-order copy
    return block.mean(axis=1, dtype=np.float32).astype(np.int16)


def read_crop(path: PathLike, start: int, num_frames: int, sample_rate: int | None = None) -> np.ndarray:
    """Read ``num_frames`` frames from ``start`` (both at ``sample_rate``) without reading the rest.

    16-bit PCM wav files (what VoxCeleb ships) are read directly with one seek and one read;
    everything else goes through soundfile.

    Returns (n,) mono with n <= num_frames (fewer at the end of the file): int16 when the file is
    16-bit PCM and needs no resampling, float32 otherwise. Crops are not checked for silence.
    """
    if start < 0 or num_frames < 0:
        raise AudioError(f"{path}: crop start ({start}) and length ({num_frames}) must be >= 0")
    if str(path).lower().endswith(".wav"):
        fast = _read_pcm16_wav(path, start, num_frames, sample_rate)
        if fast is not None:
            return fast
    with _open(path) as handle:
        rate = handle.samplerate
        target = sample_rate or rate
        native = handle.subtype == "PCM_16" and target == rate
        first = start * rate // target
        count = -(-num_frames * rate // target) + (0 if target == rate else 16)
        try:
            handle.seek(min(first, handle.frames))
            block = handle.read(count, dtype="int16" if native else "float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError) as error:
            raise AudioError(f"{path}: corrupt audio data: {error}") from None
    if block.shape[1] > 1:
        block = block.mean(axis=1, dtype=np.float32).astype(block.dtype)
    else:
        block = block[:, 0]
    if not native:
        check_sample_rate(rate, str(path))
        block = resample(np.ascontiguousarray(block, dtype=np.float32), rate, target)
    return np.ascontiguousarray(block[:num_frames])
