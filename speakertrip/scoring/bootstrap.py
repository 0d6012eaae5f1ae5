"""Bootstrap confidence intervals for EER and minDCF, resampling targets and non-targets apart.

Each replicate draws ``n_targets`` targets and ``n_nontargets`` non-targets with replacement. Since
every metric depends on the trials only through the counts per distinct score, a replicate is two
multinomial draws over the distinct scores: no per-trial work and no new sort.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from speakertrip.scoring.metrics import eer_from_points, min_dcf_from_points
from speakertrip.scoring.operating_points import OperatingPoints, ScoreGroups


def bootstrap_intervals(groups: ScoreGroups, p_targets: Sequence[float] = (0.01, 0.05), c_miss: float = 1.0,
                        c_fa: float = 1.0, resamples: int = 1000, confidence: float = 0.95,
                        seed: int = 0) -> dict:
    """Percentile intervals ``{"eer": (low, high), "min_dcf": {p_target: (low, high)}}``.

    Parameters
    ----------
    groups : the trials grouped by distinct score (``ScoreGroups.from_scores``).
    resamples : number of bootstrap replicates (at least 2).
    confidence : coverage of the interval, e.g. 0.95 for the 2.5 % and 97.5 % percentiles.
    seed : seeds the generator, so the same call gives the same interval.
    """
    if resamples < 2 or not 0.0 < confidence < 1.0:
        raise ValueError(f"need resamples >= 2 and 0 < confidence < 1, got {resamples} and {confidence}")
    rng = np.random.default_rng(seed)
    n_tar, n_non = groups.n_targets, groups.n_nontargets
    target_share, nontarget_share = groups.targets / n_tar, groups.nontargets / n_non
    eers = np.empty(resamples)
    dcfs = {p: np.empty(resamples) for p in p_targets}
    for i in tqdm(range(resamples), desc="bootstrap", unit="replicate", leave=False, disable=resamples < 50):
        replicate = ScoreGroups(groups.values, rng.multinomial(n_tar, target_share),
                                rng.multinomial(n_non, nontarget_share))
        points = OperatingPoints.from_groups(replicate)
        eers[i] = eer_from_points(points)[0]
        for p in p_targets:
            dcfs[p][i] = min_dcf_from_points(points, p, c_miss, c_fa)[0]
    tails = [(1 - confidence) / 2, (1 + confidence) / 2]

    def interval(values: np.ndarray) -> tuple[float, float]:
        low, high = np.quantile(values, tails)
        return float(low), float(high)

    return {"eer": interval(eers), "min_dcf": {p: interval(values) for p, values in dcfs.items()}}


def speaker_replicates(enroll_speakers: Sequence[str], test_speakers: Sequence[str], resamples: int = 1000,
                       seed: int = 0) -> np.ndarray:
    """(R, N) int64 weights of N trials in R speaker-level bootstrap replicates.

    Trials of one speaker are not independent, so a trial-level interval is too narrow. Each
    replicate draws the speakers with replacement (``c(s)`` copies of speaker s); a target trial of
    speaker s then counts ``c(s)`` times and a non-target trial of speakers s and t ``c(s)·c(t)``
    times, as if the drawn speakers' trial list had been built again. Passing the same ``seed`` for
    two systems scored on the same list gives paired replicates.

    >>> speaker_replicates(["a", "a", "b"], ["a", "b", "a"], resamples=2).shape
    (2, 3)
    """
    if resamples < 2 or len(enroll_speakers) != len(test_speakers):
        raise ValueError(f"need resamples >= 2 and one test speaker per enrolment speaker, got {resamples}, "
                         f"{len(enroll_speakers)} and {len(test_speakers)}")
    names, index = np.unique(np.concatenate([np.asarray(enroll_speakers, dtype=str),
                                             np.asarray(test_speakers, dtype=str)]), return_inverse=True)
    enroll, test = index[:len(enroll_speakers)], index[len(enroll_speakers):]
    rng = np.random.default_rng(seed)
    copies = rng.multinomial(len(names), np.full(len(names), 1.0 / len(names)), size=resamples)  # (R, S)
    same = enroll == test
    return np.where(same, copies[:, enroll], copies[:, enroll] * copies[:, test]).astype(np.int64)


def weighted_metrics(scores: np.ndarray, labels: np.ndarray, weights: np.ndarray,
                     p_target: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """EER and minDCF(``p_target``) of ``scores`` (N,) with ``labels`` (N,) in each row of ``weights`` (R, N).

    A row counts trial i ``weights[r, i]`` times (:func:`speaker_replicates`); rows without a target or a
    non-target give NaN. Returns two (R,) arrays of fractions.
    """
    values, inverse = np.unique(np.asarray(scores), return_inverse=True)
    target = np.asarray(labels).astype(bool)
    eers, dcfs = np.full(len(weights), np.nan), np.full(len(weights), np.nan)
    for r, row in enumerate(np.asarray(weights)):
        groups = ScoreGroups(values, np.bincount(inverse[target], row[target], len(values)).astype(np.int64),
                             np.bincount(inverse[~target], row[~target], len(values)).astype(np.int64))
        if groups.n_targets and groups.n_nontargets:
            points = OperatingPoints.from_groups(groups)
            eers[r] = eer_from_points(points)[0]
            dcfs[r] = min_dcf_from_points(points, p_target)[0]
    return eers, dcfs


def speaker_bootstrap_intervals(scores: np.ndarray, labels: np.ndarray, enroll_speakers: Sequence[str],
                                test_speakers: Sequence[str], p_target: float = 0.01, resamples: int = 1000,
                                confidence: float = 0.95, seed: int = 0) -> dict:
    """Speaker-level percentile intervals ``{"eer": (low, high), "min_dcf": (low, high)}`` (fractions).

    >>> rng = np.random.default_rng(0)
    >>> speakers = [f"s{i}" for i in rng.integers(0, 8, 200)]
    >>> labels = rng.integers(0, 2, 200)
    >>> low, high = speaker_bootstrap_intervals(rng.normal(size=200) + labels, labels, speakers, speakers)["eer"]
    >>> 0 < low < high < 1
    True
    """
    eers, dcfs = weighted_metrics(scores, labels, speaker_replicates(enroll_speakers, test_speakers, resamples,
                                                                     seed), p_target)
    tails = [(1 - confidence) / 2, (1 + confidence) / 2]
    return {name: tuple(float(v) for v in np.nanquantile(values, tails))
            for name, values in (("eer", eers), ("min_dcf", dcfs))}
