"""Calibrating any model artifact on a labelled dev trial list: a calibrated copy, the original untouched.

What ``speakertrip calibrate --model`` runs, and what training does at its end (see
:mod:`speakertrip.scoring.dev_calibration` for what is recorded). The copy has the same weights
and frontend, so it has the same identity and reads the same enrolment stores.

>>> calibration = calibrate_model("exp/model", "dev_trials.txt", "exp/model_cal", data="dev.jsonl")  # doctest: +SKIP
>>> calibration.scores.threshold_for_far(0.01)                                                     # doctest: +SKIP
0.5731
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from speakertrip.errors import ConfigError, FormatError
from speakertrip.extraction import find_items, load_model, load_store
from speakertrip.models.artifact import CONFIG_FILE
from speakertrip.plain_yaml import write_yaml
from speakertrip.scoring import read_trials, score_trials
from speakertrip.scoring.dev_calibration import KEY, DevCalibration
from speakertrip.training.validation import DevScores, score_dev_trials


def dev_scores(model_dir: str | Path, trials: str | Path, data: str | Path | None = None,
               embeddings: str | Path | None = None, device: str = "cpu", progress: bool = False) -> DevScores:
    """Cosine scores of a labelled trial list: embedded from ``data`` (an audio folder, keys relative
    paths, or a manifest, keys ``utt_id`` s; durations known) or looked up in the store ``embeddings``
    (durations unknown)."""
    if (data is None) == (embeddings is None):
        raise ConfigError("give exactly one of --data (audio folder or manifest) and --embeddings (a store)")
    if embeddings is not None:
        listed = read_trials(trials)
        if listed.labels is None:
            raise FormatError("calibration needs a labelled trial list (target/nontarget)", trials)
        return DevScores(score_trials(listed, load_store(embeddings)), listed.labels)
    keys, items = find_items(data)
    return score_dev_trials(load_model(model_dir, device), dict(zip(keys, items)), trials, progress=progress)


def calibrate_model(model_dir: str | Path, trials: str | Path, out: str | Path, data: str | Path | None = None,
                    embeddings: str | Path | None = None, prior: float = 0.5, device: str = "cpu",
                    progress: bool = False) -> DevCalibration:
    """Fit the calibration of the artifact ``model_dir`` on ``trials`` and write a calibrated copy to ``out``.

    Every file of ``model_dir`` is copied; only ``evaluation.calibration`` of ``config.yaml``
    changes. Returns what was recorded.
    """
    model_dir, out = Path(model_dir), Path(out)
    config_path = model_dir / CONFIG_FILE
    if not config_path.is_file():
        raise ConfigError(f"{model_dir}: no model artifact here (expected {CONFIG_FILE})")
    if out.resolve() == model_dir.resolve():
        raise ConfigError(f"--out {out} is the model itself; calibrate writes a copy, so give another directory")
    dev = dev_scores(model_dir, trials, data, embeddings, device, progress)
    calibration = DevCalibration.fit(dev.scores, dev.labels, dev.enroll_seconds, dev.test_seconds, prior, trials)
    config = yaml.safe_load(config_path.read_text())
    evaluation = dict(config.get("evaluation") or {})
    evaluation[KEY] = calibration.to_dict()
    evaluation[f"{KEY}_trials"] = str(trials)
    config["evaluation"] = evaluation
    shutil.copytree(model_dir, out, dirs_exist_ok=True)
    write_yaml(config, out / CONFIG_FILE)
    return calibration
