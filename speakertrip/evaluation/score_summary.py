"""Compact summaries of dev score distributions, enough to choose a threshold for a false-accept or
false-reject rate without keeping the dev scores.

A :class:`ScoreSummary` keeps the sorted scores of one class at chosen ranks: every rank within
``exact`` of either end, then ranks spaced geometrically (ratio ``1 + spacing``) towards the median.
The tails that decide low error rates are kept exactly, and elsewhere a rank is known to within
``spacing`` of itself, so any rate read from the summary is off by at most that fraction of itself
(1 % by default): at a false-accept rate of 0.1 % the summary's own error is 0.001 % absolute, far
below the sampling error of the dev set (a rate rests on about ``rate · count`` dev trials). A
summary of 10⁶ scores holds about 1,500 of them; one of at most ``2 · exact`` scores holds them all.

Thresholds follow :mod:`speakertrip.scoring.operating_points`: accept when ``score >= threshold``.
:meth:`OperatingPointSummary.threshold_for_far` is the lowest operating point (a dev score of either
class, or just above the highest) whose dev false-accept rate is at most the target;
:meth:`~OperatingPointSummary.threshold_for_frr` the highest whose dev false-reject rate is at most the
target. Exact when the summary holds every score involved (always in the exact tails of the class
that sets the rate), interpolated linearly in rank otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from speakertrip.errors import ConfigError, FormatError
from speakertrip.scoring.operating_points import check_trials

EXACT_RANKS = 200
RANK_SPACING = 0.01


def summary_ranks(count: int, exact: int = EXACT_RANKS, spacing: float = RANK_SPACING) -> np.ndarray:
    """0-based positions kept of ``count`` sorted scores: ascending, both ends exact, geometric towards the middle."""
    if count <= 2 * exact:
        return np.arange(count)
    steps = math.ceil(math.log(count / 2 / exact) / math.log1p(spacing)) + 1
    from_end = np.unique(np.round(exact * (1 + spacing) ** np.arange(steps)).astype(np.int64))
    from_end = np.concatenate([np.arange(exact), from_end[from_end < (count + 1) // 2]])
    return np.unique(np.concatenate([from_end, count - 1 - from_end]))


def check_rate(name: str, value: Any) -> float:
    """A target error rate must be a number strictly between 0 and 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be a rate strictly between 0 and 1 (e.g. {name}=0.01 for 1 %), got {value!r}")
    return float(value)


@dataclass(frozen=True)
class ScoreSummary:
    """Scores of one class at some ranks: ``ranks`` (K,) 0-based ascending positions among ``count`` sorted
    scores, ``scores`` (K,) the scores there (non-decreasing); always holds the lowest and the highest."""

    count: int
    ranks: np.ndarray
    scores: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, exact: int = EXACT_RANKS, spacing: float = RANK_SPACING) -> ScoreSummary:
        """Summarise finite ``scores`` (N,), N >= 1."""
        ordered = np.sort(np.asarray(scores, dtype=np.float64))
        ranks = summary_ranks(len(ordered), exact, spacing)
        return cls(len(ordered), ranks, ordered[ranks])

    def at(self, position: float) -> float:
        """The score at 0-based ascending ``position`` (linear interpolation between kept ranks)."""
        return float(np.interp(position, self.ranks, self.scores))

    def _known(self, position: int) -> bool:
        index = int(np.searchsorted(self.ranks, position))
        return index < len(self.ranks) and int(self.ranks[index]) == position

    def count_below(self, threshold: float) -> float:
        """How many scores are < ``threshold``; exact in the kept tails, interpolated in rank elsewhere."""
        index = int(np.searchsorted(self.scores, threshold, side="left"))  # kept scores below: ranks[:index]
        if index == 0:
            return 0.0
        if index == len(self.scores):
            return float(self.count)
        low, high = int(self.ranks[index - 1]), int(self.ranks[index])
        if high == low + 1:
            return float(high)
        below, above = self.scores[index - 1], self.scores[index]
        fraction = (threshold - below) / (above - below) if above > below else 0.0
        return float(low + 1 + fraction * (high - low - 1))

    def to_dict(self) -> dict[str, Any]:
        return {"count": int(self.count), "ranks": self.ranks.tolist(), "scores": self.scores.tolist()}

    @classmethod
    def from_dict(cls, data: Any, source: object = None, name: str = "scores") -> ScoreSummary:
        try:
            count, ranks = data["count"], np.asarray(data["ranks"], dtype=np.int64)
            scores = np.asarray(data["scores"], dtype=np.float64)
        except (TypeError, KeyError, ValueError):
            raise FormatError(f"score summary {name!r} must be {{count: int, ranks: [int], scores: [number]}}",
                              source) from None
        if (not isinstance(count, int) or count < 1 or ranks.ndim != 1 or ranks.shape != scores.shape
                or len(ranks) == 0 or ranks[0] != 0 or ranks[-1] != count - 1 or np.any(np.diff(ranks) <= 0)
                or not np.isfinite(scores).all() or np.any(np.diff(scores) < 0)):
            raise FormatError(f"score summary {name!r} is inconsistent (ranks must rise from 0 to count - 1, "
                              "scores must be finite and non-decreasing)", source)
        return cls(count, ranks, scores)


