"""Encoders and the embedding model: a registry of encoders, `EmbeddingModel`, artifacts.

>>> from speakertrip.models import ENCODERS
>>> ENCODERS.names()
['ecapa', 'tdnn']
"""

from __future__ import annotations

from speakertrip.models import ecapa, tdnn  # noqa: F401 - registers the encoders
from speakertrip.models.artifact import load_model, load_speechbrain_checkpoint, model_from_config, save_model
from speakertrip.models.embedding_model import EmbeddingModel
from speakertrip.models.encoder import ENCODERS, build_encoder

__all__ = ["ENCODERS", "EmbeddingModel", "build_encoder", "load_model", "load_speechbrain_checkpoint",
           "model_from_config", "save_model"]
