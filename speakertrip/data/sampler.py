"""The P×K batch sampler: P speakers × K utterances a batch, deterministic, sharded for DDP.

How an epoch is planned (everything from one generator seeded with ``seed + epoch``):

1. Each speaker's utterances are shuffled and cut into groups of K. **Speakers with fewer than
   K utterances, and a speaker's last incomplete group,** are topped up with other utterances
   of the same speaker drawn at random (a file repeats only when the speaker has fewer than K
   utterances; repeats get different crop seeds, so they are different crops). With
   ``short_speakers="drop"`` incomplete groups, and so speakers with fewer than K
   utterances, are left out instead.
2. Speakers are put in random order and their groups laid end to end; group j goes to global
   step ``j mod N``. A speaker has at most N groups in an epoch, and its groups are consecutive,
   so no speaker appears twice in a step. N is the largest count for which every step gets
   ``num_replicas * P`` groups (groups of very large speakers beyond N wait for the next epoch).
3. Within a step, the groups are shuffled and rank r takes groups ``r*P .. r*P+P-1``: the
   ranks see disjoint speakers, all distinct.

An epoch is one pass over the utterances (N steps), or ``batches_per_epoch`` steps when given
(plans are chained until there are enough). Each item is ``(utterance index, crop seed)``.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

from speakertrip.errors import ConfigError


class PKSampler(Sampler[list[tuple[int, int]]]):
    """Batches of ``p`` speakers × ``k`` utterances, as lists of ``(index, crop_seed)`` pairs.

    Parameters
    ----------
    speaker_ids : speaker of each utterance (index i → ``speaker_ids[i]``)
    p, k : speakers per batch on each rank, utterances per speaker
    seed : the epoch's generator is seeded with ``seed + epoch``
    num_replicas, rank : DDP world size and this process's rank
    batches_per_epoch : fixed epoch length in batches; None means one pass over the utterances
    short_speakers : ``"repeat"`` (default) or ``"drop"``, see the module docstring

    >>> sampler = PKSampler(["a", "a", "b", "b", "c", "c"], p=2, k=2)
    >>> [len(batch) for batch in sampler]
    [4]
    """

    def __init__(self, speaker_ids: Sequence[str], p: int, k: int, seed: int = 0, num_replicas: int = 1,
                 rank: int = 0, batches_per_epoch: int | None = None, short_speakers: str = "repeat"):
        if p < 1 or k < 1:
            raise ConfigError(f"P and K must be >= 1, got P={p}, K={k}")
        if not 0 <= rank < num_replicas:
            raise ConfigError(f"rank {rank} is not in 0..{num_replicas - 1}")
        if short_speakers not in ("repeat", "drop"):
            raise ConfigError(f"short_speakers must be 'repeat' or 'drop', not {short_speakers!r}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ConfigError(f"batches_per_epoch must be >= 1, got {batches_per_epoch}")
        self.p, self.k, self.seed = p, k, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.short_speakers = short_speakers
        by_speaker: dict[str, list[int]] = defaultdict(list)
        for index, speaker in enumerate(speaker_ids):
            by_speaker[speaker].append(index)
        self._groups = [np.asarray(by_speaker[speaker]) for speaker in sorted(by_speaker)]
        sizes = np.array([len(indices) for indices in self._groups])
        self._chunks = -(-sizes // k) if short_speakers == "repeat" else sizes // k
        self._steps = self._steps_per_plan()
        if self._steps == 0:
            usable = int((self._chunks > 0).sum())
            raise ConfigError(f"a P×K batch needs {num_replicas * p} speakers with "
                              f"{'at least one utterance' if short_speakers == 'repeat' else f'>= {k} utterances'}"
                              f" (P={p} × {num_replicas} ranks); the data has {usable}")
        self.batches_per_epoch = batches_per_epoch or self._steps
        self.epoch, self.start_batch = 0, 0

    def _steps_per_plan(self) -> int:
        width = self.num_replicas * self.p
        steps = int(self._chunks.sum()) // width
        while steps and int(np.minimum(self._chunks, steps).sum()) < steps * width:
            steps -= 1
        return steps

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Plan epoch ``epoch``; skip its first ``start_batch`` batches (a resumed run)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ConfigError(f"start_batch {start_batch} is not in 0..{self.batches_per_epoch}")
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        """Batches the next iteration yields on this rank."""
        return self.batches_per_epoch - self.start_batch

    def _speaker_groups(self, rng: np.random.Generator, speaker: int) -> np.ndarray:
        indices = rng.permutation(self._groups[speaker])
        missing = -len(indices) % self.k
        if missing and self.short_speakers == "repeat":
            complete = indices[: len(indices) - len(indices) % self.k]
            pool = complete if len(complete) >= missing else self._groups[speaker]
            indices = np.concatenate([indices, rng.choice(pool, missing, replace=len(pool) < missing)])
        return indices[: len(indices) // self.k * self.k].reshape(-1, self.k)

    def _plan(self, rng: np.random.Generator) -> np.ndarray:
        """One pass: utterance indices of shape (steps, num_replicas * P, K)."""
        steps, width = self._steps, self.num_replicas * self.p
        groups = [self._speaker_groups(rng, speaker)[:steps] for speaker in rng.permutation(len(self._groups))]
        laid = np.concatenate([g for g in groups if len(g)])[: steps * width]
        plan = laid.reshape(width, steps, self.k).transpose(1, 0, 2)
        plan = np.take_along_axis(plan, rng.permuted(np.tile(np.arange(width), (steps, 1)), axis=1)[..., None], axis=1)
        return plan[rng.permutation(steps)]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng(self.seed + self.epoch)
        plans, planned = [], 0
        while planned < self.batches_per_epoch:
            plans.append(self._plan(rng))
            planned += len(plans[-1])
        plan = np.concatenate(plans)[: self.batches_per_epoch]
        crop_seeds = rng.integers(0, 2**31 - 1, size=plan.shape)
        mine = slice(self.rank * self.p, (self.rank + 1) * self.p)
        for step in range(self.start_batch, self.batches_per_epoch):
            yield list(zip(plan[step, mine].ravel().tolist(), crop_seeds[step, mine].ravel().tolist()))
