"""Calibration-sensitive metrics: Cllr of log-likelihood ratios, and minCllr and the ROC convex-hull
EER, both from the pool-adjacent-violators (PAV) fit of P(target | score) over the distinct scores.

PAV finds the best monotone map from score to posterior; its blocks of consecutive distinct
scores are the vertices of the ROC convex hull (ROCCH), as in BOSARIS. ``min_cllr`` is the Cllr
of that optimally calibrated system, so ``cllr - min_cllr`` is the loss due to miscalibration.
"""

from __future__ import annotations

import math

import numpy as np

from speakertrip.scoring.metrics import eer_from_points
from speakertrip.scoring.operating_points import OperatingPoints, ScoreGroups, check_trials


def pav_blocks(groups: ScoreGroups) -> ScoreGroups:
    """Merge distinct-score groups into PAV blocks, whose target fraction rises strictly.

    Returns a ScoreGroups with one entry per block: ``values`` the lowest score of the block,
    ``targets`` and ``nontargets`` its counts. Pool-adjacent-violators with a stack of blocks, the
    fractions compared exactly in integers (t1 / n1 >= t2 / n2 as t1 n2 >= t2 n1); what
    scikit-learn's weighted ``isotonic_regression`` fits, without importing scikit-learn and SciPy
    (about 0.9 s of every ``speakertrip score``).
    """
    targets, sizes = groups.targets.astype(np.int64), (groups.targets + groups.nontargets).astype(np.int64)
    # neighbours with the same target fraction end in the same block (the fit of a run of equal values is
    # constant), so runs of them are pooled first and the loop runs over runs: most scores are one trial, 0 or 1
    changes = np.flatnonzero(targets[1:] * sizes[:-1] != targets[:-1] * sizes[1:]) + 1
    runs = np.concatenate([[0], changes])[:len(targets)]
    block_targets: list[int] = []
    block_sizes: list[int] = []
    block_starts: list[int] = []
    run_targets, run_sizes = np.add.reduceat(targets, runs).tolist(), np.add.reduceat(sizes, runs).tolist()
    for start, run_target, run_size in zip(runs.tolist(), run_targets, run_sizes):
        while block_targets and block_targets[-1] * run_size >= run_target * block_sizes[-1]:  # not rising: pool
            run_target, run_size = run_target + block_targets.pop(), run_size + block_sizes.pop()
            start = block_starts.pop()
        block_targets.append(run_target)
        block_sizes.append(run_size)
        block_starts.append(start)
    starts = np.array(block_starts, dtype=np.int64)
    return ScoreGroups(groups.values[starts], np.add.reduceat(groups.targets, starts),
                       np.add.reduceat(groups.nontargets, starts))


def rocch_eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """EER (a fraction) of the ROC convex hull: the EER after optimal monotone calibration.

    Never above :func:`speakertrip.scoring.eer`.

    >>> rocch_eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    0.25
    """
    return rocch_eer_from_groups(ScoreGroups.from_scores(*check_trials(scores, labels)))


def rocch_eer_from_groups(groups: ScoreGroups) -> float:
    """:func:`rocch_eer` of trials already grouped by distinct score."""
    return eer_from_points(OperatingPoints.from_groups(pav_blocks(groups)))[0]


def min_cllr_from_groups(groups: ScoreGroups) -> float:
    """:func:`min_cllr` of trials already grouped by distinct score."""
    blocks = pav_blocks(groups)
    n_tar, n_non = groups.n_targets, groups.n_nontargets
    # A block with a targets and b non-targets gets the posterior a/(a+b), i.e. the LLR
    # log(a/b) - log(n_tar/n_non); its targets cost log2(1 + e^-LLR), its non-targets log2(1 + e^LLR).
    a, b = blocks.targets.astype(np.float64), blocks.nontargets.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        target_cost = np.where(a > 0, a * np.log2(1 + (b * n_tar) / (a * n_non)), 0.0)
        nontarget_cost = np.where(b > 0, b * np.log2(1 + (a * n_non) / (b * n_tar)), 0.0)
    return float(0.5 * (target_cost.sum() / n_tar + nontarget_cost.sum() / n_non))


def min_cllr(scores: np.ndarray, labels: np.ndarray) -> float:
    """Cllr (bits) after the optimal monotone calibration of ``scores`` (N,); any score scale works.

    >>> min_cllr(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1]))
    0.0
    """
    return min_cllr_from_groups(ScoreGroups.from_scores(*check_trials(scores, labels)))


def cllr(llrs: np.ndarray, labels: np.ndarray) -> float:
    """Log-likelihood-ratio cost (bits) of calibrated LLR scores (N,), natural log; 1.0 = uninformative.

    ``0.5 · (mean over targets of log2(1 + e^−llr) + mean over non-targets of log2(1 + e^llr))``.

    >>> cllr(np.zeros(4), np.array([0, 0, 1, 1]))
    1.0
    """
    llrs, labels = check_trials(llrs, labels)
    target_cost = np.logaddexp(0.0, -llrs[labels]).mean()
    nontarget_cost = np.logaddexp(0.0, llrs[~labels]).mean()
    return float(0.5 * (target_cost + nontarget_cost) / math.log(2))
