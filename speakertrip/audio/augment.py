"""Training-time augmentation on batches, on the training device: noise, music, babble, reverb, speed.

Noise sources follow MUSAN's layout (``<musan>/noise/...``, ``<musan>/music/...``,
``<musan>/speech/...``; babble sums several ``speech`` files); room impulse responses follow
RIRS_NOISES (``<rirs>/simulated_rirs/**.wav`` and ``<rirs>/real_rirs_isotropic_noises/*rir*.wav``;
any other folder: every wav in it). Each row of a batch gets one of ``none / reverb / noise /
music / babble`` with the configured weights; speed perturbation comes first, per speaker
(so a P×K batch keeps its structure) and optionally as new speaker labels, as WeSpeaker does.

The work is split so that a training step never waits for the host: :meth:`Augmenter.plan`
draws a batch's choices and reads its noise and impulse-response crops on the host (in the
DataLoader workers, int16 like the speech crops, arriving with the batch as an
:class:`AugmentPlan`); :meth:`Augmenter.apply` only mixes, convolves and resamples on the
device, with no host reads and no copies. Calling the augmenter does both, for use outside
the trainer. The folders are scanned once: their headers are cached (see :mod:`.headers`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import torch

from speakertrip.audio.headers import HeaderCache, folder_cache
from speakertrip.audio.io import load_audio, read_crop, to_float
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


class AugmentPlan(NamedTuple):
    """One batch's augmentation, drawn and read on the host; :meth:`to` moves it with the batch.

    Attributes
    ----------
    labels : (B,) int64, after speed relabelling
    speed_order : (B,) int64, the rows grouped by speed factor (in ``speed_factors`` order)
    speed_counts : rows per speed factor (host ints; empty without speed perturbation)
    noise : (S, T) int16 or float32, every noise and music crop of the batch and each babble row's voices
        already summed (:func:`mix_voices`, in the worker: one row each, not 3 to 7)
    noise_rows : (S,) int64, the row each crop is added to
    snr_db : (B,) float32, the SNR of each row with additive noise (0 elsewhere)
    noisy : (B,) bool, rows with additive noise
    rirs : (R, L) float32, unit-energy impulse responses, zero-padded
    rir_rows : (R,) int64, the row each one reverberates
    """

    labels: torch.Tensor
    speed_order: torch.Tensor
    speed_counts: Sequence[int]
    noise: torch.Tensor
    noise_rows: torch.Tensor
    snr_db: torch.Tensor
    noisy: torch.Tensor
    rirs: torch.Tensor
    rir_rows: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> AugmentPlan:
        return AugmentPlan(*(value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor)
                             else value for value in self))


class Augmenter:
    """Applies an :class:`AugmentConfig` to training batches.

    >>> import tempfile
    >>> from speakertrip.testing import make_musan_tree, make_rir_tree
    >>> folder = Path(tempfile.mkdtemp())
    >>> config = AugmentConfig(musan=str(make_musan_tree(folder / "musan")), rirs=str(make_rir_tree(folder / "rirs")))
    >>> augment = Augmenter(config, num_speakers=2)
    >>> waves, labels = augment(torch.randn(4, 16000), torch.tensor([0, 0, 1, 1]))  # batches on the training device
    >>> waves.shape, labels.tolist()
    (torch.Size([4, 16000]), [0, 0, 1, 1])
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
                self.sources[kind] = self._scan(folder, _wav_files(folder, f"{kind} (MUSAN layout)"))
        self.rirs = find_rirs(config.rirs) if "reverb" in self.kinds else []
        self.speeds = [factor for factor in config.speed_factors if factor != 1.0]
        self._resamplers = {factor: _sinc_resampler(round(sample_rate * factor), sample_rate) for factor in self.speeds}
        self._on_device: dict[tuple[float, torch.device], torch.Tensor] = {}

    def _scan(self, folder: Path, files: list[Path]) -> list[tuple[Path, int]]:
        """``(path, frames at the sample rate)`` of each file, headers from the folder's cache."""
        cache = HeaderCache(folder_cache(folder, "augment"), root=folder)
        frames = []
        for path in files:
            info = cache.info(path)
            frames.append((path, info.frames * self.sample_rate // info.sample_rate))
        if cache.reads:
            try:
                cache.save()
            except OSError:
                pass  # a read-only cache folder costs a re-read next run, nothing else
        return frames

    @property
    def num_labels(self) -> int:
        """Speaker labels after speed perturbation (classification heads need it)."""
        return self.num_speakers * (1 + len(self.speeds) if self.config.speed_as_new_speakers else 1)

    def __call__(self, waveforms: torch.Tensor, labels: torch.Tensor,
                 lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment a batch: waveforms (B, T) int16/float → float32 (B, T); labels (B,) → (B,).

        Draws with ``self.rng`` and reads the sources here (a host round trip for the labels);
        the trainer instead gets the plan from its DataLoader workers and calls :meth:`apply`.
        """
        batch, total = waveforms.shape
        if lengths is None:
            lengths = torch.full((batch,), total, device=waveforms.device)
        plan = self.plan(labels.cpu().numpy(), total, self.rng)
        pinned = waveforms.device.type == "cuda"
        plan = AugmentPlan(*(value.pin_memory() if pinned and isinstance(value, torch.Tensor) else value
                             for value in plan))
        return self.apply(waveforms, lengths.to(waveforms.device), plan.to(waveforms.device, non_blocking=True))

    # ---------------------------------------------------------------- host side
    def plan(self, labels: np.ndarray, total: int, rng: np.random.Generator) -> AugmentPlan:
        """Draw a batch's augmentation with ``rng`` and read what it needs; ``labels`` (B,), rows of ``total`` samples."""
        labels = np.asarray(labels, dtype=np.int64)
        batch = len(labels)
        speed_order, speed_counts = np.arange(batch), []
        if self.config.speed_factors:
            labels, speed_order, speed_counts = self._plan_speed(labels, rng)
        kinds = rng.choice(len(self.kinds), size=batch, p=self.probabilities)
        noise: list[np.ndarray] = []
        noise_rows: list[int] = []
        snr = np.zeros(batch, np.float32)
        rirs: list[torch.Tensor] = []
        rir_rows = np.zeros(0, np.int64)
        for number, kind in enumerate(self.kinds):
            rows = np.flatnonzero(kinds == number)
            if kind == "none" or not len(rows):
                continue
            if kind == "reverb":
                rirs = [torch.from_numpy(load_audio(p, self.sample_rate)) for p in self._pick(rng, self.rirs, len(rows))]
                rir_rows = rows
                continue
            for row in rows:
                crops = self._noise(rng, kind, total)
                noise.append(mix_voices(crops) if kind == "babble" else crops[0])
                noise_rows.append(row)
            low, high = getattr(self.config, f"{kind}_snr")
            snr[rows] = rng.uniform(low, high, len(rows))
        if len({crop.dtype for crop in noise}) > 1:  # int16 and float files mixed: all float
            noise = [to_float(crop) for crop in noise]
        return AugmentPlan(
            labels=torch.from_numpy(labels), speed_order=torch.from_numpy(np.asarray(speed_order, np.int64)),
            speed_counts=tuple(speed_counts),
            noise=torch.from_numpy(np.stack(noise)) if noise else torch.zeros(0, total, dtype=torch.int16),
            noise_rows=torch.tensor(noise_rows, dtype=torch.int64), snr_db=torch.from_numpy(snr),
            noisy=torch.from_numpy(np.isin(np.arange(batch), noise_rows)),
            rirs=pad_rirs(rirs), rir_rows=torch.from_numpy(rir_rows.astype(np.int64)))

    def _plan_speed(self, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[int]]:
        """One factor per speaker (per row without ``speed_as_new_speakers``): new labels, rows by factor, counts."""
        factors = self.config.speed_factors
        if self.config.speed_as_new_speakers:
            groups, inverse = np.unique(labels, return_inverse=True)
        else:
            groups, inverse = labels, np.arange(len(labels))
        choice = rng.integers(0, len(factors), len(groups))[inverse]
        if self.config.speed_as_new_speakers:
            offsets = np.array([0 if f == 1.0 else (1 + self.speeds.index(f)) * self.num_speakers for f in factors])
            labels = labels + offsets[choice]
        return labels, np.argsort(choice, kind="stable"), np.bincount(choice, minlength=len(factors)).tolist()

    @staticmethod
    def _pick(rng: np.random.Generator, files: list, count: int) -> list:
        return [files[i] for i in rng.integers(0, len(files), count)]

    def _read(self, rng: np.random.Generator, path: Path, frames: int, total: int) -> np.ndarray:
        """A random ``total``-sample stretch of a file of ``frames`` samples, repeated if shorter (int16 or float32)."""
        start = int(rng.integers(0, max(1, frames - total + 1)))
        wave = read_crop(path, start, total, self.sample_rate)
        return np.resize(wave, total) if len(wave) else np.zeros(total, wave.dtype)

    def _noise(self, rng: np.random.Generator, kind: str, total: int) -> list[np.ndarray]:
        """The crops one row mixes in: one noise or music file, or several babble voices."""
        count = 1 if kind != "babble" else rng.integers(self.config.babble_speakers[0],
                                                        self.config.babble_speakers[1] + 1)
        return [self._read(rng, path, frames, total) for path, frames in self._pick(rng, self.sources[kind], count)]

    # ---------------------------------------------------------------- device side
    def apply(self, waveforms: torch.Tensor, lengths: torch.Tensor,
              plan: AugmentPlan) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply a plan already on the device: waveforms (B, T), lengths (B,) → float32 (B, T), labels (B,).

        No host reads, no copies, no data-dependent shapes: every size comes from the plan's shapes.
        """
        waveforms = to_float(waveforms)
        total = waveforms.shape[1]
        if plan.speed_counts:
            waveforms = self.perturb_speed(waveforms, lengths, plan.speed_order, plan.speed_counts)
        out = waveforms
        if len(plan.rir_rows):
            out = out.index_copy(0, plan.rir_rows, self.reverberate(waveforms[plan.rir_rows], plan.rirs))
        if len(plan.noise_rows):
            voices = to_float(plan.noise)
            voices = voices / voices.square().mean(dim=1, keepdim=True).clamp(min=1e-10).sqrt()
            noise = torch.zeros_like(waveforms).index_add_(0, plan.noise_rows, voices)
            out = torch.where(plan.noisy[:, None], add_noise(waveforms, noise, plan.snr_db, lengths), out)
        return out * (torch.arange(total, device=out.device) < lengths[:, None]), plan.labels

    @staticmethod
    def reverberate(waveforms: torch.Tensor, rirs: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Convolve each row with its RIR, normalised to unit energy; keep the first T samples.

        waveforms (B, T); rirs (B, L) from :func:`pad_rirs` (or B tensors (L_i,), padded here); returns (B, T).
        """
        import torchaudio.functional

        kernels = pad_rirs(rirs) if isinstance(rirs, (list, tuple)) else rirs
        return torchaudio.functional.fftconvolve(waveforms, kernels.to(waveforms.device))[:, : waveforms.shape[1]]

    def perturb_speed(self, waveforms: torch.Tensor, lengths: torch.Tensor, order: torch.Tensor,
                      counts: Sequence[int]) -> torch.Tensor:
        """Resample the rows of each speed factor (``order`` (B,) groups them, ``counts`` per factor); same length
        out: slowed rows are cut, sped-up rows repeated."""
        out = waveforms.clone()
        positions = torch.arange(waveforms.shape[1], device=waveforms.device)
        start = 0
        for factor, count in zip(self.config.speed_factors, counts):
            rows, start = order[start: start + count], start + count
            if factor == 1.0 or not count:
                continue
            changed = self._resample(waveforms[rows], factor)
            valid = torch.ceil(lengths[rows] / factor).long().clamp(1, changed.shape[1])
            out.index_copy_(0, rows, torch.gather(changed, 1, positions[None, :] % valid[:, None]))
        return out

    def _resample(self, waveforms: torch.Tensor, factor: float) -> torch.Tensor:
        """``torchaudio.functional.resample`` from ``rate * factor`` to ``rate`` with a sinc kernel made once
        (torchaudio rebuilds it on the host at every call) and moved to the device once."""
        kernel, width, source, target = self._resamplers[factor]
        key = (factor, waveforms.device)
        if key not in self._on_device:
            self._on_device[key] = kernel.to(waveforms.device)
        padded = torch.nn.functional.pad(waveforms, (width, width + source))
        resampled = torch.nn.functional.conv1d(padded[:, None], self._on_device[key], stride=source)
        return resampled.transpose(1, 2).reshape(len(waveforms), -1)[:, : -(-target * waveforms.shape[1] // source)]


def _sinc_resampler(source_rate: int, target_rate: int) -> tuple[torch.Tensor, int, int, int]:
    """torchaudio's default sinc kernel from ``source_rate`` to ``target_rate``: (kernel, width, source, target)."""
    import torchaudio.transforms

    common = math.gcd(source_rate, target_rate)
    resampler = torchaudio.transforms.Resample(source_rate // common, target_rate // common)
    return resampler.kernel, resampler.width, source_rate // common, target_rate // common


def mix_voices(voices: Sequence[np.ndarray]) -> np.ndarray:
    """Babble: the voices (V, T) int16 or float, each scaled to unit RMS and summed, as one int16 row peaking at
    half of full scale. Only the voices' relative levels matter: the row is scaled to its SNR on the device.

    >>> mix_voices([np.array([1000, -1000], np.int16), np.array([500, 500], np.int16)]).tolist()
    [16384, 0]
    """
    mixed = np.zeros(len(voices[0]), np.float64)
    for voice in voices:
        voice = to_float(voice).astype(np.float64)
        mixed += voice / max(np.sqrt(np.mean(voice ** 2)), 1e-5)
    peak = np.abs(mixed).max()
    return np.round(mixed * (16384 / peak)).astype(np.int16) if peak > 0 else np.zeros(len(mixed), np.int16)


def pad_rirs(rirs: Sequence[torch.Tensor]) -> torch.Tensor:
    """Impulse responses (L_i,) → (R, max L) float32, each scaled to unit energy, zero-padded."""
    kernels = torch.zeros(len(rirs), max((len(rir) for rir in rirs), default=1))
    for row, rir in enumerate(rirs):
        rir = rir.float()
        kernels[row, : len(rir)] = rir / rir.square().sum().clamp(min=1e-10).sqrt()
    return kernels


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
