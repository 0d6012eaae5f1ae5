"""Operating points of a verification system: error counts at every distinct threshold, from one sort.

A trial is accepted when ``score >= threshold``. At a threshold t, ``misses(t)`` counts the
targets scored below t and ``false_alarms(t)`` the non-targets scored at or above t. The
thresholds are the distinct scores in ascending order and then the next float above the highest
score (reject everything): exactly the operating points that some threshold reaches. Tied scores
always move together, so ties never create a point that no threshold achieves.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from speakertrip.errors import FormatError


def check_trials(scores: np.ndarray, labels: np.ndarray,
                 source: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: ``scores`` (N,) finite floats, ``labels`` (N,) 1 target / 0 non-target.

    Returns ``(scores, labels)`` as a floating array and a bool array; raises FormatError (naming
    ``source`` when given) for NaN or infinite scores, labels other than 0/1, mismatched lengths,
    or a list without targets or without non-targets.
    """
    scores, labels = np.asarray(scores), np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1 or len(scores) != len(labels):
        raise FormatError(f"scores and labels must be 1-D arrays of one length, got shapes {scores.shape} "
                          f"and {labels.shape}", source)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(scores))
    if len(bad):
        raise FormatError(f"{len(bad)} NaN or infinite scores (first at trial {bad[0] + 1}: {scores[bad[0]]})", source)
    if labels.dtype != bool:
        if not np.isin(labels, (0, 1)).all():
            raise FormatError(f"labels must be 1 (target) or 0 (non-target), got {np.setdiff1d(labels, (0, 1))[:5]}",
                              source)
        labels = labels.astype(bool)
    n_targets = int(np.count_nonzero(labels))
    if n_targets == 0 or n_targets == len(labels):
        kind = "no targets" if n_targets == 0 else "no non-targets"
        raise FormatError(f"the trials have {kind} ({len(labels)} trials): error rates need both kinds", source)
    return scores, labels


@dataclass(frozen=True)
class ScoreGroups:
    """Trials grouped by distinct score: ``values`` (G,) ascending, and per value the counts
    ``targets`` (G,) and ``nontargets`` (G,). Every metric here depends on trials only through these."""

    values: np.ndarray
    targets: np.ndarray
    nontargets: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, labels: np.ndarray) -> ScoreGroups:
        """Group validated trials (see :func:`check_trials`) in O(N log N).

        Targets and non-targets are sorted apart (two half-size sorts, cheaper than one argsort)
        and merged with one ``searchsorted``.
        """
        targets, nontargets = np.sort(scores[labels]), np.sort(scores[~labels])
        count = len(scores)
        slots = np.arange(len(targets)) + np.searchsorted(nontargets, targets, side="right")
        is_target = np.zeros(count, dtype=bool)
        is_target[slots] = True
        merged = np.empty(count, dtype=scores.dtype)
        merged[slots] = targets
        merged[~is_target] = nontargets
        starts = np.flatnonzero(np.concatenate(([True], merged[1:] != merged[:-1])))
        targets_before = np.concatenate(([0], np.cumsum(is_target, dtype=np.int64)))
        edges = np.append(starts, count)
        target_counts = np.diff(targets_before[edges])
        return cls(merged[starts], target_counts, np.diff(edges) - target_counts)

    @property
    def n_targets(self) -> int:
        return int(self.targets.sum())

    @property
    def n_nontargets(self) -> int:
        return int(self.nontargets.sum())


@dataclass(frozen=True)
class OperatingPoints:
    """Error counts at every reachable threshold, ascending (G + 1 points for G distinct scores).

    thresholds : (G + 1,) the distinct scores, then the next float above the highest (reject all).
    misses : (G + 1,) int64, targets scored below the threshold; 0 up to ``n_targets``.
    false_alarms : (G + 1,) int64, non-targets scored at or above it; ``n_nontargets`` down to 0.
    """

    thresholds: np.ndarray
    misses: np.ndarray
    false_alarms: np.ndarray
    n_targets: int
    n_nontargets: int

    @classmethod
    def from_groups(cls, groups: ScoreGroups) -> OperatingPoints:
        last = groups.values[-1]
        thresholds = np.append(groups.values, np.nextafter(last, last.dtype.type(np.inf)))
        misses = np.concatenate(([0], np.cumsum(groups.targets)))
        nontargets_below = np.concatenate(([0], np.cumsum(groups.nontargets)))
        n_nontargets = int(nontargets_below[-1])
        return cls(thresholds, misses, n_nontargets - nontargets_below, int(misses[-1]), n_nontargets)

    @property
    def p_miss(self) -> np.ndarray:
        """(G + 1,) miss rate P_miss, a fraction."""
        return self.misses / self.n_targets

    @property
    def p_fa(self) -> np.ndarray:
        """(G + 1,) false-alarm rate P_fa, a fraction."""
        return self.false_alarms / self.n_nontargets


def operating_points(scores: np.ndarray, labels: np.ndarray) -> OperatingPoints:
    """All operating points of ``scores`` (N,) with ``labels`` (N,), 1 target / 0 non-target.

    >>> points = operating_points(np.array([0.1, 0.4, 0.4, 0.9]), np.array([0, 1, 0, 1]))
    >>> points.misses.tolist(), points.false_alarms.tolist()
    ([0, 0, 1, 2], [2, 1, 0, 0])
    """
    return OperatingPoints.from_groups(ScoreGroups.from_scores(*check_trials(scores, labels)))
