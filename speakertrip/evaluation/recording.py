"""What a model artifact records about its dev trials, and the one way it is recorded.

Training (at its end) and ``speakertrip calibrate --model`` both call :func:`evaluate_dev`; its
:meth:`DevEvaluation.to_dict` becomes the artifact's ``evaluation``: the dev metrics (``trials``, ``eer``,
``eer_threshold``, ``min_dcf_P`` and its threshold), the trial list (``dev_trials``) and the calibration
with the dev score summary (:mod:`speakertrip.evaluation.dev_calibration`). The EER threshold is stored
once, there. ``evaluation`` is not part of the model's identity, so a calibrated copy reads the same
enrolment stores.

>>> import tempfile
>>> from speakertrip.testing import tiny_model_artifact, make_voxceleb_tree
>>> root = make_voxceleb_tree(tempfile.mkdtemp(), num_speakers=4)
>>> result = calibrate_model(tiny_model_artifact(), root / "veri_test2.txt", root / "model_cal", data=root / "wav")
>>> result.metrics["trials"], result.calibration.scores.nontargets.count > 0
(28, True)
"""

from __future__ import annotations

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from speakertrip.data.manifest import Utterance
from speakertrip.errors import ConfigError
from speakertrip.evaluation.dev_calibration import KEY as CALIBRATION_KEY
from speakertrip.evaluation.dev_calibration import DevCalibration
from speakertrip.evaluation.dev_scores import (MAX_GENERATED_TRIALS, DevScores, dev_scores, generate_trials,
                                               score_dev_trials)
from speakertrip.models.artifact import CONFIG_FILE, TORCH_WEIGHTS_FILE, WEIGHTS_FILE
from speakertrip.models.loading import load_artifact
from speakertrip.scoring.metrics import eer_from_points, min_dcf_from_points

P_TARGETS = (0.01, 0.05)
GENERATED_TRIALS = "calibration_trials.txt"  # written beside a calibrated copy when no trial list is given


def dev_metrics(dev: DevScores) -> dict[str, Any]:
    """``trials``, ``eer``, ``eer_threshold``, ``min_dcf_P`` and ``min_dcf_P_threshold`` for P in P_TARGETS
    (rates as fractions, thresholds on cosine scores)."""
    eer, threshold = eer_from_points(dev.points)
    result: dict[str, Any] = {"trials": int(len(dev.scores)), "eer": float(eer), "eer_threshold": float(threshold)}
    for p_target in P_TARGETS:
        value, where = min_dcf_from_points(dev.points, p_target)
        result[f"min_dcf_{p_target}"] = float(value)
        result[f"min_dcf_{p_target}_threshold"] = float(where)
    return result


def validate(model: nn.Module, utterances: Sequence[Utterance], trials: str | Path, device: Any = None,
             progress: bool = False, rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Dev metrics (:func:`dev_metrics`) of ``model`` on the labelled trial list ``trials``, whose keys are
    the manifest ``utt_id`` s of ``utterances``. Under DDP every rank calls it and gets the same metrics."""
    items = {utterance.utt_id: utterance for utterance in utterances}
    return dev_metrics(score_dev_trials(model, items, trials, device, progress, rank, world_size))


@dataclass(frozen=True)
class DevEvaluation:
    """The dev metrics, the calibration (None when it could not be fitted) and the trial list they come from."""

    metrics: dict[str, Any]
    calibration: DevCalibration | None
    trials: str

    def to_dict(self) -> dict[str, Any]:
        """The entries of the artifact's ``evaluation``."""
        recorded = {**self.metrics, "dev_trials": self.trials}
        if self.calibration is not None:
            recorded[CALIBRATION_KEY] = self.calibration.to_dict()
        return recorded


def evaluate_dev(dev: DevScores, trials: str | Path, prior: float = 0.5, strict: bool = True) -> DevEvaluation:
    """Metrics and calibration of ``dev``. A calibration that cannot be fitted (perfectly separated dev
    trials) raises ConfigError when ``strict``; otherwise it is left out with a warning."""
    try:
        calibration = DevCalibration.fit(dev, prior)
    except ConfigError as error:
        if strict:
            raise
        warnings.warn(f"no calibration recorded in the model: {error}", stacklevel=2)
        calibration = None
    return DevEvaluation(dev_metrics(dev), calibration, str(trials))


def check_new_folder(out: Path, model_dir: Path) -> None:
    """ConfigError unless ``out`` can receive a calibrated copy of ``model_dir``: a new or empty folder, outside
    the model (a file or a folder with files is never merged into; a copy inside the model would nest anew
    on every run)."""
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out {out} is the model itself; calibrate writes a copy, so give another directory")
    if out.resolve().is_relative_to(model_dir.resolve()):
        raise ConfigError(f"--out {out} is inside the model folder {model_dir}; give a folder beside it "
                          f"(e.g. {model_dir.parent / (model_dir.name + '_calibrated')})")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give the name of a new folder for the calibrated model")
    if out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out} is a folder that is not empty; give a new or empty folder (nothing is "
                          "merged into an existing one)")


def calibrate_model(model_dir: str | Path, trials: str | Path | None, out: str | Path, data: str | Path | None = None,
                    embeddings: str | Path | None = None, prior: float = 0.5, device: str = "cpu",
                    progress: bool = False, max_trials: int | None = MAX_GENERATED_TRIALS,
                    seed: int = 0) -> DevEvaluation:
    """Evaluate and calibrate the artifact ``model_dir`` on ``trials`` and write a calibrated copy to ``out``.

    Same weights and frontend (so the same identity); the other files of ``model_dir`` are copied along;
    only ``evaluation`` changes. Returns what was recorded. Without ``trials``, a list is generated over the
    labelled ``data`` (:func:`~speakertrip.evaluation.dev_scores.generate_trials`, at most ``max_trials``,
    drawn with ``seed``) and written beside the copy as ``out/calibration_trials.txt``.
    """
    model_dir, out = Path(model_dir), Path(out)
    check_new_folder(out, model_dir)
    if trials is None:
        if data is None:
            raise ConfigError("without --trials, calibrate generates a trial list from a labelled --data folder "
                              "or manifest; give --data DIR (or --trials T)")
        out.mkdir(parents=True, exist_ok=True)
        trials = generate_trials(data, out / GENERATED_TRIALS, max_trials, seed)
    model = load_artifact(model_dir, device)
    result = evaluate_dev(dev_scores(model, trials, data, embeddings, progress), trials, prior)
    model.evaluation = {**model.evaluation, **result.to_dict()}
    model.to("cpu").save(out)
    for extra in model_dir.iterdir():
        if extra.is_file() and extra.name not in (CONFIG_FILE, WEIGHTS_FILE, TORCH_WEIGHTS_FILE):
            shutil.copy2(extra, out / extra.name)
    return result
