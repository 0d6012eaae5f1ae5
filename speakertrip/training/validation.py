"""Validation: embed the dev utterances named in a trial list, score the trials, EER and minDCF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from speakertrip.data.manifest import Utterance
from speakertrip.errors import KeyNotFoundError

P_TARGETS = (0.01, 0.05)


@dataclass(frozen=True)
class DevScores:
    """Cosine scores (N,) of a dev trial list, labels (N,) bool, and the seconds of audio of each side (N,)
    (None when unknown: scores taken from an embedding store)."""

    scores: np.ndarray
    labels: np.ndarray
    enroll_seconds: np.ndarray | None = None
    test_seconds: np.ndarray | None = None


def score_dev_trials(model: torch.nn.Module, items: Mapping[str, Any], trials_path: str | Path,
                     device: torch.device | None = None, progress: bool = False, rank: int = 0,
                     world_size: int = 1) -> DevScores:
    """Embed the items (manifest utterances, paths) named in the labelled trial list ``trials_path`` and
    cosine-score its trials; ``items`` maps trial keys to items.

    Under DDP (``world_size`` > 1, every rank calls it) each rank embeds every ``world_size``-th
    item and the embeddings are gathered, so no rank waits out the whole dev set at a barrier.
    """
    from speakertrip.extraction.batched import embed_many, item_duration
    from speakertrip.extraction.store import EmbeddingStore
    from speakertrip.scoring import read_trials, score_trials

    trials = read_trials(trials_path)
    if trials.labels is None:
        raise KeyNotFoundError(f"{trials_path}: validation and calibration need a labelled trial list "
                               "(target/nontarget)")
    keys = sorted(set(trials.enroll) | set(trials.test))
    missing = [key for key in keys if key not in items]
    if missing:
        raise KeyNotFoundError(f"{trials_path}: {len(missing)} trial key(s) are not in the dev data, "
                               f"e.g. {', '.join(missing[:3])}")
    embeddings = embed_many(model, [items[key] for key in keys[rank::world_size]], device=device,
                            progress=progress)
    if world_size > 1:
        embeddings = _gather_shards(embeddings, len(keys), world_size)
    scores = np.asarray(score_trials(trials, EmbeddingStore(keys, embeddings)))
    seconds = {key: item_duration(items[key], None) for key in keys}
    return DevScores(scores, np.asarray(trials.labels), np.array([seconds[key] for key in trials.enroll]),
                     np.array([seconds[key] for key in trials.test]))


def dev_metrics(dev: DevScores) -> dict[str, Any]:
    """``trials``, ``eer``, ``eer_threshold``, ``min_dcf_P`` and ``min_dcf_P_threshold`` for P in P_TARGETS."""
    from speakertrip.scoring import compute_metrics

    metrics = compute_metrics(dev.scores, dev.labels, p_targets=P_TARGETS)
    result: dict[str, Any] = {"trials": int(len(dev.scores)), "eer": float(metrics.eer),
                              "eer_threshold": float(metrics.eer_threshold)}
    for p_target in P_TARGETS:
        result[f"min_dcf_{p_target}"] = float(metrics.min_dcf[p_target])
        result[f"min_dcf_{p_target}_threshold"] = float(metrics.min_dcf_threshold[p_target])
    return result


def validate(model: torch.nn.Module, utterances: Sequence[Utterance], trials_path: str | Path,
             device: torch.device | None = None, progress: bool = False, rank: int = 0,
             world_size: int = 1) -> dict[str, Any]:
    """Dev-set metrics of ``model`` (an ``EmbeddingModel``) on the VoxCeleb/Kaldi trial list ``trials_path``.

    Trial keys are manifest ``utt_id`` s. Returns plain floats: ``eer``, ``eer_threshold``,
    ``min_dcf_0.01``, ``min_dcf_0.01_threshold``, ``min_dcf_0.05``, ``min_dcf_0.05_threshold``
    (rates as fractions, thresholds on cosine scores) and ``trials``.

    Under DDP (``world_size`` > 1, every rank calls it) each rank embeds every
    ``world_size``-th utterance and the embeddings are gathered, so no rank waits out the
    whole dev set at a barrier; every rank returns the same metrics.
    """
    items = {utterance.utt_id: utterance for utterance in utterances}
    return dev_metrics(score_dev_trials(model, items, trials_path, device, progress, rank, world_size))


def _gather_shards(shard: np.ndarray, total: int, world_size: int) -> np.ndarray:
    """Every rank's ``shard`` (rows ``rank::world_size`` of the whole) → the whole (total, D), on every rank."""
    import torch.distributed as dist

    shards: list[Any] = [None] * world_size
    dist.all_gather_object(shards, shard)
    filled = next(rows for rows in shards if len(rows))
    whole = np.empty((total, filled.shape[1]), dtype=filled.dtype)
    for rank, rows in enumerate(shards):
        if len(rows):
            whole[rank::world_size] = rows
    return whole
