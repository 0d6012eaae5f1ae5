"""Linear calibration of scores to log-likelihood ratios: ``llr = scale · score + offset``.

Trained by prior-weighted logistic regression (scikit-learn, no regularisation) on a labelled dev
score file, as BOSARIS and the NIST SRE systems do: targets and non-targets are weighted so that
their effective prior is ``prior``, and ``logit(prior)`` is taken off the fitted log-odds, so the
output is a log-likelihood ratio whatever the prior or the class balance of the dev set. Saved as
JSON holding the two numbers.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from speakertrip.errors import FormatError
from speakertrip.scoring.operating_points import check_trials


@dataclass(frozen=True)
class Calibration:
    """``llr = scale * score + offset`` (natural-log likelihood ratios)."""

    scale: float
    offset: float

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Log-likelihood ratios (N,) float64 of ``scores`` (N,)."""
        return self.scale * np.asarray(scores, dtype=np.float64) + self.offset

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Calibration:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FormatError("no such calibration file", path) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise FormatError(f"not a JSON calibration file ({error})", path) from None
        if not isinstance(data, dict) or set(data) != {"scale", "offset"} or not all(
                isinstance(data[name], (int, float)) and math.isfinite(data[name]) for name in data):
            raise FormatError('expected {"scale": number, "offset": number}', path)
        return cls(float(data["scale"]), float(data["offset"]))


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
    from sklearn.linear_model import LogisticRegression

    if not 0.0 < prior < 1.0:
        raise ValueError(f"prior must be between 0 and 1, got {prior}")
    scores, labels = check_trials(scores, labels, source)
    n_targets = np.count_nonzero(labels)
    weights = np.where(labels, prior / n_targets, (1 - prior) / (len(labels) - n_targets)) * len(labels)
    model = LogisticRegression(C=np.inf, tol=1e-10, max_iter=1000)
    model.fit(scores.reshape(-1, 1).astype(np.float64), labels, sample_weight=weights)
    logit_prior = math.log(prior / (1 - prior))
    return Calibration(float(model.coef_[0, 0]), float(model.intercept_[0]) - logit_prior)
