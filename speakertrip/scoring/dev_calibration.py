"""What a model artifact records about the meaning of its scores: the calibration to LLRs (plain and,
with durations, duration-aware) and the operating-point summary of the dev trials it was fitted on.

Stored as plain data under ``evaluation["calibration"]`` of the artifact's ``config.yaml``
(``evaluation`` is not part of the model's identity, so calibrating a model never orphans its
enrolment stores)::

    calibration:
      trials: 65024            # dev trials it was fitted on
      prior: 0.5
      eer: 0.031               # dev EER and its threshold (cosine)
      eer_threshold: 0.61
      linear: {scale: 9.1, offset: -5.2}
      quality: {scale: ..., offset: ..., scale_per_log_second: ..., ...}   # when durations were known
      scores: {targets: {count, ranks, scores}, nontargets: {count, ranks, scores}}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from speakertrip.errors import FormatError
from speakertrip.scoring.calibration import (Calibration, QualityCalibration, train_calibration,
                                             train_quality_calibration)
from speakertrip.scoring.metrics import eer_from_points
from speakertrip.scoring.operating_points import OperatingPoints, ScoreGroups, check_trials
from speakertrip.scoring.score_summary import OperatingPointSummary

KEY = "calibration"
FIELDS = {"trials", "prior", "eer", "eer_threshold", "linear", "quality", "scores"}


@dataclass(frozen=True)
class DevCalibration:
    """Calibrations and dev score summary of a model (see module doc)."""

    linear: Calibration
    quality: QualityCalibration | None
    scores: OperatingPointSummary
    trials: int
    prior: float
    eer: float
    eer_threshold: float

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray, enroll_seconds: Any = None, test_seconds: Any = None,
            prior: float = 0.5, source: object = None) -> DevCalibration:
        """Fit on dev ``scores`` (N,) (raw cosines) with ``labels`` (N,); the duration-aware calibration
        too when the seconds of speech of each side (N,) are given.

        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([1, 0], [500, 5000])
        >>> dev = DevCalibration.fit(rng.normal(0.6 * labels, 0.15), labels)
        >>> round(dev.eer, 4), round(dev.scores.far(dev.eer_threshold), 4), round(dev.scores.frr(dev.eer_threshold), 4)
        (0.0236, 0.0236, 0.024)
        """
        scores, labels = check_trials(scores, labels, source)
        quality = None
        if enroll_seconds is not None and test_seconds is not None:
            quality = train_quality_calibration(scores, labels, enroll_seconds, test_seconds, prior, source)
        eer, threshold = eer_from_points(OperatingPoints.from_groups(ScoreGroups.from_scores(scores, labels)))
        return cls(train_calibration(scores, labels, prior, source), quality,
                   OperatingPointSummary.from_scores(scores, labels), len(scores), prior, eer, threshold)

    def llr(self, scores: np.ndarray, enroll_seconds: Any = None, test_seconds: Any = None) -> np.ndarray:
        """LLRs (N,) of raw ``scores`` (N,): duration-aware when this has it and both durations are given."""
        if self.quality is not None and enroll_seconds is not None and test_seconds is not None:
            return self.quality(scores, enroll_seconds, test_seconds)
        return self.linear(scores)

    def to_dict(self) -> dict[str, Any]:
        data = {"trials": self.trials, "prior": self.prior, "eer": self.eer, "eer_threshold": self.eer_threshold,
                "linear": self.linear.to_dict()}
        if self.quality is not None:
            data["quality"] = self.quality.to_dict()
        data["scores"] = self.scores.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> DevCalibration:
        if not isinstance(data, Mapping) or not {"trials", "prior", "eer", "eer_threshold", "linear",
                                                  "scores"} <= set(data) <= FIELDS:
            raise FormatError(f"evaluation.calibration must hold {', '.join(sorted(FIELDS))} ('quality' optional)",
                              source)
        numbers = [data[name] for name in ("trials", "prior", "eer", "eer_threshold")]
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
                   for value in numbers):
            raise FormatError("evaluation.calibration: trials, prior, eer and eer_threshold must be numbers", source)
        quality = data.get("quality")
        return cls(Calibration.from_dict(data["linear"], source),
                   None if quality is None else QualityCalibration.from_dict(quality, source),
                   OperatingPointSummary.from_dict(data["scores"], source), int(data["trials"]),
                   float(data["prior"]), float(data["eer"]), float(data["eer_threshold"]))

    @classmethod
    def of_model(cls, evaluation: Mapping[str, Any], source: object = None) -> DevCalibration | None:
        """The calibration recorded in a model's ``evaluation`` dict, or None for artifacts without one."""
        data = evaluation.get(KEY)
        return None if data is None else cls.from_dict(data, source)
