"""Validation: embed the dev utterances named in a trial list, score the trials, EER and minDCF."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speakertrip.data.manifest import Utterance
from speakertrip.errors import KeyNotFoundError

P_TARGETS = (0.01, 0.05)


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
    from speakertrip.extraction.batched import embed_many
    from speakertrip.extraction.store import EmbeddingStore
    from speakertrip.scoring import compute_metrics, read_trials, score_trials

    trials = read_trials(trials_path)
    if trials.labels is None:
        raise KeyNotFoundError(f"{trials_path}: validation needs a labelled trial list (target/nontarget)")
    by_key = {utterance.utt_id: utterance for utterance in utterances}
    keys = sorted(set(trials.enroll) | set(trials.test))
    missing = [key for key in keys if key not in by_key]
    if missing:
        raise KeyNotFoundError(f"{trials_path}: {len(missing)} trial key(s) are not in the dev manifest, "
                               f"e.g. {', '.join(missing[:3])}")
    embeddings = embed_many(model, [by_key[key] for key in keys[rank::world_size]], device=device,
                            progress=progress)
    if world_size > 1:
        embeddings = _gather_shards(embeddings, len(keys), world_size)
    scores = score_trials(trials, EmbeddingStore(keys, embeddings))
    metrics = compute_metrics(np.asarray(scores), np.asarray(trials.labels), p_targets=P_TARGETS)
    result: dict[str, Any] = {"trials": int(len(scores)), "eer": float(metrics.eer),
                              "eer_threshold": float(metrics.eer_threshold)}
    for p_target in P_TARGETS:
        result[f"min_dcf_{p_target}"] = float(metrics.min_dcf[p_target])
        result[f"min_dcf_{p_target}_threshold"] = float(metrics.min_dcf_threshold[p_target])
    return result


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
