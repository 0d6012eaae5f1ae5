"""`EmbeddingModel`: an embedding network that embeds files, arrays and tensors; what ``st.load_model`` returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from speakertrip.extraction.batched import embed_many, embed_one
from speakertrip.features import FeatureConfig
from speakertrip.models.artifact import CONFIG_FILE, load_network
from speakertrip.models.artifact import load_speechbrain_checkpoint as _load_speechbrain
from speakertrip.models.embedding_model import EmbeddingNetwork
from speakertrip.models.speechbrain_hub import HYPERPARAMS_FILE, import_speechbrain, is_hub_id


class EmbeddingModel(EmbeddingNetwork):
    """An :class:`~speakertrip.models.EmbeddingNetwork` with ``embed`` and ``embed_batch``.

    >>> model = EmbeddingModel(FeatureConfig(n_mels=40), "ecapa", {"channels": 32})
    >>> model.embed(np.zeros(8000, np.float32) + 0.01 * np.random.randn(8000), sample_rate=16000).shape
    (192,)
    """

    def embed(self, x: Any, sample_rate: int | None = None) -> np.ndarray:
        """One utterance (path, array or tensor) → (D,) float32 embedding; see :func:`embed_one`."""
        return embed_one(self, x, sample_rate)

    def embed_batch(self, items: Sequence[Any], **options: Any) -> np.ndarray:
        """Many utterances → (N, D) float32 embeddings, bucketed by length; see :func:`embed_many`."""
        return embed_many(self, items, **options)


def load_model(source: str | Path, device: str | torch.device = "cpu") -> EmbeddingModel:
    """A model in eval mode from a speakertrip artifact folder (``config.yaml`` + ``model.safetensors``),
    a SpeechBrain hub id (``"speechbrain/spkrec-ecapa-voxceleb"``, fetched into the huggingface_hub cache)
    or a folder in a SpeechBrain hub repository's layout (see :func:`speakertrip.models.import_speechbrain`).

    >>> from speakertrip.testing import tiny_model_artifact
    >>> model = load_model(tiny_model_artifact())
    >>> model.embedding_dim, model.threshold
    (192, 0.5)
    >>> model = load_model("speechbrain/spkrec-ecapa-voxceleb")  # doctest: +SKIP
    """
    if is_hub_id(source) or (Path(source) / HYPERPARAMS_FILE).is_file() and not (Path(source) / CONFIG_FILE).exists():
        return import_speechbrain(source, network_class=EmbeddingModel).to(device)
    return load_network(source, device, EmbeddingModel)


def load_speechbrain_checkpoint(path: str | Path, feature_config: FeatureConfig | None = None,
                                device: str | torch.device = "cpu") -> EmbeddingModel:
    """An :class:`EmbeddingModel` holding a SpeechBrain ``embedding_model.ckpt`` (ECAPA_TDNN or Xvector);
    see :func:`speakertrip.models.load_speechbrain_checkpoint`."""
    return _load_speechbrain(path, feature_config, device, EmbeddingModel)
