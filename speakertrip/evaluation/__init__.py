"""Evaluation on dev trials: dev scores, validation metrics, calibration and operating points, and what a
model artifact records of them. Training calls it at every validation and at its end; verification reads
what it recorded; ``speakertrip calibrate --model`` records it for any artifact.

- :mod:`.dev_scores`: a labelled trial list embedded and scored once (:class:`DevScores`);
- :mod:`.recording`: dev metrics, :func:`validate`, :func:`evaluate_dev`, :func:`calibrate_model`;
- :mod:`.dev_calibration`: the calibration to LLRs with the dev score summary (:class:`DevCalibration`);
- :mod:`.score_summary`: thresholds for a false-accept or false-reject rate (:class:`OperatingPointSummary`);
- :mod:`.confidence`: the dev speakers behind each operating point and speaker-bootstrap intervals of it
  (:class:`OperatingPointConfidence`), and the Verifier's warning when they cannot vouch for a rate.
"""

from __future__ import annotations

from speakertrip.evaluation.confidence import OperatingPointConfidence, OperatingPointWarning
from speakertrip.evaluation.dev_calibration import DevCalibration
from speakertrip.evaluation.dev_scores import DevScores, dev_scores, score_dev_trials
from speakertrip.evaluation.recording import DevEvaluation, calibrate_model, dev_metrics, evaluate_dev, validate
from speakertrip.evaluation.score_summary import OperatingPointSummary, ScoreSummary, check_rate

__all__ = ["DevCalibration", "DevEvaluation", "DevScores", "OperatingPointConfidence", "OperatingPointSummary",
           "OperatingPointWarning", "ScoreSummary", "calibrate_model",
           "check_rate", "dev_metrics", "dev_scores", "evaluate_dev", "score_dev_trials", "validate"]
