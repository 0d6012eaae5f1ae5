"""Loading models: an artifact folder, a SpeechBrain hub id or hub-layout folder, ``"resemblyzer"``; initial
weights for training."""

from __future__ import annotations

from pathlib import Path

import torch

from speakertrip.errors import ConfigError
from speakertrip.models.artifact import CONFIG_FILE, load_state, read_artifact, read_weights
from speakertrip.models.embedding_model import EmbeddingModel
from speakertrip.models.resemblyzer import import_resemblyzer, is_resemblyzer
from speakertrip.models.speechbrain_hub import HYPERPARAMS_FILE, check_local_source, import_speechbrain, is_hub_id


def load_artifact(directory: str | Path, device: str | torch.device = "cpu") -> EmbeddingModel:
    """The model of the artifact in ``directory`` (written by :meth:`EmbeddingModel.save`), in eval mode."""
    config, state = read_artifact(directory)
    model = EmbeddingModel.from_config(config, Path(directory) / CONFIG_FILE)
    model.load_state_dict(state)
    return model.to(device).eval()


def load_model(source: str | Path, device: str | torch.device = "cpu") -> EmbeddingModel:
    """A model in eval mode from a speakertrip artifact folder (``config.yaml`` + ``model.safetensors``),
    a SpeechBrain hub id (``"speechbrain/spkrec-ecapa-voxceleb"``, fetched into the huggingface_hub cache)
    or a folder in a SpeechBrain hub repository's layout (see :func:`speakertrip.models.import_speechbrain`);
    ``"resemblyzer"`` is Resemblyzer's pretrained GE2E encoder, read from the installed ``resemblyzer``
    package (the ``resemblyzer`` extra; :mod:`speakertrip.models.resemblyzer`).

    >>> from speakertrip.testing import tiny_model_artifact
    >>> model = load_model(tiny_model_artifact())
    >>> model.embedding_dim, model.threshold
    (192, 0.5)
    """
    folder = Path(source)
    if is_resemblyzer(source):
        return import_resemblyzer().to(device)
    if is_hub_id(source) or (folder / HYPERPARAMS_FILE).is_file() and not (folder / CONFIG_FILE).exists():
        return import_speechbrain(source).to(device)
    check_local_source(source)  # a missing owner/name path is an error naming it, never a download
    return load_artifact(source, device)


def initialise(model: EmbeddingModel, source: str | Path) -> None:
    """Load ``model.init_from``: a speakertrip model directory (all weights) or a SpeechBrain
    ``embedding_model.ckpt`` (encoder weights)."""
    source = Path(source)
    if source.is_dir():
        load_state(model, read_artifact(source)[1], source)
    elif source.is_file():
        load_state(model.encoder, read_weights(source), source)
    else:
        raise ConfigError(f"model.init_from: {source} is neither a model directory nor a checkpoint file")
