"""The log-mel frontend shared by training and inference: a batched torch module with lengths.

Three modes compute the same kind of feature three ways, and a fourth feeds GE2E:

``speakertrip`` (default)
    Centred frames with zero padding (``1 + T // hop`` frames), optional pre-emphasis of the
    waveform, HTK mel filters, ``log(mel + log_floor)``; the frontend of voxceleb_trainer.
``kaldi``
    What ``torchaudio.compliance.kaldi.fbank`` computes (snip-edges framing, DC removal,
    per-frame pre-emphasis, Kaldi mel banks from torchaudio, ``log(max(mel, log_floor))``),
    batched with lengths and checked against it in the tests; with :meth:`FeatureConfig.kaldi`
    it is what WeSpeaker models were trained on.
``speechbrain``
    ``speechbrain.lobes.features.Fbank`` (centred STFT, SpeechBrain's filters, decibels clipped
    80 dB below each utterance's peak); with :meth:`FeatureConfig.speechbrain` it feeds a
    SpeechBrain ECAPA checkpoint the features it was trained on.
``ge2e``
    Resemblyzer's ``wav_to_mel_spectrogram`` (librosa's centred STFT, Slaney mel filters, mel *power*,
    no log, no normalisation), after its volume normalisation: a quieter utterance is raised to
    -30 dBFS (:data:`GE2E_TARGET_DBFS`), a louder one left as it is. Frames after the end are kept: they
    hold the silence that follows the signal, which is what Resemblyzer's last padded window sees.
    With :meth:`FeatureConfig.ge2e` it feeds the GE2E encoder (:mod:`speakertrip.models.ge2e`).

The first three modes then subtract the per-utterance mean (and optionally divides by the standard
deviation) over its valid frames only, so padding never changes a feature.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from speakertrip.audio import to_float
from speakertrip.errors import ConfigError
from speakertrip.options import build_dataclass

MODES = ("speakertrip", "kaldi", "speechbrain", "ge2e")
WINDOWS = ("hamming", "hann", "povey")
SPEECHBRAIN_TOP_DB = 80.0  # dynamic range kept by speechbrain's Filterbank (not configurable there)
GE2E_TARGET_DBFS = -30.0  # Resemblyzer's audio_norm_target_dBFS: quieter utterances are raised to it
# On CPU, rows are transformed a few at a time: the spectra of 8 rows stay in cache, and that ran
# 2-4x faster than one pass over a batch of 128 (scripts/bench_data.py).
CPU_ROWS_PER_PASS = 8


# Upper bounds of the sizes a config may ask for (an artifact's config.yaml is read from the user's files):
# far above any speaker model's, far below an allocation that exhausts memory.
SIZE_LIMITS = {"n_fft": 16384, "win_length": 16384, "hop_length": 16384, "n_mels": 512, "sample_rate": 192000}


@dataclass(frozen=True)
class FeatureConfig:
    """How waveforms become log-mel features; saved inside every model artifact.

    Lengths are in samples, frequencies in Hz. ``waveform_scale`` multiplies the float waveform
    first (Kaldi-trained models expect int16 amplitudes: 32768). ``dither`` adds Gaussian noise
    of that standard deviation in training mode only. ``spec_*`` set SpecAugment, applied in
    training mode only: up to ``spec_time_masks`` masks of at most ``spec_time_width`` frames and
    ``spec_freq_masks`` masks of at most ``spec_freq_width`` mel bins (0 masks: off).

    >>> FeatureConfig.from_dict({"n_mels": 40}).n_mels
    40
    """

    sample_rate: int = 16000
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    n_mels: int = 80
    f_min: float = 20.0
    f_max: float = 7600.0
    preemphasis: float | None = None
    log_floor: float = 1e-6
    mean_norm: bool = True
    var_norm: bool = False
    mode: str = "speakertrip"
    window: str = "hamming"
    waveform_scale: float = 1.0
    dither: float = 0.0
    spec_time_masks: int = 0
    spec_time_width: int = 10
    spec_freq_masks: int = 0
    spec_freq_width: int = 8

    def __post_init__(self) -> None:
        problems = []
        if self.mode not in MODES:
            problems.append(f"mode {self.mode!r} is not one of {', '.join(MODES)}")
        if self.window not in WINDOWS:
            problems.append(f"window {self.window!r} is not one of {', '.join(WINDOWS)}")
        if not 0 < self.win_length <= self.n_fft:
            problems.append(f"win_length {self.win_length} must be in 1..n_fft ({self.n_fft})")
        if self.hop_length <= 0 or self.n_mels <= 0 or self.sample_rate <= 0:
            problems.append("hop_length, n_mels and sample_rate must be positive")
        for name, largest in SIZE_LIMITS.items():  # before anything is allocated from a file's numbers
            if getattr(self, name) > largest:
                problems.append(f"{name} {getattr(self, name)} is larger than {largest:g}")
        if not 0 <= self.f_min < self.f_max <= self.sample_rate / 2:
            problems.append(f"need 0 <= f_min ({self.f_min}) < f_max ({self.f_max}) <= sample_rate / 2")
        if self.log_floor <= 0:
            problems.append(f"log_floor must be positive, not {self.log_floor}")
        if self.preemphasis is not None and not 0 <= self.preemphasis < 1:
            problems.append(f"preemphasis must be in [0, 1) or None, not {self.preemphasis}")
        if min(self.spec_time_masks, self.spec_time_width, self.spec_freq_masks, self.spec_freq_width) < 0:
            problems.append("SpecAugment counts and widths must be >= 0")
        if self.mode == "ge2e" and (self.mean_norm or self.var_norm):
            problems.append("mode 'ge2e' reads mel power as it is: mean_norm and var_norm must be false "
                            "(FeatureConfig.ge2e() sets them)")
        if problems:
            raise ConfigError("invalid feature config: " + "; ".join(problems))

    @classmethod
    def kaldi(cls, **overrides: Any) -> FeatureConfig:
        """WeSpeaker's features: Kaldi fbank on int16-scaled audio, Hamming window, mean norm."""
        preset = dict(mode="kaldi", f_min=20.0, f_max=8000.0, preemphasis=0.97, window="hamming",
                      log_floor=torch.finfo(torch.float32).eps, waveform_scale=32768.0)
        return cls(**{**preset, **overrides})

    @classmethod
    def speechbrain(cls, **overrides: Any) -> FeatureConfig:
        """SpeechBrain ECAPA recipes: ``Fbank(n_mels=80)`` + sentence mean normalisation."""
        preset = dict(mode="speechbrain", n_fft=400, f_min=0.0, f_max=8000.0, log_floor=1e-10)
        return cls(**{**preset, **overrides})

    @classmethod
    def ge2e(cls, **overrides: Any) -> FeatureConfig:
        """Resemblyzer's GE2E features: 40 mel bins of power, 25 ms Hann windows every 10 ms, 0-8 kHz."""
        preset = dict(mode="ge2e", n_fft=400, win_length=400, hop_length=160, n_mels=40, f_min=0.0, f_max=8000.0,
                      window="hann", mean_norm=False)
        return cls(**{**preset, **overrides})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "feature config") -> FeatureConfig:
        """Every key and value checked (:mod:`speakertrip.options`); errors name ``source`` and ``features.<key>``."""
        return build_dataclass(cls, values, source, "features.")


