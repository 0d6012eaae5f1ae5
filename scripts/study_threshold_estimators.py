"""Ways to read a far= threshold from a few calibration speakers, compared on the speakers they never saw.

Each draw takes ``--speakers`` speakers of a labelled VoxCeleb-layout folder as the calibration set (every
pair of their utterances from different speakers, as ``calibrate --data`` generates for a folder of this size)
and realises each estimator's threshold on every such pair of the other speakers. Printed per estimator and
rate: the median realised FAR, its 10 - 90 % range over draws, the share of draws within 2x of the asked rate
and the spread (standard deviation) of the log realised rate. The estimators:

- ``empirical``: the dev summary's threshold, what ``calibrate`` records (:class:`OperatingPointSummary`);
- ``normal``, ``fisher-z``: a normal fit to the impostor scores, or to their arctanh;
- ``gpd-80``, ``gpd-90``, ``exp-90``: generalised-Pareto or exponential fits to the scores above the 80th / 90th
  percentile;
- ``pair-mixture``: one normal per speaker pair (its mean and spread), the mixture's tail;
- ``jackknife``, ``bagged``: the median of the empirical thresholds leaving out one speaker, or over 100 speaker
  bootstrap resamples;
- ``dev-tail``: the model's recorded dev non-target tail, moved by the quantile map at the 90th and 97th
  percentiles (only when the model has a calibration).

Run: ``PYTHONPATH=. python scripts/study_threshold_estimators.py --model M --data DIR [--speakers 10] [--draws 150]``
(a few minutes on 2 CPU cores; the folder is embedded once).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

import numpy as np
from scipy import stats

import speakertrip as st
from speakertrip.data.items import read_items
from speakertrip.evaluation.dev_calibration import DevCalibration
from speakertrip.evaluation.score_summary import OperatingPointSummary, ScoreSummary

RATES = (0.01, 0.001)
Estimator = Callable[[np.ndarray, np.ndarray, np.ndarray, float], float]


def empirical(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float) -> float:
    summary = OperatingPointSummary(ScoreSummary.from_scores(np.array([1.0])), ScoreSummary.from_scores(scores))
    return summary.threshold_for_far(far)


def pair_mixture(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float) -> float:
    """The threshold whose false-accept rate under one normal per speaker pair (weighted by its trials) is ``far``."""
    count = max(first.max(), second.max()) + 1
    _, pair, trials = np.unique(np.minimum(first, second) * count + np.maximum(first, second), return_inverse=True,
                                return_counts=True)
    means = np.bincount(pair, scores) / trials
    spreads = np.sqrt(np.bincount(pair, (scores - means[pair]) ** 2) / trials) + 1e-6
    grid = np.linspace(np.median(scores), scores.max() + 0.3, 4000)
    rates = (trials * stats.norm.sf((grid[:, None] - means) / spreads)).sum(axis=1) / trials.sum()
    return float(grid[np.argmax(rates <= far)])


def tail_fit(base: float, kind: str) -> Estimator:
    def estimate(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float) -> float:
        start = np.quantile(scores, base)
        excess = scores[scores > start] - start
        if kind == "exp":
            return float(start + excess.mean() * np.log((1 - base) / far))
        shape, _, scale = stats.genpareto.fit(excess, floc=0)
        return float(start + stats.genpareto.isf(far / (1 - base), shape, 0, scale))
    return estimate


def normal(transform: bool) -> Estimator:
    def estimate(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float) -> float:
        values = np.arctanh(np.clip(scores, -0.999999, 0.999999)) if transform else scores
        threshold = values.mean() + stats.norm.isf(far) * values.std()
        return float(np.tanh(threshold) if transform else threshold)
    return estimate


def jackknife(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float) -> float:
    return float(np.median([empirical(scores[(first != s) & (second != s)], first, second, far)
                            for s in np.unique(np.r_[first, second])]))


def bagged(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float, resamples: int = 100) -> float:
    rng = np.random.default_rng(0)
    speakers = np.unique(np.r_[first, second])
    order = np.argsort(-scores)
    thresholds = []
    for _ in range(resamples):
        copies = np.zeros(max(first.max(), second.max()) + 1)
        copies[speakers] = np.bincount(rng.integers(len(speakers), size=len(speakers)), minlength=len(speakers))
        weights = np.cumsum((copies[first] * copies[second])[order])
        thresholds.append(scores[order][min(np.searchsorted(weights, far * weights[-1], side="right"), len(scores) - 1)])
    return float(np.median(thresholds))


def dev_tail(dev: ScoreSummary) -> Estimator:
    def estimate(scores: np.ndarray, first: np.ndarray, second: np.ndarray, far: float) -> float:
        low, high = np.quantile(scores, [0.9, 0.97])
        dev_low, dev_high, dev_far = (dev.at(level * (dev.count - 1)) for level in (0.9, 0.97, 1 - far))
        return float(high + (dev_far - dev_high) * (high - low) / (dev_high - dev_low))
    return estimate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True, help="labelled VoxCeleb-layout folder")
    parser.add_argument("--speakers", type=int, default=10, help="calibration speakers per draw")
    parser.add_argument("--draws", type=int, default=150)
    args = parser.parse_args()
    model = st.load_model(args.model)
    found = read_items(args.data)
    names, owner = np.unique(np.asarray(found.speakers), return_inverse=True)
    embeddings = model.embed_batch(found.items).astype(np.float64)
    estimators: dict[str, Estimator] = {
        "empirical": empirical, "normal": normal(False), "fisher-z": normal(True), "gpd-80": tail_fit(0.8, "gpd"),
        "gpd-90": tail_fit(0.9, "gpd"), "exp-90": tail_fit(0.9, "exp"), "pair-mixture": pair_mixture,
        "jackknife": jackknife, "bagged": bagged}
    recorded = DevCalibration.of_model(model.evaluation)
    if recorded is not None:
        estimators["dev-tail"] = dev_tail(recorded.scores.nontargets)

    def pairs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        first, second = np.triu_indices(len(rows), 1)
        first, second = rows[first], rows[second]
        keep = owner[first] != owner[second]
        first, second = first[keep], second[keep]
        return np.einsum("nd,nd->n", embeddings[first], embeddings[second]), owner[first], owner[second]

    rng = np.random.default_rng(1)
    realised = {(name, far): [] for name in estimators for far in RATES}
    for _ in range(args.draws):
        chosen = np.isin(owner, rng.choice(len(names), args.speakers, replace=False))
        scores, first, second = pairs(np.flatnonzero(chosen))
        others = np.sort(pairs(np.flatnonzero(~chosen))[0])
        for (name, far), values in realised.items():
            threshold = estimators[name](scores, first, second, far)
            values.append(1 - np.searchsorted(others, threshold, side="left") / len(others))
    print(f"{args.draws} draws of {args.speakers} calibration speakers of {len(names)} in {args.data}; realised FAR "
          f"on every pair of the others")
    print(f"{'estimator':<13} {'asked':>6} {'median':>8} {'10 - 90 % of draws':>20} {'within 2x':>9} {'sd(log)':>8}")
    for (name, far), values in realised.items():
        values = np.asarray(values)
        share = np.mean((values >= far / 2) & (values <= 2 * far))
        print(f"{name:<13} {far:>6g} {100 * np.median(values):>7.3f}% "
              f"{f'{100 * np.quantile(values, 0.1):.3f} .. {100 * np.quantile(values, 0.9):.3f} %':>20} "
              f"{100 * share:>8.0f}% {np.std(np.log(np.maximum(values, 1e-5))):>8.2f}")


if __name__ == "__main__":
    main()
