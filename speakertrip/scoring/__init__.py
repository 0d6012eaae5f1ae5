"""Scoring: trial lists, cosine scoring, score normalisation, metrics, calibration and DET curves.

EER here is the rate where the ROC (operating points joined by straight lines) crosses
P_miss = P_fa; ``rocch_eer`` is the same on the ROC convex hull. DCFs are normalised as NIST and
Kaldi do. Every metric is exact with tied scores and comes from one sort. Scores are never rescaled.

>>> import numpy as np
>>> from speakertrip import scoring
>>> scores, labels = np.array([0.9, 0.8, 0.3, 0.1]), np.array([1, 0, 1, 0])
>>> scoring.eer(scores, labels), scoring.min_dcf(scores, labels, p_target=0.01)
(0.5, 0.5)
"""

from __future__ import annotations

from speakertrip.scoring.bootstrap import bootstrap_intervals
from speakertrip.scoring.calibration import (Calibration, QualityCalibration, fit_calibration,
                                             fit_quality_calibration, train_calibration, train_quality_calibration)
from speakertrip.scoring.cllr import cllr, min_cllr, rocch_eer
from speakertrip.scoring.cohort import load_cohort, speaker_means, voxceleb_speaker
from speakertrip.scoring.cosine import (TrialEmbeddings, cosine_scores, find_missing, l2_normalize, score_trials,
                                        trial_embeddings)
from speakertrip.scoring.det import det_points, plot_det
from speakertrip.scoring.metrics import act_dcf, bayes_threshold, eer, min_dcf
from speakertrip.scoring.norm import (NORM_METHODS, CohortStats, apply_norm, cohort_stats, normalize_scores,
                                      normalize_trial_scores)
from speakertrip.scoring.operating_points import OperatingPoints, ScoreGroups, check_trials, operating_points
from speakertrip.scoring.report import VerificationMetrics, compute_metrics, metrics_table
from speakertrip.scoring.score_files import ScoreList, format_scores, read_scores, write_scores
from speakertrip.data.trials import Trials, read_trials

__all__ = [
    "eer", "min_dcf", "act_dcf", "bayes_threshold", "rocch_eer", "cllr", "min_cllr", "compute_metrics",
    "VerificationMetrics", "metrics_table", "bootstrap_intervals", "operating_points", "OperatingPoints",
    "ScoreGroups", "check_trials", "Trials", "read_trials", "ScoreList", "read_scores", "write_scores",
    "format_scores", "score_trials", "cosine_scores", "trial_embeddings", "TrialEmbeddings", "find_missing",
    "l2_normalize", "NORM_METHODS", "CohortStats", "cohort_stats", "apply_norm", "normalize_scores",
    "normalize_trial_scores", "load_cohort", "speaker_means", "voxceleb_speaker", "Calibration",
    "train_calibration", "fit_calibration", "QualityCalibration", "train_quality_calibration",
    "fit_quality_calibration", "det_points", "plot_det",
]