def kaldi_mel_banks(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """Kaldi's triangular filters (torchaudio's ``get_mel_banks``), with a zero Nyquist row; (n_fft // 2 + 1, n_mels).

    Computed in float64, as every model so far was trained on (float32 arithmetic moves weights by ~1e-5).
    Changes torch's default dtype for the call: build frontends before starting threads that make tensors.
    """
    from torchaudio.compliance.kaldi import get_mel_banks

    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        banks, _ = get_mel_banks(n_mels, n_fft, float(sample_rate), f_min, f_max, 100.0, -500.0, 1.0)
    finally:
        torch.set_default_dtype(default)
    return torch.nn.functional.pad(banks, (0, 1)).T.float()


def speechbrain_mel_banks(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """SpeechBrain's triangular filters (symmetric, width set by the lower band); (n_fft // 2 + 1, n_mels)."""
    to_mel = lambda hz: 2595.0 * math.log10(1.0 + hz / 700.0)  # noqa: E731
    hz = 700.0 * (10 ** (torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2) / 2595.0) - 1.0)
    band, centre = (hz[1:] - hz[:-1])[:-1, None], hz[1:-1, None]
    slope = (torch.linspace(0, sample_rate // 2, n_fft // 2 + 1)[None, :] - centre) / band
    return torch.minimum(slope + 1.0, 1.0 - slope).clamp(min=0).T


def slaney_mel_banks(n_mels: int, n_fft: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """librosa's default filters (Slaney's mel scale, area-normalised); (n_fft // 2 + 1, n_mels)."""
    from torchaudio.functional import melscale_fbanks

    return melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate, norm="slaney", mel_scale="slaney")


def _window(name: str, length: int, periodic: bool) -> torch.Tensor:
    if name == "hamming":
        return torch.hamming_window(length, periodic=periodic, dtype=torch.float64).float()
    hann = torch.hann_window(length, periodic=periodic, dtype=torch.float64)
    return (hann.pow(0.85) if name == "povey" else hann).float()


class LogMelFrontend(nn.Module):
    """Waveforms → normalised log-mel features, batched, on the waveforms' device.

    Parameters
    ----------
    config : FeatureConfig
        Defaults to ``FeatureConfig()``.

    >>> frontend = LogMelFrontend(FeatureConfig())
    >>> features, frames = frontend(torch.randn(2, 16000), torch.tensor([16000, 8000]))
    >>> features.shape, frames.tolist()
    (torch.Size([2, 101, 80]), [101, 51])
    """

    def __init__(self, config: FeatureConfig | None = None):
        super().__init__()
        self.config = config = config or FeatureConfig()
        kaldi = config.mode == "kaldi"
        banks = {"kaldi": kaldi_mel_banks, "speechbrain": speechbrain_mel_banks,
                 "ge2e": slaney_mel_banks}.get(config.mode, kaldi_mel_banks)
        self.register_buffer("mel_banks", banks(config.n_mels, config.n_fft, config.sample_rate,
                                                config.f_min, config.f_max), persistent=False)
        self.register_buffer("window", _window(config.window, config.win_length, periodic=not kaldi),
                             persistent=False)

    def num_frames(self, num_samples: torch.Tensor | int) -> torch.Tensor:
        """Frames produced for signals of ``num_samples`` samples (same shape, int64)."""
        samples = torch.as_tensor(num_samples, dtype=torch.int64)
        if self.config.mode == "kaldi":
            return ((samples - self.config.win_length) // self.config.hop_length + 1).clamp(min=0)
        return samples // self.config.hop_length + 1

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None,
                specaugment: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Compute features.

        Parameters
        ----------
        waveforms : (B, T) float32 in [-1, 1] (int16 is converted)
        lengths : (B,) int64 valid samples per row, or None when all rows are full
        specaugment : apply SpecAugment; None means "in training mode when configured"

        Returns
        -------
        features : (B, frames, n_mels) float32, zero on padded frames
        frame_lengths : (B,) int64
        """
        config = self.config
        waveforms = to_float(waveforms)
        batch, total = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), total, dtype=torch.int64, device=waveforms.device)
        lengths = lengths.to(device=waveforms.device, dtype=torch.int64)
        valid = torch.arange(total, device=waveforms.device) < lengths[:, None]
        waveforms = waveforms * valid * config.waveform_scale
        if config.mode == "ge2e":
            waveforms, valid = self._ge2e_input(waveforms, valid, lengths)
        if self.training and config.dither > 0:
            waveforms = waveforms + config.dither * torch.randn_like(waveforms) * valid
        if waveforms.device.type == "cpu" and batch > CPU_ROWS_PER_PASS:
            features = torch.cat([self._log_mel(rows, row_valid) for rows, row_valid in
                                  zip(waveforms.split(CPU_ROWS_PER_PASS), valid.split(CPU_ROWS_PER_PASS))])
        else:
            features = self._log_mel(waveforms, valid)
        frame_lengths = self.num_frames(lengths).clamp(max=features.shape[1])
        frame_mask = (torch.arange(features.shape[1], device=features.device) < frame_lengths[:, None])[..., None]
        if config.mode == "speechbrain":
            peak = features.masked_fill(~frame_mask, -math.inf).amax(dim=(1, 2), keepdim=True)
            features = torch.maximum(features, peak - SPEECHBRAIN_TOP_DB)
        if config.mode != "ge2e":  # ge2e keeps the frames after the end (silence, see the module docstring)
            features = self._normalise(features, frame_mask, frame_lengths)
        if specaugment or (specaugment is None and self.training):
            features = self.specaugment(features, frame_lengths)
        return features, frame_lengths

    def _log_mel(self, waveforms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, T) waveforms → (B, frames, n_mels) log-mel energies, before masking and normalisation."""
        config = self.config
        power = self._kaldi_power(waveforms) if config.mode == "kaldi" else self._centred_power(waveforms, valid)
        mel = power @ self.mel_banks
        if config.mode == "speechbrain":
            return 10.0 * torch.log10(mel.clamp(min=config.log_floor))
        if config.mode == "kaldi":
            return mel.clamp(min=config.log_floor).log()
        if config.mode == "ge2e":
            return mel
        return (mel + config.log_floor).log()

    def _ge2e_input(self, waveforms: torch.Tensor, valid: torch.Tensor,
                    lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Resemblyzer's volume normalisation (raise to -30 dBFS, never lower) over each row's valid samples, and
        half a window of zeros more, so that every frame whose window reaches the signal's end is computed."""
        rms = (waveforms.square().sum(dim=1) / lengths.clamp(min=1)).sqrt()
        gain = torch.where(rms > 0, 10.0 ** (GE2E_TARGET_DBFS / 20.0) / rms, torch.ones_like(rms)).clamp(min=1.0)
        extra = self.config.n_fft // 2 + self.config.hop_length
        return (torch.nn.functional.pad(waveforms * gain[:, None], (0, extra)),
                torch.nn.functional.pad(valid, (0, extra)))

    def _centred_power(self, waveforms: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        config = self.config
        if config.preemphasis:
            shifted = torch.nn.functional.pad(waveforms[:, :-1], (1, 0))
            waveforms = (waveforms - config.preemphasis * shifted) * valid
        spectrum = torch.stft(waveforms, config.n_fft, config.hop_length, config.win_length, self.window,
                              center=True, pad_mode="constant", return_complex=True)
        return spectrum.transpose(1, 2).abs().square()

    def _kaldi_power(self, waveforms: torch.Tensor) -> torch.Tensor:
        config = self.config
        if waveforms.shape[1] < config.win_length:
            return waveforms.new_zeros(waveforms.shape[0], 0, config.n_fft // 2 + 1)
        frames = waveforms.unfold(1, config.win_length, config.hop_length)
        frames = frames - frames.mean(dim=2, keepdim=True)
        if config.preemphasis:
            previous = torch.cat([frames[..., :1], frames[..., :-1]], dim=2)
            frames = frames - config.preemphasis * previous
        spectrum = torch.fft.rfft(frames * self.window, n=config.n_fft)
        return spectrum.real.square() + spectrum.imag.square()

    def _normalise(self, features: torch.Tensor, frame_mask: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
        features = features * frame_mask
        count = frame_lengths.clamp(min=1).to(features.dtype)[:, None, None]
        if self.config.mean_norm or self.config.var_norm:
            mean = features.sum(dim=1, keepdim=True) / count
            features = (features - mean) * frame_mask
        if self.config.var_norm:
            std = (features.square().sum(dim=1, keepdim=True) / count).sqrt().clamp(min=1e-10)
            features = features / std
        return features

    def specaugment(self, features: torch.Tensor, frame_lengths: torch.Tensor,
                    generator: torch.Generator | None = None) -> torch.Tensor:
        """Zero random time and mel-bin bands (SpecAugment), inside each row's valid frames.

        features : (B, frames, n_mels); returns a new tensor of the same shape. The bands are
        drawn on ``features.device`` (``generator`` must live there), with no host round trip.
        """
        config = self.config
        batch, frames, bins = features.shape
        device = features.device
        keep = torch.ones_like(features, dtype=torch.bool)

        def draw(count: int) -> torch.Tensor:
            return torch.rand(batch, count, generator=generator, device=device)

        if config.spec_time_masks and frames:
            width = draw(config.spec_time_masks).mul(config.spec_time_width + 1).floor()
            room = (frame_lengths.to(device)[:, None] - width).clamp(min=0)
            start = (draw(config.spec_time_masks) * (room + 1)).floor()
            keep &= ~_bands(start, width, frames)[:, :, None]
        if config.spec_freq_masks:
            width = draw(config.spec_freq_masks).mul(min(config.spec_freq_width, bins) + 1).floor()
            start = (draw(config.spec_freq_masks) * (bins - width + 1)).floor()
            keep &= ~_bands(start, width, bins)[:, None, :]
        return features * keep


def _bands(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """(B, size) bool: positions inside any band ``[start, start + width)`` of start, width (B, masks)."""
    axis = torch.arange(size, device=start.device)[None, None, :]
    return ((axis >= start[..., None]) & (axis < (start + width)[..., None])).any(dim=1)
