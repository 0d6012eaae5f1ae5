"""The final artifact: average the last snapshots, validate on the dev trials, record the result, save."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

import torch

from speakertrip.data.manifest import Utterance
from speakertrip.data.manifest import read_manifest
from speakertrip.errors import SpeakertripError
from speakertrip.evaluation.dev_scores import score_dev_trials
from speakertrip.evaluation.recording import evaluate_dev
from speakertrip.models.artifact import check_finite
from speakertrip.models.embedding_model import EmbeddingModel
from speakertrip.models.loading import initialise
from speakertrip.training.batchnorm import reestimate_batchnorm
from speakertrip.training.checkpoint import average_state_dicts, interpolate_state_dicts, load_checkpoint
from speakertrip.training.config import TrainConfig

SNAPSHOT_PATTERN = re.compile(r"snapshot_(\d+)\.pt$")


def snapshot_path(directory: Path, step: int) -> Path:
    return directory / f"snapshot_{step:08d}.pt"


def list_snapshots(directory: str | Path) -> list[Path]:
    """Model snapshots (one per epoch end, and the final step) in step order."""
    directory = Path(directory)
    found = [path for path in directory.glob("snapshot_*.pt") if SNAPSHOT_PATTERN.search(path.name)]
    return sorted(found, key=lambda path: int(SNAPSHOT_PATTERN.search(path.name).group(1)))


def build_model(config: TrainConfig) -> EmbeddingModel:
    return EmbeddingModel(config.features, config.model.encoder, config.model.options)


def average_snapshots(config: TrainConfig, paths: Sequence[str | Path]) -> tuple[EmbeddingModel, list[int]]:
    """The model whose weights are the mean of the snapshots (or checkpoints) at ``paths``; and their steps.

    A snapshot holding NaN or infinity is refused by name (it would poison the average).
    """
    if not paths:
        raise SpeakertripError("no snapshots to average: train for at least one epoch, or give --checkpoints")
    checkpoints = [load_checkpoint(path) for path in paths]
    model = build_model(config)
    expected = set(model.state_dict())
    states = [{key: value for key, value in checkpoint["model"].items() if key in expected}
              for checkpoint in checkpoints]
    for path, state in zip(paths, states):
        check_finite(state, path, "snapshot")
        if set(state) != expected:
            raise SpeakertripError(f"{path}: its weights do not fit the config's model "
                                   f"(missing {sorted(expected - set(state))[:3]})")
    model.load_state_dict(average_state_dicts(states))
    return model, [int(checkpoint.get("step", -1)) for checkpoint in checkpoints]


def interpolate_toward_start(model: EmbeddingModel, config: TrainConfig) -> None:
    """Set ``model``'s weights to ``init_from + interpolation × (weights − init_from)`` (``config.model``)."""
    start = build_model(config)
    initialise(start, config.model.init_from)
    model.load_state_dict(interpolate_state_dicts(start.state_dict(), model.state_dict(),
                                                  config.model.interpolation))


def save_final_model(config: TrainConfig, paths: Sequence[str | Path], out: str | Path, validate_dev: bool = True,
                     device: torch.device | str = "cpu", progress: bool = False,
                     batchnorm_data: Sequence[Utterance] = ()) -> tuple[Path, dict]:
    """Average ``paths`` into the final model, evaluate it on ``config.data.dev``/``dev_trials`` when given,
    save the artifact to ``out``.

    With ``config.model.interpolation`` below 1, the averaged weights are first moved back toward
    ``config.model.init_from`` (:func:`interpolate_toward_start`).
    ``batchnorm_data``: utterances on whose crops the averaged model's BatchNorm statistics are
    re-estimated before evaluation (:func:`speakertrip.training.batchnorm.reestimate_batchnorm`).

    The evaluation (dev metrics, calibration and operating-point summary) is what
    :func:`speakertrip.evaluation.evaluate_dev` records; dev trials that cannot be calibrated (perfectly
    separated) leave the calibration out with a warning. Returns the artifact directory and the
    evaluation recorded in its config.
    """
    model, steps = average_snapshots(config, paths)
    evaluation: dict = {}
    if config.model.interpolation < 1:
        interpolate_toward_start(model, config)
        evaluation["interpolation"] = config.model.interpolation
    model.to(device)
    if batchnorm_data:
        evaluation["batchnorm_crops"] = reestimate_batchnorm(model, batchnorm_data, config.data.crop_seconds,
                                                             config.features.sample_rate, device)
    if validate_dev and config.data.dev and config.data.dev_trials:
        items = {utterance.utt_id: utterance for utterance in read_manifest(config.data.dev)}
        dev = score_dev_trials(model, items, config.data.dev_trials, progress=progress)
        evaluation.update(evaluate_dev(dev, config.data.dev_trials, strict=False).to_dict())
    evaluation["averaged_steps"] = steps
    model.evaluation = evaluation
    return model.to("cpu").save(out), evaluation
