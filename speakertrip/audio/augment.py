"""Training-time augmentation on batches, on the training device: noise, music, babble, reverb, speed.

Noise sources follow MUSAN's layout (``<musan>/noise/...``, ``<musan>/music/...``,
``<musan>/speech/...``; babble sums several ``speech`` files); room impulse responses follow
RIRS_NOISES (``<rirs>/simulated_rirs/**.wav`` and ``<rirs>/real_rirs_isotropic_noises/*rir*.wav``;
any other folder: every wav in it). Each row of a batch gets one of ``none / reverb / noise /
music / babble`` with the configured weights; speed perturbation comes first, per speaker
(so a P×K batch keeps its structure) and optionally as new speaker labels, as WeSpeaker does.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from speakertrip.audio import audio_info, load_audio, read_crop, to_float
from speakertrip.errors import ConfigError

KINDS = ("none", "reverb", "noise", "music", "babble")
MUSAN_FOLDER = {"noise": "noise", "music": "music", "babble": "speech"}


@dataclass(frozen=True)
class AugmentConfig:
    """What to apply and how often. SNRs are (low, high) dB ranges drawn uniformly per row.

    ``weights`` gives the relative frequency of each kind (a row gets exactly one); the
    defaults follow voxceleb_trainer (clean, reverb, noise, music, babble equally likely).
    ``speed_factors`` () turns speed perturbation off; with ``speed_as_new_speakers`` a speaker
    at speed ``factors[i]`` (i > 0 after 1.0 is removed) gets label ``label + i * num_speakers``.
    """

    musan: str | None = None
    rirs: str | None = None
    weights: Mapping[str, float] = field(default_factory=lambda: {kind: 1.0 for kind in KINDS})
    noise_snr: tuple[float, float] = (0.0, 15.0)
    music_snr: tuple[float, float] = (5.0, 15.0)
    babble_snr: tuple[float, float] = (13.0, 20.0)
    babble_speakers: tuple[int, int] = (3, 7)
    speed_factors: tuple[float, ...] = ()
    speed_as_new_speakers: bool = True

    def __post_init__(self) -> None:
        unknown = sorted(set(self.weights) - set(KINDS))
        if unknown or any(weight < 0 for weight in self.weights.values()) or not sum(self.weights.values()):
            raise ConfigError(f"augment weights need kinds from {', '.join(KINDS)} with non-negative weights, "
                              f"not all zero; got {dict(self.weights)}")
        folders = {"reverb": self.rirs, "noise": self.musan, "music": self.musan, "babble": self.musan}
        for kind, folder in folders.items():
            if self.weights.get(kind, 0) > 0 and not folder:
                raise ConfigError(f"augment weight for {kind!r} is set but {'rirs' if kind == 'reverb' else 'musan'} "
                                  "(the folder) is not; give the folder or set the weight to 0")
        if any(factor <= 0 for factor in self.speed_factors):
            raise ConfigError(f"speed_factors must be positive, got {self.speed_factors}")

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "weights": dict(self.weights)}


def _wav_files(folder: Path, what: str) -> list[Path]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in (".wav", ".flac"))
    if not files:
        raise ConfigError(f"{folder}: no wav/flac files for {what}")
    return files


def find_rirs(folder: str | Path) -> list[Path]:
    """Impulse responses in an RIRS_NOISES-layout folder (or every wav of another folder)."""
    folder = Path(folder)
    simulated, real = folder / "simulated_rirs", folder / "real_rirs_isotropic_noises"
    if simulated.is_dir() or real.is_dir():
        files = sorted(simulated.rglob("*.wav")) + sorted(p for p in real.glob("*.wav") if "rir" in p.name.lower())
        if files:
            return files
    return _wav_files(folder, "room impulse responses")


class Augmenter:
    """Applies an :class:`AugmentConfig` to training batches.

    >>> augment = Augmenter(AugmentConfig(musan="musan", rirs="RIRS_NOISES"), num_speakers=1211)  # doctest: +SKIP
    >>> waves, labels = augment(batch.waveforms.cuda(), batch.labels.cuda(), batch.lengths.cuda())  # doctest: +SKIP
    """

    def __init__(self, config: AugmentConfig, num_speakers: int, sample_rate: int = 16000, seed: int = 0):
        self.config, self.num_speakers, self.sample_rate = config, num_speakers, sample_rate
        self.rng = np.random.default_rng(seed)
        self.kinds = [kind for kind in KINDS if config.weights.get(kind, 0) > 0]
        weights = np.array([config.weights[kind] for kind in self.kinds], dtype=float)
        self.probabilities = weights / weights.sum()
        self.sources: dict[str, list[tuple[Path, int]]] = {}
        for kind in ("noise", "music", "babble"):
            if kind in self.kinds:
                folder = Path(config.musan) / MUSAN_FOLDER[kind]
                self.sources[kind] = [(p, self._frames(p)) for p in _wav_files(folder, f"{kind} (MUSAN layout)")]
        self.rirs = find_rirs(config.rirs) if "reverb" in self.kinds else []
        self.speeds = [factor for factor in config.speed_factors if factor != 1.0]

    @property
    def num_labels(self) -> int:
        """Speaker labels after speed perturbation (classification heads need it)."""
        return self.num_speakers * (1 + len(self.speeds) if self.config.speed_as_new_speakers else 1)

    def __call__(self, waveforms: torch.Tensor, labels: torch.Tensor,
                 lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch: waveforms (B, T) int16/float → float32 (B, T); labels (B,) → (B,)."""
        waveforms = to_float(waveforms)
        batch, total = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), total)
        lengths = lengths.to(waveforms.device)
        if self.config.speed_factors:
            waveforms, labels = self.perturb_speed(waveforms, labels, lengths)
        kinds = self.rng.choice(len(self.kinds), size=batch, p=self.probabilities)
        out = waveforms.clone()
        for number, kind in enumerate(self.kinds):
            rows = torch.as_tensor(np.flatnonzero(kinds == number), device=waveforms.device)
            if kind == "none" or not len(rows):
                continue
            if kind == "reverb":
                rirs = [torch.from_numpy(load_audio(p, self.sample_rate)) for p in self._pick(self.rirs, len(rows))]
                out[rows] = self.reverberate(waveforms[rows], rirs)
            else:
                noise = torch.stack([self._noise(kind, total) for _ in range(len(rows))]).to(waveforms.device)
                low, high = getattr(self.config, f"{kind}_snr")
                snr = torch.as_tensor(self.rng.uniform(low, high, len(rows)), dtype=torch.float32).to(waveforms.device)
                out[rows] = add_noise(waveforms[rows], noise, snr, lengths[rows])
        return out * (torch.arange(total, device=out.device) < lengths[:, None]), labels

    def _pick(self, files: list, count: int) -> list:
        return [files[i] for i in self.rng.integers(0, len(files), count)]

    def _frames(self, path: Path) -> int:
        info = audio_info(path)
        return info.frames * self.sample_rate // info.sample_rate

    def _read(self, path: Path, frames: int, total: int) -> torch.Tensor:
        """A random ``total``-sample stretch of a file of ``frames`` samples, repeated if shorter."""
        start = int(self.rng.integers(0, max(1, frames - total + 1)))
        wave = to_float(read_crop(path, start, total, self.sample_rate))
        return torch.from_numpy(np.resize(wave, total) if len(wave) else np.zeros(total, np.float32))

    def _noise(self, kind: str, total: int) -> torch.Tensor:
        if kind != "babble":
            (path, frames), = self._pick(self.sources[kind], 1)
            return self._read(path, frames, total)
        low, high = self.config.babble_speakers
        picked = self._pick(self.sources[kind], self.rng.integers(low, high + 1))
        voices = [self._read(path, frames, total) for path, frames in picked]
        return sum(voice / voice.square().mean().clamp(min=1e-10).sqrt() for voice in voices)

    @staticmethod
    def reverberate(waveforms: torch.Tensor, rirs: list[torch.Tensor]) -> torch.Tensor:
        """Convolve each row with its RIR, normalised to unit energy; keep the first T samples.

        waveforms (B, T); rirs B tensors (L_i,); returns (B, T).
        """
        import torchaudio.functional

        longest = max(len(rir) for rir in rirs)
        kernels = torch.zeros(len(rirs), longest, device=waveforms.device)
        for row, rir in enumerate(rirs):
            kernels[row, : len(rir)] = rir.to(waveforms.device) / rir.square().sum().clamp(min=1e-10).sqrt()
        return torchaudio.functional.fftconvolve(waveforms, kernels)[:, : waveforms.shape[1]]

    def perturb_speed(self, waveforms: torch.Tensor, labels: torch.Tensor,
                      lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Resample each speaker's rows by one factor drawn from ``speed_factors`` (same length out:
        slowed rows are cut, sped-up rows repeated); relabel when ``speed_as_new_speakers``."""
        import torchaudio.functional

        factors = self.config.speed_factors
        groups, inverse = torch.unique(labels, return_inverse=True) if self.config.speed_as_new_speakers \
            else (labels, torch.arange(len(labels), device=labels.device))
        choice = torch.as_tensor(self.rng.integers(0, len(factors), len(groups)), device=labels.device)[inverse]
        out, labels = waveforms.clone(), labels.clone()
        positions = torch.arange(waveforms.shape[1], device=waveforms.device)
        for number, factor in enumerate(factors):
            rows = torch.nonzero(choice == number).flatten()
            if factor == 1.0 or not len(rows):
                continue
            source = int(round(self.sample_rate * factor))
            common = math.gcd(source, self.sample_rate)
            changed = torchaudio.functional.resample(waveforms[rows], source // common, self.sample_rate // common)
            valid = torch.ceil(lengths[rows] / factor).long().clamp(1, changed.shape[1])
            out[rows] = torch.gather(changed, 1, positions[None, :] % valid[:, None])
            if self.config.speed_as_new_speakers:
                labels[rows] += (1 + self.speeds.index(factor)) * self.num_speakers
        return out, labels


def add_noise(clean: torch.Tensor, noise: torch.Tensor, snr_db: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mix each row at its SNR: power of ``clean`` over its valid samples vs power of the noise there.

    clean, noise (B, T) float32; snr_db (B,); lengths (B,) → (B, T).
    """
    valid = (torch.arange(clean.shape[1], device=clean.device) < lengths[:, None]).float()
    count = valid.sum(dim=1).clamp(min=1)
    clean_power = (clean.square() * valid).sum(dim=1) / count
    noise_power = (noise.square() * valid).sum(dim=1) / count
    scale = torch.sqrt(clean_power / (noise_power.clamp(min=1e-10) * 10 ** (snr_db / 10)))
    return clean + scale[:, None] * noise * valid