@dataclass(frozen=True)
class OperatingPointSummary:
    """Summaries of the dev target and non-target scores: thresholds for a FAR or FRR, and the rates of a threshold.

    >>> rng = np.random.default_rng(0)
    >>> scores, labels = np.r_[rng.normal(2, 1, 10000), rng.normal(0, 1, 100000)], np.repeat([1, 0], [10000, 100000])
    >>> summary = OperatingPointSummary.from_scores(scores, labels)
    >>> threshold = summary.threshold_for_far(0.01)
    >>> round(float(np.mean(scores[labels == 0] >= threshold)), 4), round(threshold, 2)
    (0.01, 2.34)
    """

    targets: ScoreSummary
    nontargets: ScoreSummary

    @classmethod
    def from_scores(cls, scores: np.ndarray, labels: np.ndarray, exact: int = EXACT_RANKS,
                    spacing: float = RANK_SPACING) -> OperatingPointSummary:
        """Summarise dev ``scores`` (N,) with ``labels`` (N,), 1 target / 0 non-target."""
        scores, labels = check_trials(scores, labels)
        return cls.from_classes(scores[labels], scores[~labels], exact, spacing)

    @classmethod
    def from_classes(cls, targets: np.ndarray, nontargets: np.ndarray, exact: int = EXACT_RANKS,
                     spacing: float = RANK_SPACING) -> OperatingPointSummary:
        """Summarise checked target scores (T,) and non-target scores (N,), both non-empty and finite."""
        return cls(ScoreSummary.from_scores(targets, exact, spacing), ScoreSummary.from_scores(nontargets, exact, spacing))

    def threshold_for_far(self, far: float) -> float:
        """The lowest threshold that falsely accepts at most ``far`` of the dev non-targets.

        Raises ConfigError when the dev set has too few non-targets for that rate (``far · count < 1``).
        """
        far = check_rate("far", far)
        summary = self.nontargets
        accepted = math.floor(far * summary.count + 1e-9)  # non-targets allowed at or above the threshold
        if accepted < 1:
            raise ConfigError(f"far={far:g} needs at least {math.ceil(1 / far)} dev non-target trials; the model's "
                              f"calibration has {summary.count}: calibrate it on a larger dev trial list "
                              "(speakertrip calibrate --model)")
        position = summary.count - 1 - accepted  # the highest rejected non-target
        if summary._known(position) and summary._known(position + 1):
            rejected = summary.at(position)  # the lowest kept score above it, of either class, is the threshold
            kept = np.concatenate([self.targets.scores, summary.scores])
            above = kept[kept > rejected]
            return float(above.min()) if len(above) else float(np.nextafter(rejected, np.inf))
        return summary.at(position + 0.5)

    def threshold_for_frr(self, frr: float) -> float:
        """The highest threshold that falsely rejects at most ``frr`` of the dev targets.

        Raises ConfigError when the dev set has too few targets for that rate (``frr · count < 1``).
        """
        frr = check_rate("frr", frr)
        summary = self.targets
        rejected = math.floor(frr * summary.count + 1e-9)  # targets allowed below the threshold
        if rejected < 1:
            raise ConfigError(f"frr={frr:g} needs at least {math.ceil(1 / frr)} dev target trials; the model's "
                              f"calibration has {summary.count}: calibrate it on a larger dev trial list "
                              "(speakertrip calibrate --model)")
        return summary.at(rejected)

    def far(self, threshold: float) -> float:
        """Dev false-accept rate of ``threshold``: the fraction of non-targets scored >= it."""
        return (self.nontargets.count - self.nontargets.count_below(threshold)) / self.nontargets.count

    def frr(self, threshold: float) -> float:
        """Dev false-reject rate of ``threshold``: the fraction of targets scored < it."""
        return self.targets.count_below(threshold) / self.targets.count

    def to_dict(self) -> dict[str, Any]:
        return {"targets": self.targets.to_dict(), "nontargets": self.nontargets.to_dict()}

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> OperatingPointSummary:
        if not isinstance(data, Mapping) or set(data) != {"targets", "nontargets"}:
            raise FormatError("score summary must hold 'targets' and 'nontargets'", source)
        return cls(ScoreSummary.from_dict(data["targets"], source, "targets"),
                   ScoreSummary.from_dict(data["nontargets"], source, "nontargets"))
