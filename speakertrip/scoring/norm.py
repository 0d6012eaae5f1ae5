"""Score normalisation with a cohort: Z-, T-, S-norm and adaptive S-norm (AS-norm, top-n cohort).

For an embedding x, its cohort statistics are the mean μ(x) and standard deviation σ(x)
(population, ddof=0, as WeSpeaker) of its cosine scores against the cohort — against the whole
cohort, or only the ``top_n`` highest for the adaptive variants. For a trial (e, t) with score s:

- znorm: ``(s − μ(e)) / σ(e)``;  tnorm: ``(s − μ(t)) / σ(t)``;
- snorm: ``(znorm + tnorm) / 2`` over the whole cohort;  asnorm: the same over the top-n.

Statistics are matrix products over the distinct keys only, computed in chunks; the top-n is
exact (``np.partition`` on CPU, ``torch.topk`` on a GPU).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from speakertrip.errors import ConfigError
from speakertrip.scoring.cosine import TrialEmbeddings, l2_normalize

NORM_METHODS = ("znorm", "tnorm", "snorm", "asnorm")
DEFAULT_TOP_N = 300  # AS-norm cohort size, as WeSpeaker's VoxCeleb recipe


@dataclass(frozen=True)
class CohortStats:
    """Per embedding, the mean (M,) and standard deviation (M,) of its cohort scores, float64."""

    mean: np.ndarray
    std: np.ndarray


def resolve_top_n(method: str, top_n: int | None, cohort_size: int) -> int | None:
    """The number of top cohort scores to use (None: all); checks the method and the range."""
    if method not in NORM_METHODS:
        raise ConfigError(f"unknown score normalisation {method!r}; valid names: {', '.join(NORM_METHODS)}")
    if method == "asnorm" and top_n is None:
        top_n = DEFAULT_TOP_N
    if top_n is not None and not 2 <= top_n <= cohort_size:
        raise ConfigError(f"top_n must be between 2 and the cohort size {cohort_size}, got {top_n} "
                          "(pass a smaller --top-n or a larger cohort)")
    return top_n


def cohort_stats(embeddings: np.ndarray, cohort: np.ndarray, top_n: int | None = None, device: str = "cpu",
                 chunk_size: int = 4096) -> CohortStats:
    """Mean and std of the cosine scores of each of ``embeddings`` (M, D) against ``cohort`` (K, D).

    Only the ``top_n`` highest scores of each row count when given. Both inputs are L2-normalised here.
    """
    unit, cohort_unit = l2_normalize(embeddings), l2_normalize(cohort)
    if unit.shape[1] != cohort_unit.shape[1]:
        raise ConfigError(f"embeddings of dimension {unit.shape[1]} cannot be scored against a cohort "
                          f"of dimension {cohort_unit.shape[1]}")
    if device != "cpu":
        return _cohort_stats_torch(unit, cohort_unit, top_n, device, chunk_size)
    cohort_t = np.ascontiguousarray(cohort_unit.T)  # a contiguous (D, K) makes the product ~1.5x faster

    def chunk_stats(start: int) -> tuple[np.ndarray, np.ndarray]:
        scores = unit[start:start + chunk_size] @ cohort_t
        top = scores if top_n is None else np.partition(scores, scores.shape[1] - top_n, axis=1)[:, -top_n:]
        return top.mean(axis=1, dtype=np.float64), top.std(axis=1, dtype=np.float64)

    starts = range(0, len(unit), chunk_size)
    workers = min(2, len(os.sched_getaffinity(0)))  # BLAS and partitions release the GIL: overlap two chunks
    with ThreadPoolExecutor(workers) as pool:
        parts = list(tqdm(pool.map(chunk_stats, starts), total=len(starts), desc="cohort scores", unit="chunk",
                          leave=False, disable=len(starts) < 8))
    return CohortStats(np.concatenate([m for m, _ in parts]), np.concatenate([s for _, s in parts]))


def _cohort_stats_torch(unit: np.ndarray, cohort_unit: np.ndarray, top_n: int | None, device: str,
                        chunk_size: int) -> CohortStats:
    import torch

    cohort_t = torch.from_numpy(cohort_unit).to(device).T
    means, stds = [], []
    for start in range(0, len(unit), chunk_size):
        scores = torch.from_numpy(unit[start:start + chunk_size]).to(device) @ cohort_t
        top = scores if top_n is None else torch.topk(scores, top_n, dim=1, sorted=False).values
        top = top.double()
        means.append(top.mean(dim=1).cpu().numpy())
        stds.append(top.std(dim=1, unbiased=False).cpu().numpy())
    return CohortStats(np.concatenate(means), np.concatenate(stds))


def apply_norm(scores: np.ndarray, method: str, enroll: CohortStats | None, test: CohortStats | None) -> np.ndarray:
    """Normalise ``scores`` (N,) with per-trial statistics of the enrolment and test sides (N,) each.

    ``znorm`` needs only ``enroll``, ``tnorm`` only ``test``; ``snorm``/``asnorm`` average both.
    """
    if method == "znorm":
        return (scores - enroll.mean) / enroll.std
    if method == "tnorm":
        return (scores - test.mean) / test.std
    if method in ("snorm", "asnorm"):
        return 0.5 * ((scores - enroll.mean) / enroll.std + (scores - test.mean) / test.std)
    raise ConfigError(f"unknown score normalisation {method!r}; valid names: {', '.join(NORM_METHODS)}")


def normalize_scores(scores: np.ndarray, enroll: np.ndarray, test: np.ndarray, cohort: np.ndarray,
                     method: str = "asnorm", top_n: int | None = None, device: str = "cpu") -> np.ndarray:
    """Normalise raw cosine ``scores`` (N,) of trials whose embeddings are ``enroll`` (N, D) and
    ``test`` (N, D), with a ``cohort`` (K, D). For one trial at verify time, N = 1.

    >>> rng = np.random.default_rng(0)
    >>> e, t, cohort = rng.normal(size=(1, 8)), rng.normal(size=(1, 8)), rng.normal(size=(20, 8))
    >>> normalize_scores(np.array([0.5]), e, t, cohort, "asnorm", top_n=5).shape
    (1,)
    """
    top_n = resolve_top_n(method, top_n, len(cohort))
    enroll_stats = cohort_stats(enroll, cohort, top_n, device) if method != "tnorm" else None
    test_stats = cohort_stats(test, cohort, top_n, device) if method != "znorm" else None
    return apply_norm(np.asarray(scores, dtype=np.float64), method, enroll_stats, test_stats)


def normalize_trial_scores(scores: np.ndarray, embedded: TrialEmbeddings, cohort: np.ndarray,
                           method: str = "asnorm", top_n: int | None = None, device: str = "cpu") -> np.ndarray:
    """Normalise the scores (N,) of a trial list; cohort statistics are computed once per distinct key."""
    top_n = resolve_top_n(method, top_n, len(cohort))
    sides = {"znorm": [embedded.enroll_rows], "tnorm": [embedded.test_rows]}.get(
        method, [embedded.enroll_rows, embedded.test_rows])
    needed = np.unique(np.concatenate(sides))
    stats = cohort_stats(embedded.unit[needed], cohort, top_n, device)

    def per_trial(rows: np.ndarray) -> CohortStats:
        where = np.searchsorted(needed, rows)
        return CohortStats(stats.mean[where], stats.std[where])

    enroll = per_trial(embedded.enroll_rows) if method != "tnorm" else None
    test = per_trial(embedded.test_rows) if method != "znorm" else None
    return apply_norm(np.asarray(scores, dtype=np.float64), method, enroll, test)
