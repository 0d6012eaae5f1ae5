"""All verification metrics of one trial list in one object, its JSON shape and its printed table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from speakertrip.scoring.bootstrap import bootstrap_intervals
from speakertrip.scoring.cllr import cllr, min_cllr_from_groups, rocch_eer_from_groups
from speakertrip.scoring.metrics import act_dcf, bayes_threshold, eer_from_points, min_dcf_from_points
from speakertrip.scoring.operating_points import OperatingPoints, ScoreGroups, check_trials
from speakertrip.tables import format_table


def p_key(p_target: float) -> str:
    """The JSON key of a P_target: ``0.01 -> "0.01"``."""
    return f"{p_target:g}"


@dataclass(frozen=True)
class VerificationMetrics:
    """Metrics of one trial list; rates are fractions, thresholds are on the score scale given.

    ``min_dcf``, ``min_dcf_threshold`` (and ``act_dcf``) map each P_target to a value. ``act_dcf``
    and ``cllr`` are present for calibrated LLR scores or a fixed threshold; ``intervals`` holds
    bootstrap confidence intervals when asked for.
    """

    trials: int
    targets: int
    eer: float
    eer_threshold: float
    min_dcf: dict[float, float]
    min_dcf_threshold: dict[float, float]
    rocch_eer: float
    min_cllr: float
    c_miss: float = 1.0
    c_fa: float = 1.0
    act_dcf: dict[float, float] | None = None
    act_dcf_threshold: dict[float, float] | None = None
    cllr: float | None = None
    intervals: dict | None = None
    confidence: float | None = None

    @property
    def nontargets(self) -> int:
        return self.trials - self.targets

    def to_dict(self) -> dict:
        """The JSON object: ``{"trials": N, "targets": N, "eer": x, "eer_threshold": x,
        "min_dcf": {"0.01": x, "0.05": x}, ...}``, with P_targets as string keys."""
        out = {"trials": self.trials, "targets": self.targets, "nontargets": self.nontargets,
               "eer": self.eer, "eer_threshold": self.eer_threshold,
               "min_dcf": {p_key(p): v for p, v in self.min_dcf.items()},
               "min_dcf_threshold": {p_key(p): v for p, v in self.min_dcf_threshold.items()},
               "rocch_eer": self.rocch_eer, "min_cllr": self.min_cllr, "c_miss": self.c_miss, "c_fa": self.c_fa}
        if self.act_dcf is not None:
            out["act_dcf"] = {p_key(p): v for p, v in self.act_dcf.items()}
            out["act_dcf_threshold"] = {p_key(p): v for p, v in self.act_dcf_threshold.items()}
        if self.cllr is not None:
            out["cllr"] = self.cllr
        if self.intervals is not None:
            out["confidence_intervals"] = {
                "confidence": self.confidence, "eer": list(self.intervals["eer"]),
                "min_dcf": {p_key(p): list(v) for p, v in self.intervals["min_dcf"].items()}}
        return out

    def table(self) -> str:
        """A short aligned table for people: trials, targets, EER (%), minDCF per P_target, ..."""
        return metrics_table({"": self})


def _with_interval(value: float, bounds: tuple[float, float] | None, style: str = "{:.4f}",
                   scale: float = 1.0) -> str:
    text = style.format(value * scale)
    return text if bounds is None else f"{text} [{style.format(bounds[0] * scale)}, {style.format(bounds[1] * scale)}]"


def _columns(metrics: VerificationMetrics) -> list[tuple[str, str]]:
    intervals = metrics.intervals or {}
    columns = [("trials", str(metrics.trials)), ("targets", str(metrics.targets)),
               ("EER (%)", _with_interval(metrics.eer, intervals.get("eer"), "{:.3f}", 100.0))]
    for p, value in metrics.min_dcf.items():
        columns.append((f"minDCF@{p_key(p)}", _with_interval(value, intervals.get("min_dcf", {}).get(p))))
    for p, value in (metrics.act_dcf or {}).items():
        columns.append((f"actDCF@{p_key(p)}", f"{value:.4f}"))
    if metrics.cllr is not None:
        columns.append(("Cllr", f"{metrics.cllr:.4f}"))
    return columns + [("minCllr", f"{metrics.min_cllr:.4f}")]


def metrics_table(systems: Mapping[str, VerificationMetrics]) -> str:
    """An aligned table with one row per named system (a single nameless system gets no name column).

    Consecutive systems with the same columns share a header; others start a new one.
    """
    named = any(systems)
    tables: list[tuple[list[str], list[list[str]]]] = []
    for name, metrics in systems.items():
        columns = ([("system", name)] if named else []) + _columns(metrics)
        titles = [title for title, _ in columns]
        if not tables or tables[-1][0] != titles:
            tables.append((titles, []))
        tables[-1][1].append([value for _, value in columns])
    return "\n".join(format_table(titles, rows) for titles, rows in tables)


def compute_metrics(scores: np.ndarray, labels: np.ndarray, p_targets: Sequence[float] = (0.01, 0.05),
                    c_miss: float = 1.0, c_fa: float = 1.0, llr: bool = False, threshold: float | None = None,
                    bootstrap: int = 0, confidence: float = 0.95, seed: int = 0,
                    source: str | None = None) -> VerificationMetrics:
    """Every metric of ``scores`` (N,) with ``labels`` (N,), 1 target / 0 non-target, from one sort.

    Parameters
    ----------
    p_targets : the target priors of the DCFs.
    llr : the scores are calibrated log-likelihood ratios: adds Cllr and actDCF at the Bayes thresholds.
    threshold : adds actDCF of the decisions ``score >= threshold`` (overrides the Bayes thresholds).
    bootstrap : number of bootstrap replicates for confidence intervals of EER and minDCF (0: none).
    source : a file name for error messages.

    >>> m = compute_metrics(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 1, 0, 1]))
    >>> m.eer, m.to_dict()["min_dcf"]
    (0.5, {'0.01': 0.5, '0.05': 0.5})
    """
    scores, labels = check_trials(scores, labels, source)
    groups = ScoreGroups.from_scores(scores, labels)
    points = OperatingPoints.from_groups(groups)
    eer, eer_threshold = eer_from_points(points)
    min_dcfs = {p: min_dcf_from_points(points, p, c_miss, c_fa) for p in p_targets}
    actual = actual_dcfs = None
    if llr or threshold is not None:
        actual = {p: threshold if threshold is not None else bayes_threshold(p, c_miss, c_fa) for p in p_targets}
        actual_dcfs = {p: act_dcf(scores, labels, t, p, c_miss, c_fa) for p, t in actual.items()}
    intervals = bootstrap_intervals(groups, p_targets, c_miss, c_fa, bootstrap, confidence, seed) if bootstrap else None
    return VerificationMetrics(
        trials=len(scores), targets=points.n_targets, eer=eer, eer_threshold=eer_threshold,
        min_dcf={p: value for p, (value, _) in min_dcfs.items()},
        min_dcf_threshold={p: where for p, (_, where) in min_dcfs.items()},
        rocch_eer=rocch_eer_from_groups(groups), min_cllr=min_cllr_from_groups(groups), c_miss=c_miss, c_fa=c_fa,
        act_dcf=actual_dcfs,
        act_dcf_threshold=actual, cllr=cllr(scores, labels) if llr else None,
        intervals=intervals, confidence=confidence if bootstrap else None)
