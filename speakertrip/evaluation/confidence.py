"""How sure an operating point is: the dev speakers behind it and a speaker-level bootstrap of its threshold.

A threshold for ``far=0.01`` is set by the top 1 % of the dev non-target scores. Trials of one pair of speakers
are not independent: when the top 1 % comes from a handful of speaker pairs, other speakers put the threshold
elsewhere, and the false-accept rate a user meets on new speakers moves with them. Counting trials hides this;
counting speakers and speaker pairs, and resampling speakers, shows it.

For each recorded rate (:data:`FAR_RATES`, :data:`FRR_RATES`, those the dev trials can set) this records:

- the threshold (as the Verifier chooses it, from the dev score summary), the dev errors there (false accepts
  or false rejects) and how many distinct speakers and speaker pairs those errors come from;
- a speaker-level bootstrap: each replicate draws the dev speakers with replacement (as many as there are); a
  target trial counts once for each drawn copy of its speaker, a non-target trial ``c_a · c_b`` times for
  ``c_a`` and ``c_b`` drawn copies of its two speakers (the two-way "subset bootstrap" of biometric
  evaluations, Bolle et al. 2004). Percentile intervals of the threshold that gives the rate, and of the rate
  the recorded threshold gives on the resampled speakers;
- the interval of the rate a user meets on new speakers of the same domain: the union of that rate interval
  and the dev rates of the two ends of the threshold interval (the thresholds that resampled speakers choose,
  read on the dev trials). The rate interval alone keeps the recorded threshold fixed and so misses that the
  threshold was chosen on these very speakers: on speakers it never saw, a threshold set on 10 speakers
  realised more than the interval's upper end in 14-31 % of random draws (eSpeak voices through other
  channels, and real voices; 80 draws each, far=0.01 and 0.001). The union held the realised rate in 95-97 %
  of draws with 10 speakers and 85-94 % with 20 (whose 19-22 test speakers add their own spread).
  Artifacts recorded before this interval existed get it from their stored intervals and score summary.

:meth:`OperatingPointConfidence.doubt` turns this into the one-line warning the Verifier gives: the asked rate
rests on fewer than :data:`MIN_ERRORS` dev errors, or its new-speaker interval reaches beyond half or twice the
rate.

The threshold itself is the empirical quantile of the dev scores (:class:`OperatingPointSummary`). With 10
calibration speakers its realised FAR on other speakers of their domain lands within half to twice the asked
rate in only about half of random draws (far=0.01: 47-51 % on real voices, 45-50 % on other-channel eSpeak
voices, 150-200 draws): the top 1 % of impostor scores comes from the few closest speaker pairs (on the real
voices, half the false accepts of all 741 pairs come from 11 of them), and 45 pairs hold one such pair or none
by luck. No estimator from those 45 pairs did reliably better on both domains and both rates
(``scripts/study_threshold_estimators.py``, 150 draws per domain): a normal or Fisher-z fit, generalised-Pareto
and exponential tail fits above the 80th and 90th percentiles, a mixture of per-pair normals, speaker-jackknife
and speaker-bootstrap bagged quantiles, and the model's own dev tail moved to the new domain's quantiles. The
per-pair mixture reached 59 % on real voices but 49 % on eSpeak, and 16 % at far=0.001. The generalised-Pareto
fit above the 80th percentile reached 53-54 % on both, by moving the median nearer the asked rate rather than
narrowing the spread, and was mixed at far=0.001 (35 and 16 %, against 29 and 20 %). For every estimator the
spread (standard deviation) of the log realised FAR was at least 0.88 on one of the two domains; 9 draws in 10
within a factor 2 needs about 0.4. The spread is in the speakers, not in the estimator: more speakers is what
narrows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from speakertrip.errors import FormatError
from speakertrip.evaluation.score_summary import OperatingPointSummary

FAR_RATES = (0.05, 0.02, 0.01, 0.005, 0.002, 0.001, 0.0005, 0.0002, 0.0001)
FRR_RATES = (0.2, 0.1, 0.05, 0.02, 0.01)
RESAMPLES = 1000
CONFIDENCE = 0.95
MIN_ERRORS = 10  # fewer dev errors expected at a rate: below what the dev trials resolve
WIDE = 2.0  # an interval of the realised rate reaching below rate / WIDE or above rate * WIDE is wide
KINDS = ("far", "frr")
ADVICE = ("calibrate on more speakers of your own domain (40 at least; rarer rates need more speaker pairs: "
          "`speakertrip calibrate --model M --data DIR --out M2`) or adapt to your enrolled speakers "
          "(Verifier(..., adapt=True))")


class OperatingPointWarning(UserWarning):
    """An operating point asked of a model whose dev trials cannot vouch for it (see :func:`doubt`)."""


@dataclass(frozen=True)
class PointConfidence:
    """One recorded operating point: ``kind`` ("far" or "frr") at ``rate``, its ``threshold`` (cosine), the dev
    ``errors`` there and the distinct speakers and speaker pairs they come from (for false rejects, one speaker
    per trial: pairs = speakers), bootstrap intervals of the threshold and of the rate the threshold gives on the
    resampled speakers, and ``new_speakers_interval``, that of the rate on new speakers (see module doc; None
    until :meth:`OperatingPointConfidence.completed` fills it in for an artifact recorded without it)."""

    kind: str
    rate: float
    threshold: float
    errors: int
    error_speakers: int
    error_pairs: int
    threshold_interval: tuple[float, float]
    rate_interval: tuple[float, float]
    new_speakers_interval: tuple[float, float] | None = None

    @property
    def expected_interval(self) -> tuple[float, float]:
        """The interval of the rate on new speakers: ``new_speakers_interval`` when known, else ``rate_interval``."""
        return self.rate_interval if self.new_speakers_interval is None else self.new_speakers_interval

    @property
    def wide(self) -> bool:
        low, high = self.expected_interval
        return low < self.rate / WIDE or high > self.rate * WIDE

    def with_new_speakers(self, summary: OperatingPointSummary) -> PointConfidence:
        """This point with ``new_speakers_interval``: the union of ``rate_interval`` and the dev rates (read from
        ``summary``) of the ends of ``threshold_interval``."""
        low, high = self.threshold_interval
        if self.kind == "far":  # a higher threshold accepts fewer non-targets
            ends = (summary.far(high), summary.far(low))
        else:
            ends = (summary.frr(low), summary.frr(high))
        interval = (min(self.rate_interval[0], ends[0]), max(self.rate_interval[1], ends[1]))
        return replace(self, new_speakers_interval=(float(interval[0]), float(interval[1])))

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": self.kind, "rate": self.rate, "threshold": self.threshold, "errors": self.errors,
                "error_speakers": self.error_speakers, "error_pairs": self.error_pairs,
                "threshold_interval": list(self.threshold_interval), "rate_interval": list(self.rate_interval)}
        if self.new_speakers_interval is not None:
            data["new_speakers_interval"] = list(self.new_speakers_interval)
        return data

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> PointConfidence:
        try:
            point = cls(str(data["kind"]), float(data["rate"]), float(data["threshold"]), int(data["errors"]),
                        int(data["error_speakers"]), int(data["error_pairs"]),
                        _pair(data["threshold_interval"]), _pair(data["rate_interval"]),
                        None if data.get("new_speakers_interval") is None else _pair(data["new_speakers_interval"]))
        except (TypeError, KeyError, ValueError, AttributeError):
            raise FormatError("evaluation.calibration.operating_points.points: each must hold kind, rate, threshold, "
                              "errors, error_speakers, error_pairs, threshold_interval [low, high], "
                              "rate_interval [low, high] and (recorded since) new_speakers_interval [low, high]",
                              source) from None
        if point.kind not in KINDS or not 0 < point.rate < 1:
            raise FormatError(f"evaluation.calibration.operating_points: kind must be far or frr and rate in (0, 1), "
                              f"got {point.kind!r} at {point.rate!r}", source)
        return point


def _pair(values: Any) -> tuple[float, float]:
    low, high = (float(value) for value in values)
    if not math.isfinite(low) or not math.isfinite(high):
        raise ValueError("not finite")
    return low, high


@dataclass(frozen=True)
class OperatingPointConfidence:
    """The dev speakers behind a calibration's operating points and their bootstrap intervals (see module doc):
    ``speakers`` in the dev trials, ``target_speakers`` with target trials, ``speaker_pairs`` (unordered) with
    non-target trials, and one :class:`PointConfidence` per recorded rate.

    >>> rng = np.random.default_rng(0)
    >>> speakers = np.repeat(np.arange(30), 20).astype(str)
    >>> enrol, test = np.triu_indices(len(speakers), 1)
    >>> means = rng.normal(size=(30, 16))
    >>> unit = means[speakers.astype(int)] + rng.normal(size=(len(speakers), 16))
    >>> unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    >>> scores, labels = np.einsum("nd,nd->n", unit[enrol], unit[test]), speakers[enrol] == speakers[test]
    >>> summary = OperatingPointSummary.from_scores(scores, labels)
    >>> sure = OperatingPointConfidence.from_trials(scores, labels, speakers[enrol], speakers[test], summary)
    >>> sure.speakers, sure.speaker_pairs, sure.point("far", 0.01).errors
    (30, 435, 1739)
    """

    speakers: int
    target_speakers: int
    speaker_pairs: int
    resamples: int
    confidence: float
    points: tuple[PointConfidence, ...]

    @classmethod
    def from_trials(cls, scores: np.ndarray, labels: np.ndarray, enroll_speakers: Sequence[str],
                    test_speakers: Sequence[str], summary: OperatingPointSummary, resamples: int = RESAMPLES,
                    confidence: float = CONFIDENCE, seed: int = 0) -> OperatingPointConfidence:
        """From checked dev ``scores`` (N,), bool ``labels`` (N,), the speakers of both sides (N,) and the
        summary the Verifier reads thresholds from."""
        names, codes = np.unique(np.concatenate([np.asarray(enroll_speakers, dtype=str),
                                                 np.asarray(test_speakers, dtype=str)]), return_inverse=True)
        count = len(names)
        enroll, test = codes[:len(scores)], codes[len(scores):]
        non = ~labels
        order = np.argsort(-scores[non], kind="stable")
        non_scores, non_enroll, non_test = scores[non][order], enroll[non][order], test[non][order]
        order = np.argsort(scores[labels], kind="stable")
        tar_scores, tar_speaker = scores[labels][order], enroll[labels][order]
        pair_codes = np.minimum(non_enroll, non_test) * count + np.maximum(non_enroll, non_test)
        chosen = [(kind, rate, (summary.threshold_for_far if kind == "far" else summary.threshold_for_frr)(rate))
                  for kind, rates, pool in (("far", FAR_RATES, len(non_scores)), ("frr", FRR_RATES, len(tar_scores)))
                  for rate in rates if math.floor(rate * pool + 1e-9) >= 1]
        far_rates = np.array([rate for kind, rate, _ in chosen if kind == "far"])
        frr_rates = np.array([rate for kind, rate, _ in chosen if kind == "frr"])
        # errors of each recorded threshold: non-targets at or above it (a prefix of the descending order),
        # targets below it (a prefix of the ascending order)
        accepted = {rate: int(np.searchsorted(-non_scores, -t, side="right")) for kind, rate, t in chosen
                    if kind == "far"}
        rejected = {rate: int(np.searchsorted(tar_scores, t, side="left")) for kind, rate, t in chosen
                    if kind == "frr"}
        draws = _bootstrap(non_scores, non_enroll, non_test, tar_scores, tar_speaker, count, far_rates, frr_rates,
                           np.array(list(accepted.values()), dtype=np.int64),
                           np.array(list(rejected.values()), dtype=np.int64), resamples, seed)
        tails = [(1 - confidence) / 2, (1 + confidence) / 2]

        def interval(values: np.ndarray) -> tuple[float, float]:
            low, high = np.nanquantile(values, tails)
            return float(low), float(high)

        points, far_index, frr_index = [], 0, 0
        for kind, rate, threshold in chosen:
            if kind == "far":
                errors = accepted[rate]
                pairs = pair_codes[:errors]
                speakers = np.union1d(non_enroll[:errors], non_test[:errors])
                thresholds, rates = draws["far_thresholds"][:, far_index], draws["far_rates"][:, far_index]
                far_index += 1
            else:
                errors = rejected[rate]
                pairs = speakers = np.unique(tar_speaker[:errors])
                thresholds, rates = draws["frr_thresholds"][:, frr_index], draws["frr_rates"][:, frr_index]
                frr_index += 1
            points.append(PointConfidence(kind, float(rate), float(threshold), errors, len(np.unique(speakers)),
                                          len(np.unique(pairs)), interval(thresholds),
                                          interval(rates)).with_new_speakers(summary))
        return cls(count, len(np.unique(tar_speaker)), len(np.unique(pair_codes)), resamples, confidence,
                   tuple(points))

    def completed(self, summary: OperatingPointSummary) -> OperatingPointConfidence:
        """Every point with its ``new_speakers_interval`` (computed from ``summary`` where the artifact lacks it)."""
        return replace(self, points=tuple(p if p.new_speakers_interval is not None else p.with_new_speakers(summary)
                                          for p in self.points))

    def point(self, kind: str, rate: float) -> PointConfidence | None:
        """The recorded point of ``kind`` at ``rate`` (None when not recorded)."""
        return next((p for p in self.points if p.kind == kind and math.isclose(p.rate, rate)), None)

    def rate_interval(self, kind: str, rate: float) -> tuple[float, float] | None:
        """The interval of the rate realised on new speakers when asking for ``rate`` (``expected_interval``):
        the recorded one, or between two recorded rates the interval relative to the rate interpolated in log rate
        (None outside them)."""
        known = sorted((p for p in self.points if p.kind == kind), key=lambda p: p.rate)
        if not known or not known[0].rate <= rate <= known[-1].rate:
            return None
        logs = np.log([p.rate for p in known])
        low = np.interp(math.log(rate), logs, [math.log(p.expected_interval[0] / p.rate)
                                               if p.expected_interval[0] > 0 else -np.inf for p in known])
        high = np.interp(math.log(rate), logs, [math.log(p.expected_interval[1] / p.rate) if p.expected_interval[1] > 0
                                                else -np.inf for p in known])
        return float(rate * math.exp(low)), float(rate * math.exp(high))

    def to_dict(self) -> dict[str, Any]:
        return {"speakers": self.speakers, "target_speakers": self.target_speakers,
                "speaker_pairs": self.speaker_pairs, "resamples": self.resamples, "confidence": self.confidence,
                "points": [point.to_dict() for point in self.points]}

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> OperatingPointConfidence:
        fields = ("speakers", "target_speakers", "speaker_pairs", "resamples", "confidence", "points")
        if not isinstance(data, Mapping) or set(data) != set(fields) or not isinstance(data["points"], list):
            raise FormatError(f"evaluation.calibration.operating_points must hold {', '.join(fields)}", source)
        try:
            counts = [int(data[name]) for name in fields[:4]]
            confidence = float(data["confidence"])
        except (TypeError, ValueError):
            raise FormatError("evaluation.calibration.operating_points: counts and confidence must be numbers",
                              source) from None
        return cls(*counts, confidence, tuple(PointConfidence.from_dict(p, source) for p in data["points"]))


def _bootstrap(non_scores: np.ndarray, non_enroll: np.ndarray, non_test: np.ndarray, tar_scores: np.ndarray,
               tar_speaker: np.ndarray, count: int, far_rates: np.ndarray, frr_rates: np.ndarray,
               accepted: np.ndarray, rejected: np.ndarray, resamples: int, seed: int) -> dict[str, np.ndarray]:
    """Per replicate (rows): the threshold giving each rate and the rate of each recorded threshold. Non-targets
    come sorted descending, targets ascending; ``accepted`` / ``rejected`` are the recorded thresholds' error
    counts (prefix lengths). A replicate drawing no non-target (or target) trial gives NaN."""
    rng = np.random.default_rng(seed)
    out = {"far_thresholds": np.full((resamples, len(far_rates)), np.nan),
           "far_rates": np.full((resamples, len(accepted)), np.nan),
           "frr_thresholds": np.full((resamples, len(frr_rates)), np.nan),
           "frr_rates": np.full((resamples, len(rejected)), np.nan)}
    above_all = np.nextafter(non_scores[0], np.inf) if len(non_scores) else np.nan
    # only the top of the non-targets sets FAR thresholds: cumulate weights there, and the total over speaker
    # pairs (all of them only in the rare replicate whose top holds too little weight)
    pairs, pair_trials = np.unique(non_enroll * count + non_test, return_counts=True)
    deepest = max(math.ceil(far_rates.max(initial=0) * len(non_scores)), int(accepted.max(initial=0)))
    head = min(len(non_scores), 3 * deepest + 1000)
    for r in tqdm(range(resamples), desc="speaker bootstrap", unit="replicate", leave=False,
                  disable=resamples * (head + len(tar_scores)) < 5e7):
        drawn = rng.multinomial(count, np.full(count, 1.0 / count)).astype(np.float64)
        total = float(np.dot(drawn[pairs // count] * drawn[pairs % count], pair_trials))
        weights = np.cumsum(drawn[non_enroll[:head]] * drawn[non_test[:head]])
        if head and weights[-1] < far_rates.max(initial=0) * total * (1 + 1e-9) and head < len(non_scores):
            weights = np.cumsum(drawn[non_enroll] * drawn[non_test])
        if total > 0:
            k = np.searchsorted(weights, far_rates * total * (1 + 1e-12), side="right")  # accepted from the top
            out["far_thresholds"][r] = np.where(k > 0, non_scores[np.maximum(k - 1, 0)], above_all)
            out["far_rates"][r] = np.where(accepted > 0, weights[np.maximum(accepted - 1, 0)], 0.0) / total
        weights = np.cumsum(drawn[tar_speaker])
        if len(weights) and weights[-1] > 0:
            total = weights[-1]
            k = np.searchsorted(weights, frr_rates * total * (1 + 1e-12), side="right")  # rejected from the bottom
            out["frr_thresholds"][r] = tar_scores[np.minimum(k, len(tar_scores) - 1)]
            out["frr_rates"][r] = np.where(rejected > 0, weights[np.maximum(rejected - 1, 0)], 0.0) / total
    return out


def doubt(summary: OperatingPointSummary, confidence: OperatingPointConfidence | None, kind: str,
          rate: float) -> str | None:
    """One line saying why the operating point ``kind=rate`` is not sure and what to do, or None when it is:
    fewer than :data:`MIN_ERRORS` dev errors expected at that rate, or the interval of the rate on new speakers
    reaching below ``rate / WIDE`` or above ``rate * WIDE`` (rates between recorded ones: interpolated)."""
    errors, trials = ("false accepts", "non-targets") if kind == "far" else ("false rejects", "targets")
    count = (summary.nontargets if kind == "far" else summary.targets).count
    expected = rate * count
    if expected < MIN_ERRORS:
        return (f"{kind}={rate:g} rests on {expected:.3g} expected dev {errors} ({count} dev {trials}; fewer than "
                f"{MIN_ERRORS} cannot resolve this rate): {ADVICE}")
    if confidence is None:
        return None
    interval = confidence.rate_interval(kind, rate)
    if interval is None or (interval[0] >= rate / WIDE and interval[1] <= rate * WIDE):
        return None
    point = confidence.point(kind, rate)
    behind = "" if point is None else (f"its {point.errors} dev {errors} come from {point.error_pairs} speaker "
                                       f"pair(s); " if kind == "far" else
                                       f"its {point.errors} dev {errors} come from {point.error_speakers} speaker(s); ")
    return (f"{kind}={rate:g} is not sure: the dev trials have {confidence.speakers} speakers "
            f"({confidence.speaker_pairs} non-target speaker pairs); {behind}on other speakers the realised "
            f"{kind.upper()} may be {100 * interval[0]:.2g}-{100 * interval[1]:.2g} % "
            f"({100 * confidence.confidence:g} % speaker bootstrap): {ADVICE}")


def far_interval(nontarget_scores: np.ndarray, enroll_speakers: Sequence[str], test_speakers: Sequence[str],
                 thresholds: Sequence[float], resamples: int = RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> list[tuple[float, float, float]]:
    """``(far, low, high)`` per threshold: the false-accept rate of non-target ``scores`` (N,) (speakers of both
    sides (N,)) at it, and its speaker-bootstrap percentile interval (the resampling of the module doc).

    >>> far_interval(np.array([0.9, 0.1, 0.2, 0.3]), ["a", "a", "b", "c"], ["b", "c", "c", "a"], [0.5])[0][0]
    0.25
    """
    names, codes = np.unique(np.concatenate([np.asarray(enroll_speakers, dtype=str),
                                             np.asarray(test_speakers, dtype=str)]), return_inverse=True)
    scores = np.asarray(nontarget_scores, dtype=np.float64)
    order = np.argsort(-scores, kind="stable")
    enroll, test = codes[:len(scores)][order], codes[len(scores):][order]
    accepted = np.array([int(np.count_nonzero(scores >= t)) for t in thresholds], dtype=np.int64)
    none = np.zeros(0)
    draws = _bootstrap(scores[order], enroll, test, none, none.astype(np.int64), len(names), none, none, accepted,
                       np.zeros(0, np.int64), resamples, seed)["far_rates"]
    tails = [(1 - confidence) / 2, (1 + confidence) / 2]
    return [(float(count / len(scores)), *(float(v) for v in np.nanquantile(draws[:, i], tails)))
            for i, count in enumerate(accepted)]
