"""Error-rate metrics from the operating points: EER, minDCF and actDCF, exact with tied scores.

EER definition used throughout: the rate where the ROC — the operating points joined by straight
lines in (P_fa, P_miss) — crosses P_miss = P_fa. When the crossing falls between two operating
points it is interpolated along that segment (as WeSpeaker does); a horizontal or vertical
segment gives exactly the shared rate. ``rocch_eer`` (in :mod:`speakertrip.scoring.cllr`) is the
same crossing on the ROC convex hull.

DCF is normalised as NIST and Kaldi do: ``(C_miss·P_tar·P_miss + C_fa·(1−P_tar)·P_fa) /
min(C_miss·P_tar, C_fa·(1−P_tar))``, so that 1.0 is the cost of always accepting or always
rejecting, whichever is cheaper. Scores are used as given, never rescaled.
"""

from __future__ import annotations

import math

import numpy as np

from speakertrip.errors import ConfigError
from speakertrip.scoring.operating_points import OperatingPoints, check_trials, operating_points


def eer_from_points(points: OperatingPoints) -> tuple[float, float]:
    """``(eer, threshold)``: the ROC crossing of P_miss = P_fa (a fraction), and the threshold of
    the operating point next to the crossing with the smaller |P_miss − P_fa|."""
    n_tar, n_non = points.n_targets, points.n_nontargets
    # (P_miss - P_fa) · n_tar · n_non in exact integers; non-decreasing along the points.
    gap = points.misses * n_non - points.false_alarms * n_tar
    after = int(np.searchsorted(gap, 0, side="left"))  # first point with P_miss >= P_fa; >= 1 since P_fa[0] = 1
    before = after - 1
    fraction = -gap[before] / (gap[after] - gap[before])  # position of the crossing on the segment
    misses = points.misses[before] + fraction * (points.misses[after] - points.misses[before])
    nearest = after if abs(gap[after]) <= abs(gap[before]) else before
    return float(misses / n_tar), float(points.thresholds[nearest])


def dcf_normaliser(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """``min(C_miss·P_tar, C_fa·(1−P_tar))``, the cost of the best trivial system."""
    if not 0.0 < p_target < 1.0 or c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"need 0 < p_target < 1 and positive costs, got p_target={p_target}, "
                         f"c_miss={c_miss}, c_fa={c_fa}")
    return min(c_miss * p_target, c_fa * (1.0 - p_target))


def min_dcf_from_points(points: OperatingPoints, p_target: float = 0.01, c_miss: float = 1.0,
                        c_fa: float = 1.0) -> tuple[float, float]:
    """``(min_dcf, threshold)``: the lowest normalised DCF over all operating points, and where."""
    normaliser = dcf_normaliser(p_target, c_miss, c_fa)
    miss_weight = c_miss * p_target / (normaliser * points.n_targets)
    fa_weight = c_fa * (1.0 - p_target) / (normaliser * points.n_nontargets)
    costs = miss_weight * points.misses + fa_weight * points.false_alarms
    best = int(np.argmin(costs))
    return float(costs[best]), float(points.thresholds[best])


def eer(scores: np.ndarray, labels: np.ndarray) -> float:
    """Equal error rate (a fraction) of ``scores`` (N,) with ``labels`` (N,), 1 target / 0 non-target.

    The ROC crossing of P_miss = P_fa, interpolated along the segment it falls on (see module doc).

    >>> eer(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    0.5
    """
    return eer_from_points(operating_points(scores, labels))[0]


def min_dcf(scores: np.ndarray, labels: np.ndarray, p_target: float = 0.01, c_miss: float = 1.0,
            c_fa: float = 1.0) -> float:
    """Minimum normalised detection cost over all thresholds (NIST/Kaldi normalisation).

    >>> min_dcf(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1]), p_target=0.05)
    0.0
    """
    return min_dcf_from_points(operating_points(scores, labels), p_target, c_miss, c_fa)[0]


def bayes_threshold(p_target: float, c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """The Bayes decision threshold for log-likelihood-ratio scores: ``log(C_fa(1−P_tar) / (C_miss·P_tar))``."""
    dcf_normaliser(p_target, c_miss, c_fa)  # validates
    return math.log(c_fa * (1.0 - p_target) / (c_miss * p_target))


def act_dcf(scores: np.ndarray, labels: np.ndarray, threshold: float | None = None, p_target: float = 0.01,
            c_miss: float = 1.0, c_fa: float = 1.0) -> float:
    """Normalised DCF of the decisions ``score >= threshold``.

    With ``threshold=None`` the scores are taken as calibrated log-likelihood ratios and the
    Bayes threshold of (p_target, c_miss, c_fa) is used.

    >>> act_dcf(np.array([-3.0, 3.0]), np.array([0, 1]), p_target=0.5)
    0.0
    """
    scores, labels = check_trials(scores, labels)
    if threshold is None:
        threshold = bayes_threshold(p_target, c_miss, c_fa)
    elif not math.isfinite(threshold):  # NaN would accept and reject nothing: an actDCF of 0
        raise ConfigError(f"threshold must be a finite number, got {threshold!r}")
    p_miss = np.count_nonzero(scores[labels] < threshold) / np.count_nonzero(labels)
    p_fa = np.count_nonzero(scores[~labels] >= threshold) / np.count_nonzero(~labels)
    return float((c_miss * p_target * p_miss + c_fa * (1 - p_target) * p_fa) / dcf_normaliser(p_target, c_miss, c_fa))
