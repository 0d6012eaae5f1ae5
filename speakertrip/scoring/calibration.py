"""Calibration of scores to log-likelihood ratios (natural log), plain or duration-aware.

- :class:`Calibration`: ``llr = scale · score + offset``.
- :class:`QualityCalibration`: the scale and the offset move with ``q``, the log-duration (seconds)
  of the shorter side of the trial, clipped to the range seen in training:
  ``llr = (scale + scale_per_log_second · q) · score + offset + offset_per_log_second · q``.
  This is a quality measure function in the sense of WeSpeaker and of Mandasari et al. (2013):
  short test audio gives less reliable scores, whose evidence the calibration discounts.

Both are trained by prior-weighted logistic regression (no regularisation) on labelled dev
trials, as BOSARIS and the NIST SRE systems do: targets and non-targets are weighted so that
their effective prior is ``prior``, and ``logit(prior)`` is taken off the fitted log-odds, so the
output is a log-likelihood ratio whatever the prior or the class balance of the dev set. The fit
is Newton's method on the convex cross-entropy (a handful of parameters, exact to ~1e-10).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from speakertrip.errors import ConfigError, FormatError
from speakertrip.scoring.operating_points import check_trials


@dataclass(frozen=True)
class Calibration:
    """``llr = scale * score + offset`` (natural-log likelihood ratios)."""

    scale: float
    offset: float

    def __call__(self, scores: np.ndarray, enroll_seconds: Any = None, test_seconds: Any = None) -> np.ndarray:
        """Log-likelihood ratios (N,) float64 of ``scores`` (N,); durations are accepted and ignored."""
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> Calibration:
        return cls(**_numbers(cls, data, source))

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FormatError("no such calibration file", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FormatError(f"not a JSON calibration file ({error})", path) from None
        return cls.from_dict(data, path)


@dataclass(frozen=True)
class QualityCalibration:
    """Duration-aware calibration; ``q = clip(log(min(enroll_seconds, test_seconds)), min_log_seconds,
    max_log_seconds)``, then ``llr = (scale + scale_per_log_second·q)·score + offset + offset_per_log_second·q``."""

    scale: float
    offset: float
    scale_per_log_second: float
    offset_per_log_second: float
    min_log_seconds: float
    max_log_seconds: float

    def quality(self, enroll_seconds: Any, test_seconds: Any) -> np.ndarray:
        """``q`` (N,) of the trials: clipped log-seconds of the shorter side."""
        shorter = np.minimum(np.asarray(enroll_seconds, dtype=np.float64), np.asarray(test_seconds, dtype=np.float64))
        if not (np.isfinite(shorter).all() and (shorter > 0).all()):
            raise ConfigError("durations must be positive finite seconds")
        return np.clip(np.log(shorter), self.min_log_seconds, self.max_log_seconds)

    def __call__(self, scores: np.ndarray, enroll_seconds: Any, test_seconds: Any) -> np.ndarray:
        """Log-likelihood ratios (N,) float64 of ``scores`` (N,) with the seconds of speech on each side (N,) or scalars."""
        q = self.quality(enroll_seconds, test_seconds)
        scores = np.asarray(scores, dtype=np.float64)
        return (self.scale + self.scale_per_log_second * q) * scores + self.offset + self.offset_per_log_second * q

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> QualityCalibration:
        return cls(**_numbers(cls, data, source))


def _numbers(cls: type, data: Any, source: object) -> dict[str, float]:
    names = [item.name for item in fields(cls)]
    if not isinstance(data, Mapping) or set(data) != set(names) or not all(
            isinstance(data[name], (int, float)) and not isinstance(data[name], bool) and math.isfinite(data[name])
            for name in names):
        raise FormatError("expected {" + ", ".join(f'"{name}": number' for name in names) + "}", source)
    return {name: float(data[name]) for name in names}


def fit_logistic(features: np.ndarray, labels: np.ndarray, prior: float = 0.5,
                 max_iter: int = 100) -> tuple[np.ndarray, float]:
    """Prior-weighted logistic regression without regularisation: ``(weights (F,), bias)`` of the log-odds.

    Minimises ``prior · mean_targets log(1+e^-z) + (1-prior) · mean_nontargets log(1+e^z)`` with
    ``z = features @ weights + bias``; ``features`` (N, F), ``labels`` (N,) bool. Newton's method
    with step halving on standardised features. Raises ConfigError when the classes are separable
    (no finite minimum: calibration needs overlapping target and non-target scores).
    """
    x = np.asarray(features, dtype=np.float64)
    mean, spread = x.mean(axis=0), x.std(axis=0)
    spread[spread == 0] = 1.0
    design = np.column_stack([(x - mean) / spread, np.ones(len(x))])
    sign = np.where(labels, 1.0, -1.0)
    n_targets = np.count_nonzero(labels)
    weight = np.where(labels, prior / n_targets, (1 - prior) / (len(labels) - n_targets))

    def loss(w: np.ndarray) -> float:
        return float(weight @ np.logaddexp(0.0, -sign * (design @ w)))

    w = np.zeros(design.shape[1])
    current = loss(w)
    for _ in range(max_iter):
        z = design @ w
        p_wrong = 1.0 / (1.0 + np.exp(np.clip(sign * z, -700, 700)))   # σ(-y z)
        gradient = -design.T @ (weight * sign * p_wrong)
        hessian = (design * (weight * p_wrong * (1 - p_wrong))[:, None]).T @ design
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        rate = 1.0
        while rate > 1e-10:
            trial = w - rate * step
            new = loss(trial)
            if new <= current:
                break
            rate /= 2
        w, decrease, current = trial, current - new, new
        if np.abs(rate * step).max() < 1e-10 or decrease < 1e-15 * max(current, 1e-300):
            break
    if current < 1e-9 or np.abs(w).max() > 1e4:
        raise ConfigError("the dev targets and non-targets are separable, so no calibration exists (the "
                          "LLRs would be infinite); calibrate on a harder or larger dev trial list")
    weights = w[:-1] / spread
    return weights, float(w[-1] - weights @ mean)


def _prior_logit(prior: float) -> float:
    if not 0.0 < prior < 1.0:
        raise ConfigError(f"prior must be between 0 and 1, got {prior}")
    return math.log(prior / (1 - prior))


def train_calibration(scores: np.ndarray, labels: np.ndarray, prior: float = 0.5,
                      source: str | os.PathLike | None = None) -> Calibration:
    """Fit ``llr = scale · score + offset`` on dev ``scores`` (N,) with ``labels`` (N,), 1 target / 0 non-target.

    Minimises the prior-weighted cross-entropy (Cllr at ``prior``).

    >>> rng = np.random.default_rng(0)
    >>> labels = np.repeat([1, 0], 20000)
    >>> calibration = train_calibration(rng.normal(2 * labels, 1.0), labels)
    >>> round(calibration.scale, 1), round(calibration.offset, 1)
    (2.0, -2.0)
    """
    return fit_calibration(*check_trials(scores, labels, source), prior)


def fit_calibration(scores: np.ndarray, labels: np.ndarray, prior: float = 0.5) -> Calibration:
    """:func:`train_calibration` on trials already checked by :func:`~speakertrip.scoring.check_trials`."""
    logit = _prior_logit(prior)
    weights, bias = fit_logistic(scores[:, None], labels, prior)
    return Calibration(float(weights[0]), bias - logit)


def train_quality_calibration(scores: np.ndarray, labels: np.ndarray, enroll_seconds: Any, test_seconds: Any,
                              prior: float = 0.5, source: str | os.PathLike | None = None) -> QualityCalibration:
    """Fit a :class:`QualityCalibration` on dev trials: ``scores``, ``labels`` and the seconds of speech
    of each side (N,).

    >>> rng = np.random.default_rng(0)
    >>> labels, seconds = np.repeat([1, 0], 20000), rng.choice([1.0, 8.0], 40000)
    >>> scores = rng.normal(labels * np.log2(seconds + 1), 1.0)   # longer audio, better separation
    >>> calibration = train_quality_calibration(scores, labels, seconds, seconds)
    >>> calibration.scale_per_log_second > 0
    True
    """
    return fit_quality_calibration(*check_trials(scores, labels, source), enroll_seconds, test_seconds, prior)


def fit_quality_calibration(scores: np.ndarray, labels: np.ndarray, enroll_seconds: Any, test_seconds: Any,
                            prior: float = 0.5) -> QualityCalibration:
    """:func:`train_quality_calibration` on trials already checked by :func:`~speakertrip.scoring.check_trials`."""
    logit = _prior_logit(prior)
    enroll_seconds, test_seconds = (np.broadcast_to(np.asarray(s, dtype=np.float64), scores.shape)
                                    for s in (enroll_seconds, test_seconds))
    shorter = np.minimum(enroll_seconds, test_seconds)
    if not (np.isfinite(shorter).all() and (shorter > 0).all()):
        raise ConfigError("durations must be positive finite seconds")
    q = np.log(shorter)
    weights, bias = fit_logistic(np.column_stack([scores, scores * q, q]), labels, prior)
    return QualityCalibration(float(weights[0]), bias - logit, float(weights[1]), float(weights[2]),
                              float(q.min()), float(q.max()))
