"""Encoders and the embedding network: a registry of encoders, `EmbeddingNetwork`, artifacts.

>>> from speakertrip.models import ENCODERS
>>> ENCODERS.names()
['ecapa', 'tdnn']
"""

from __future__ import annotations

from speakertrip.models import ecapa, tdnn  # noqa: F401 - registers the encoders
from speakertrip.models.artifact import (
                                         initialise,
                                         load_network,
                                         load_speechbrain_checkpoint,
                                         model_from_config,
                                         save_model,
)
from speakertrip.models.embedding_model import EmbeddingNetwork
from speakertrip.models.encoder import ENCODERS, build_encoder
from speakertrip.models.speechbrain_hub import import_speechbrain, import_to_artifact

__all__ = ["ENCODERS", "EmbeddingNetwork", "build_encoder", "import_speechbrain", "import_to_artifact", "initialise", "load_network",
           "load_speechbrain_checkpoint", "model_from_config", "save_model"]
