"""Encoders and the model: a registry of encoders, `EmbeddingModel`, batched embedding, artifacts, loading.

>>> from speakertrip.models import ENCODERS
>>> ENCODERS.names()
['ecapa', 'ge2e', 'tdnn']
"""

from __future__ import annotations

from speakertrip.models import ecapa, ge2e, tdnn  # noqa: F401 - registers the encoders
from speakertrip.models.artifact import save_model
from speakertrip.models.batched import embed_many, embed_one, split_chunks
from speakertrip.models.embedding_model import EmbeddingModel
from speakertrip.models.encoder import ENCODERS, build_encoder
from speakertrip.models.loading import initialise, load_artifact, load_model
from speakertrip.models.speechbrain_hub import import_speechbrain, import_to_artifact, load_speechbrain_checkpoint

__all__ = ["ENCODERS", "EmbeddingModel", "build_encoder", "embed_many", "embed_one", "import_speechbrain",
           "import_to_artifact", "initialise", "load_artifact", "load_model", "load_speechbrain_checkpoint",
           "save_model", "split_chunks"]
