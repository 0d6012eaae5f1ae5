"""Operating points adapted without labels to the domain of the enrolled speakers.

A model's dev trials fix what a cosine means: ``far=0.01`` is the threshold above which 1 % of the dev
non-targets lie. Other speakers, languages or channels move every score. A model trained on synthetic
speech puts real people closer together, and its ``far=0.01`` falsely accepts many times more of them.

An enrolment store holds in-domain data whose only labels are its names. Every enrolled speaker scored
against the enrolment utterances of every other enrolled speaker, or against the cohort (utterances of people
who are not enrolled, :meth:`~speakertrip.verification.verifier.Verifier.enroll_cohort`), is an impostor
trial. It is scored exactly as ``verify`` scores one (same enrolment, same ``scoring``). :func:`impostor_scores`
collects them.

:class:`ScoreAdaptation` maps in-domain scores onto the dev scale by quantile matching of the two impostor
distributions, which is histogram equalisation of the non-targets. In-domain impostor quantiles are matched to
the dev non-target quantiles at the lower quartile, the median and at upper-tail levels, as deep as at least :data:`MIN_ABOVE`
in-domain impostor scores lie above them. Between anchors the map is linear; beyond the last anchors it
extrapolates the affine map of the last two. A threshold read from the dev summary for ``far=`` (or ``frr=``,
or the EER) is mapped back into the domain, so ``far=0.01`` means 1 % of in-domain impostors where they are
resolved. An LLR is the dev calibration applied to the mapped score. The map is monotone, so scores keep
their order and verify decisions stay ``score >= threshold`` on raw cosines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from speakertrip.errors import ConfigError
from speakertrip.evaluation.score_summary import ScoreSummary
from speakertrip.scoring.enrolment import speaker_scores

MIN_ABOVE = 10  # in-domain impostor scores above the deepest anchor: fewer do not resolve a quantile
MAX_SPEAKERS = 2000  # enrolled speakers used (a random subset of larger stores)
MAX_TESTS = 4000  # impostor test utterances used (enrolment utterances of others and cohort, a random subset)


@dataclass(frozen=True)
class ImpostorScores:
    """In-domain impostor scores (M,), and the enrolled speakers and cohort utterances they come from."""

    scores: np.ndarray
    speakers: int
    cohort: int


def impostor_scores(store: Any, scoring: str = "centroid", seed: int = 0) -> ImpostorScores:
    """Every enrolled speaker (at most :data:`MAX_SPEAKERS`, drawn at random) scored with ``scoring`` against the
    enrolment utterances of the other drawn speakers and the cohort (together at most :data:`MAX_TESTS`
    utterances, drawn at random). ``store``: an open enrolment store. A ConfigError when it holds fewer than two
    speakers and no cohort."""
    rng = np.random.default_rng(seed)
    names = [info.name for info in store.speakers()]
    cohort = store.cohort()
    if len(names) < 2 and len(cohort) == 0 or not names:
        raise ConfigError(f"adapt=True needs in-domain impostor scores: at least two enrolled speakers or one "
                          f"speaker and a cohort (Verifier.enroll_cohort); the store has {len(names)} speaker(s) "
                          f"and {len(cohort)} cohort utterance(s)")
    if len(names) > MAX_SPEAKERS:
        names = sorted(rng.choice(names, MAX_SPEAKERS, replace=False).tolist())
    matrices = [store.utterance_embeddings(name)[1] for name in names]
    owner = np.repeat(np.arange(len(names)), [len(matrix) for matrix in matrices])
    tests = np.concatenate([*matrices, cohort]) if len(cohort) else np.concatenate(matrices)
    test_owner = np.concatenate([owner, np.full(len(cohort), -1)])
    if len(tests) > MAX_TESTS:
        keep = np.sort(rng.choice(len(tests), MAX_TESTS, replace=False))
        tests, test_owner = tests[keep], test_owner[keep]
    scores = speaker_scores(np.concatenate(matrices), owner, tests, scoring, len(names))  # (T, S)
    impostor = test_owner[:, None] != np.arange(len(names))[None, :]
    return ImpostorScores(scores[impostor].astype(np.float64), len(names), len(cohort))


@dataclass(frozen=True)
class ScoreAdaptation:
    """A monotone piecewise-linear map from in-domain scores to the dev scale: ``domain`` (K,) anchor scores in
    the domain, ``dev`` (K,) the dev scores they map to (both increasing), and the impostor scores it rests on.

    >>> rng = np.random.default_rng(0)
    >>> dev = ScoreSummary.from_scores(rng.normal(0.1, 0.1, 100_000))
    >>> adapted = ScoreAdaptation.fit(rng.normal(0.5, 0.05, 20_000), dev)   # the same shape, moved and narrowed
    >>> round(float(adapted.to_dev(np.array([0.6]))[0]), 2), round(adapted.to_domain(0.3), 2)
    (0.3, 0.6)
    """

    domain: np.ndarray
    dev: np.ndarray
    impostors: int

    @classmethod
    def fit(cls, impostors: np.ndarray, dev_nontargets: ScoreSummary, min_above: int = MIN_ABOVE) -> ScoreAdaptation:
        """Match the quantiles of in-domain ``impostors`` (M,) to the dev non-targets' (see module doc)."""
        ordered = np.sort(np.asarray(impostors, dtype=np.float64))
        count = len(ordered)
        if count < 2 * min_above:
            raise ConfigError(f"adapt=True needs at least {2 * min_above} in-domain impostor scores, got {count}: "
                              "enrol more speakers or add a cohort (Verifier.enroll_cohort)")
        # anchors: the lower quartile and the median, then upper-tail levels whose share above halves each time,
        # down to min_above scores
        above = [0.75 * count, count / 2]
        while above[-1] / 2 >= min_above:
            above.append(above[-1] / 2)
        levels = 1 - np.array(above) / count  # fraction of impostors below the anchor
        domain = np.interp(levels * (count - 1), np.arange(count), ordered)
        dev = np.array([dev_nontargets.at(level * (dev_nontargets.count - 1)) for level in levels])
        keep = np.r_[True, (np.diff(domain) > 0) & (np.diff(dev) > 0)]  # strictly increasing anchors only
        return cls(domain[keep], dev[keep], count)

    def to_dev(self, scores: np.ndarray) -> np.ndarray:
        """In-domain scores (N,) on the dev scale."""
        return _piecewise(np.asarray(scores, dtype=np.float64), self.domain, self.dev)

    def to_domain(self, threshold: float) -> float:
        """A dev-scale threshold in the domain (the inverse map)."""
        return float(_piecewise(np.array([threshold], dtype=np.float64), self.dev, self.domain)[0])


def _piecewise(values: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Linear interpolation through (xs, ys), continued beyond both ends by the end segments (one anchor:
    a shift)."""
    if len(xs) == 1:
        return values + (ys[0] - xs[0])
    result = np.interp(values, xs, ys)
    low, high = values < xs[0], values > xs[-1]
    result[low] = ys[0] + (values[low] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    result[high] = ys[-1] + (values[high] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return result
