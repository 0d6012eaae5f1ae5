"""Datasets: random fixed-length crops for training, and length buckets for batched evaluation.

Training crops are read as int16 when the files are 16-bit PCM, with the crop position taken
from the manifest's frame count (no header read per item); the conversion to float happens on
the training device (``speakertrip.audio.to_float`` or the frontend itself).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from speakertrip.audio import read_crop, to_float
from speakertrip.data.manifest import Utterance
from speakertrip.errors import ConfigError

if TYPE_CHECKING:
    from speakertrip.audio.augment import Augmenter, AugmentPlan


class Batch(NamedTuple):
    """Training batch: waveforms (B, T) int16 or float32, lengths (B,) int64, labels (B,) int64, and the
    batch's :class:`~speakertrip.audio.augment.AugmentPlan` when it was read with augmentation."""

    waveforms: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    augment: AugmentPlan | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(*(None if value is None else value.to(device, non_blocking=non_blocking) for value in self))


class TrainingBatches(Dataset):
    """Whole training batches, read in one go (in a DataLoader worker): the crops of a
    :class:`~speakertrip.data.sampler.PKSampler` batch and, with an ``augmenter``, the noise and
    impulse-response crops its augmentation plan needs.

    The plan is drawn from a generator seeded with ``seed`` and the batch's crop seeds, so a
    batch is the same whichever worker reads it, with any number of workers, and again on
    resume. Use with ``DataLoader(batches, sampler=pk_sampler, batch_size=None,
    collate_fn=as_batch)``.
    """

    def __init__(self, crops: CropDataset, augmenter: Augmenter | None = None, seed: int = 0):
        self.crops, self.augmenter, self.seed = crops, augmenter, seed

    def __len__(self) -> int:
        return len(self.crops)

    def __getitem__(self, items: Sequence[tuple[int, int]]) -> Batch:
        batch = collate_crops([self.crops[item] for item in items])
        if self.augmenter is None:
            return batch
        rng = np.random.default_rng([self.seed, *(seed for _, seed in items)])
        plan = self.augmenter.plan(batch.labels.numpy(), batch.waveforms.shape[1], rng)
        return batch._replace(augment=plan)


def as_batch(batch: Batch) -> Batch:
    """The DataLoader's ``collate_fn`` for :class:`TrainingBatches` (its items are batches already)."""
    return batch


def _pad_stack(waves: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    if len({wave.dtype for wave in waves}) > 1:  # mixed int16 / float32 files: all float
        waves = [to_float(wave) for wave in waves]
    lengths = torch.tensor([len(wave) for wave in waves], dtype=torch.int64)
    stacked = waves[0].new_zeros(len(waves), int(lengths.max()))
    for row, wave in enumerate(waves):
        stacked[row, : len(wave)] = wave
    return stacked, lengths


class CropDataset(Dataset):
    """Random crops of ``crop_seconds`` from each utterance, indexed by ``(index, crop_seed)``.

    The crop start is ``crop_seed mod (frames - crop + 1)``, so a seed from :class:`PKSampler`
    fixes the crop; a plain int index uses the index as seed. Files shorter than the crop are
    repeated end to end until they fill it. Items are ``(waveform (crop_samples,), speaker index)``.

    >>> import tempfile
    >>> from torch.utils.data import DataLoader
    >>> from speakertrip.corpora.voxceleb import prepare_voxceleb
    >>> from speakertrip.data.manifest import read_manifest
    >>> from speakertrip.data.sampler import PKSampler
    >>> from speakertrip.testing import make_voxceleb_tree
    >>> root = make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=4)  # 2 training, 2 test speakers
    >>> train = prepare_voxceleb(root, root / "data", progress=False)["train"]
    >>> dataset = CropDataset(read_manifest(train), crop_seconds=0.5)
    >>> loader = DataLoader(dataset, batch_sampler=PKSampler(dataset.speaker_ids, 2, 2),
    ...                     collate_fn=collate_crops, num_workers=0)  # a few workers in training
    >>> next(iter(loader)).waveforms.shape
    torch.Size([4, 8000])
    """

    def __init__(self, utterances: Sequence[Utterance], crop_seconds: float, sample_rate: int = 16000):
        if crop_seconds <= 0:
            raise ConfigError(f"crop_seconds must be positive, got {crop_seconds}")
        self.utterances = list(utterances)
        self.sample_rate = sample_rate
        self.crop_samples = int(round(crop_seconds * sample_rate))
        self.speaker_to_index = {speaker: index for index, speaker in
                                 enumerate(sorted({u.spk_id for u in self.utterances}))}

    @property
    def speaker_ids(self) -> list[str]:
        """Speaker of each utterance, in order (what :class:`PKSampler` takes)."""
        return [u.spk_id for u in self.utterances]

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, item: tuple[int, int] | int) -> tuple[torch.Tensor, int]:
        index, crop_seed = item if isinstance(item, tuple) else (item, item)
        utterance = self.utterances[index]
        frames = utterance.num_frames
        if utterance.sample_rate != self.sample_rate:
            frames = utterance.num_frames * self.sample_rate // utterance.sample_rate
        start = crop_seed % max(1, frames - self.crop_samples + 1)
        wave = read_crop(utterance.path, start, self.crop_samples, self.sample_rate)
        if 0 < len(wave) < self.crop_samples:
            wave = np.resize(wave, self.crop_samples)  # repeats the file end to end
        return torch.from_numpy(wave), self.speaker_to_index[utterance.spk_id]


def collate_crops(items: Sequence[tuple[torch.Tensor, int]]) -> Batch:
    """Stack crops: ``Batch(waveforms (B, T), lengths (B,), labels (B,))``."""
    waveforms, lengths = _pad_stack([wave for wave, _ in items])
    return Batch(waveforms, lengths, torch.tensor([label for _, label in items], dtype=torch.int64))


def bucket_batches(durations: Sequence[float], max_batch_seconds: float | None = None,
                   max_batch_size: int | None = None) -> list[list[int]]:
    """Group indices of similar duration, longest first, so that little of a batch is padding.

    A batch costs ``len(batch) * longest duration`` seconds of padded audio; it is kept within
    ``max_batch_seconds`` and ``max_batch_size`` (give one or both). An utterance longer than
    ``max_batch_seconds`` gets a batch of its own. Every index appears exactly once.

    >>> bucket_batches([1.0, 5.0, 1.2, 4.0], max_batch_seconds=10)
    [[1, 3], [2, 0]]
    """
    if max_batch_seconds is None and max_batch_size is None:
        raise ConfigError("bucket_batches needs max_batch_seconds or max_batch_size")
    if (max_batch_seconds is not None and max_batch_seconds <= 0) or (max_batch_size is not None and max_batch_size < 1):
        raise ConfigError("max_batch_seconds and max_batch_size must be positive")
    order = sorted(range(len(durations)), key=lambda index: (-durations[index], index))
    batches: list[list[int]] = []
    longest = 0.0
    for index in order:
        batch = batches[-1] if batches else None
        fits = batch is not None and (max_batch_size is None or len(batch) < max_batch_size) and \
            (max_batch_seconds is None or (len(batch) + 1) * longest <= max_batch_seconds)
        if fits:
            batch.append(index)
        else:
            batches.append([index])
            longest = durations[index]
    return batches
