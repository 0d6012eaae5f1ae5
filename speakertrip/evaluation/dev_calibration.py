"""What a model artifact records about the meaning of its scores: the calibration to LLRs (plain and,
with durations, duration-aware) and the operating-point summary of the dev trials it was fitted on.

Stored as plain data under ``evaluation["calibration"]`` of the artifact's ``config.yaml``, beside the dev
metrics (the EER threshold among them) that :mod:`speakertrip.evaluation.recording` records::

    calibration:
      trials: 65024            # dev trials it was fitted on
      prior: 0.5
      linear: {scale: 9.1, offset: -5.2}
      quality: {scale: ..., offset: ..., scale_per_log_second: ..., ...}   # when durations were known
      scores: {targets: {count, ranks, scores}, nontargets: {count, ranks, scores}}
      operating_points:        # when the speakers of the dev trials are known (evaluation.confidence)
        speakers: 72
        target_speakers: 72
        speaker_pairs: 2556
        resamples: 1000
        confidence: 0.95
        points: [{kind: far, rate: 0.01, threshold, errors, error_speakers, error_pairs,
                  threshold_interval: [low, high], rate_interval: [low, high],
                  new_speakers_interval: [low, high]}, ...]   # the last one recorded since issue 31; older
                                                               # artifacts get it from the others on loading
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from speakertrip.errors import FormatError
from speakertrip.evaluation.confidence import OperatingPointConfidence, doubt
from speakertrip.evaluation.score_summary import OperatingPointSummary
from speakertrip.scoring.calibration import Calibration, QualityCalibration, fit_calibration, fit_quality_calibration

if TYPE_CHECKING:
    from speakertrip.evaluation.dev_scores import DevScores

KEY = "calibration"
FIELDS = {"trials", "prior", "linear", "quality", "scores", "operating_points"}
LEGACY_FIELDS = {"eer", "eer_threshold"}  # recorded here too before the dev metrics were kept in one place


@dataclass(frozen=True)
class DevCalibration:
    """Calibrations and dev score summary of a model (see module doc)."""

    linear: Calibration
    quality: QualityCalibration | None
    scores: OperatingPointSummary
    trials: int
    prior: float
    confidence: OperatingPointConfidence | None = None

    @classmethod
    def fit(cls, dev: DevScores, prior: float = 0.5) -> DevCalibration:
        """Fit on checked dev scores (raw cosines); the duration-aware calibration too when ``dev`` has the
        seconds of speech of each side, the speakers behind the operating points and their speaker-level
        bootstrap intervals (:mod:`speakertrip.evaluation.confidence`) when it has the speaker of each side.

        >>> from speakertrip.evaluation.dev_scores import DevScores
        >>> rng = np.random.default_rng(0)
        >>> labels = np.repeat([1, 0], [500, 5000])
        >>> dev = DevCalibration.fit(DevScores(rng.normal(0.6 * labels, 0.15), labels))
        >>> threshold = dev.scores.threshold_for_far(0.01)
        >>> round(dev.scores.far(threshold), 4), round(dev.linear.scale, 1)
        (0.01, 22.8)
        """
        quality = None
        if dev.has_durations:
            quality = fit_quality_calibration(dev.scores, dev.labels, dev.enroll_seconds, dev.test_seconds, prior)
        summary = OperatingPointSummary.from_classes(dev.scores[dev.labels], dev.scores[~dev.labels])
        confidence = None
        if dev.has_speakers:
            confidence = OperatingPointConfidence.from_trials(dev.scores, dev.labels, dev.enroll_speakers,
                                                              dev.test_speakers, summary)
        return cls(fit_calibration(dev.scores, dev.labels, prior), quality, summary, len(dev.scores), prior,
                   confidence)

    def doubt(self, kind: str, rate: float) -> str | None:
        """Why the threshold for ``kind`` ("far" or "frr") ``= rate`` is not sure, in one line (None: it is)."""
        return doubt(self.scores, self.confidence, kind, rate)

    def llr(self, scores: np.ndarray, enroll_seconds: Any = None, test_seconds: Any = None) -> np.ndarray:
        """LLRs (N,) of raw ``scores`` (N,): duration-aware when this has it and both durations are given."""
        if self.quality is not None and enroll_seconds is not None and test_seconds is not None:
            return self.quality(scores, enroll_seconds, test_seconds)
        return self.linear(scores)

    def to_dict(self) -> dict[str, Any]:
        data = {"trials": self.trials, "prior": self.prior, "linear": self.linear.to_dict()}
        if self.quality is not None:
            data["quality"] = self.quality.to_dict()
        data["scores"] = self.scores.to_dict()
        if self.confidence is not None:
            data["operating_points"] = self.confidence.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Any, source: object = None) -> DevCalibration:
        if not isinstance(data, Mapping) or not {"trials", "prior", "linear", "scores"} <= set(data) <= \
                FIELDS | LEGACY_FIELDS:
            raise FormatError(f"evaluation.calibration must hold {', '.join(sorted(FIELDS))} ('quality' and "
                              "'operating_points' optional)",
                              source)
        numbers = [data[name] for name in ("trials", "prior")]
        if not all(isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
                   for value in numbers):
            raise FormatError("evaluation.calibration: trials and prior must be numbers", source)
        quality, confidence = data.get("quality"), data.get("operating_points")
        summary = OperatingPointSummary.from_dict(data["scores"], source)
        return cls(Calibration.from_dict(data["linear"], source),
                   None if quality is None else QualityCalibration.from_dict(quality, source),
                   summary, int(data["trials"]), float(data["prior"]),
                   None if confidence is None else
                   OperatingPointConfidence.from_dict(confidence, source).completed(summary))

    @classmethod
    def of_model(cls, evaluation: Mapping[str, Any], source: object = None) -> DevCalibration | None:
        """The calibration recorded in a model's ``evaluation`` dict, or None for artifacts without one."""
        data = evaluation.get(KEY)
        return None if data is None else cls.from_dict(data, source)
