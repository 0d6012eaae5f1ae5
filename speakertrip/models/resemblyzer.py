"""Resemblyzer's pretrained GE2E encoder as a speakertrip model, its weights read as data.

The ``resemblyzer`` package (Apache-2.0; ``pip install 'speakertrip[resemblyzer]'``) ships the weights
of a GE2E encoder trained on VoxCeleb 1 and 2 and LibriSpeech inside its wheel (``resemblyzer/pretrained.pt``,
17 MB). They are found with ``importlib.util.find_spec`` (which imports nothing) and read with
``torch.load(weights_only=True)``: none of the package's code runs. The model is the ``ge2e`` encoder
(:mod:`speakertrip.models.ge2e`) behind the ``ge2e`` frontend mode, and embeds as
``VoiceEncoder().embed_utterance(wav)`` does (the tests hold them to a cosine of 0.9999), after
Resemblyzer's volume normalisation; long silences are not cut (Resemblyzer's ``preprocess_wav``
trims them with webrtcvad; ``trim_db`` of ``embed_batch`` trims the ends).

Reading the 17 MB of weights takes seconds, so the tests skip the example; ``tests/test_ge2e.py`` holds the
model to Resemblyzer's own embeddings:

>>> import speakertrip as st
>>> model = st.load_model("resemblyzer")                          # doctest: +SKIP
>>> model.encoder_name, model.embedding_dim                       # doctest: +SKIP
('ge2e', 256)
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from pathlib import Path
from typing import Mapping

from speakertrip.errors import FormatError, SpeakertripError
from speakertrip.features import FeatureConfig
from speakertrip.models.artifact import load_state, load_torch_data
from speakertrip.models.embedding_model import EmbeddingModel
from speakertrip.models.speechbrain_hub import IMPORT_RECORD
from speakertrip.plain_yaml import write_yaml

SOURCE = "resemblyzer"  # the name st.load_model and `speakertrip import` take
WEIGHTS_FILE = "pretrained.pt"
LOSS_KEYS = ("similarity_weight", "similarity_bias")  # the GE2E loss's scale and offset, not the encoder's


def is_resemblyzer(source: object) -> bool:
    """True for the source name ``"resemblyzer"`` (a string or a path, as the commands' ``--model`` gives it)
    when no file or folder of that name exists here."""
    return isinstance(source, (str, Path)) and str(source) == SOURCE and not Path(source).exists()


def pretrained_path() -> Path:
    """The installed package's ``pretrained.pt``, found without importing the package."""
    spec = importlib.util.find_spec(SOURCE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise SpeakertripError("resemblyzer: the resemblyzer package is not installed; its wheel ships the "
                               "weights: pip install 'speakertrip[resemblyzer]'")
    path = Path(folders[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise SpeakertripError(f"{path}: missing from the installed resemblyzer package; reinstall it "
                               "(pip install --force-reinstall 'speakertrip[resemblyzer]')")
    return path


def import_resemblyzer(weights: str | Path | None = None) -> EmbeddingModel:
    """The GE2E model of a Resemblyzer checkpoint (default: the installed package's), in eval mode.

    A checkpoint is a torch file holding ``{"model_state": {...}}`` with ``lstm.*`` and ``linear.*`` tensors
    (Resemblyzer's ``VoiceEncoder(weights_fpath=...)`` reads the same files); anything else is a FormatError
    naming the file.
    """
    path = Path(weights) if weights is not None else pretrained_path()
    checkpoint = load_torch_data(path, "a Resemblyzer checkpoint")
    state = checkpoint.get("model_state") if isinstance(checkpoint, Mapping) else None
    if not isinstance(state, Mapping):
        raise FormatError("expected a Resemblyzer checkpoint: a dict whose 'model_state' holds the weights", path)
    model = EmbeddingModel(FeatureConfig.ge2e(), "ge2e")
    load_state(model.encoder, {key: value for key, value in state.items() if key not in LOSS_KEYS}, path)
    return model.eval()


def import_resemblyzer_to_artifact(out: str | Path, weights: str | Path | None = None) -> tuple[EmbeddingModel, Path]:
    """Import a Resemblyzer checkpoint (default: the installed package's) into the artifact folder ``out``, with
    ``imported_from.yaml`` (the file, the package version and the file's SHA-256); returns the model and ``out``."""
    path = Path(weights) if weights is not None else pretrained_path()
    model = import_resemblyzer(path)
    out = model.save(out)
    try:
        version = importlib.metadata.version(SOURCE) if weights is None else None
    except importlib.metadata.PackageNotFoundError:
        version = None
    write_yaml({"source": SOURCE if weights is None else str(weights), "file": str(path.resolve()),
                "package_version": version, "sha256": {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}},
               out / IMPORT_RECORD)
    return model, out
