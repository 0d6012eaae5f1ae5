"""`EmbeddingModel`: the log-mel frontend, an encoder and L2 normalisation, with its config.

The one model class: what training builds, what a model artifact holds and what ``st.load_model``
returns. ``embed`` and ``embed_batch`` embed files, arrays and tensors (:mod:`speakertrip.models.batched`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError, FormatError
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.models.artifact import (ARTIFACT_FORMAT, ARTIFACT_VERSION, check_config, identity_digest,
                                         save_model, weights_stamp)
from speakertrip.models.batched import embed_many, embed_one
from speakertrip.models.encoder import build_encoder


class EmbeddingModel(nn.Module):
    """Waveforms → L2-normalised speaker embeddings.

    Parameters
    ----------
    feature_config : FeatureConfig or its dict (default ``FeatureConfig()``)
    encoder_name : a name in :data:`speakertrip.models.ENCODERS` (``"ecapa"``, ``"tdnn"``)
    encoder_options : keyword options of that encoder's builder (``{"channels": 1024}``)
    evaluation : dev-set results recorded by training or calibration (``eer``, ``eer_threshold``,
        ``min_dcf_0.01``, ``calibration``, ...; see :mod:`speakertrip.evaluation`); saved in the artifact's config

    >>> model = EmbeddingModel(FeatureConfig(n_mels=40), "ecapa", {"channels": 32}).eval()
    >>> model(torch.randn(2, 16000), torch.tensor([16000, 12000])).shape
    torch.Size([2, 192])
    >>> model.embed(0.01 * np.random.randn(8000).astype(np.float32), sample_rate=16000).shape
    (192,)
    """

    def __init__(self, feature_config: FeatureConfig | Mapping[str, Any] | None = None, encoder_name: str = "ecapa",
                 encoder_options: Mapping[str, Any] | None = None, evaluation: Mapping[str, Any] | None = None):
        super().__init__()
        if not isinstance(feature_config, FeatureConfig):
            feature_config = FeatureConfig.from_dict(feature_config or {})
        self.feature_config = feature_config
        self.encoder_name = encoder_name
        self.encoder_options = dict(encoder_options or {})
        self.frontend = LogMelFrontend(feature_config)
        self.encoder = build_encoder(encoder_name, feature_config.n_mels, self.encoder_options)
        self.evaluation: dict[str, Any] = dict(evaluation or {})
        self._identity: tuple[tuple, str] | None = None

    @classmethod
    def from_config(cls, config: Any, source: str | Path = "config") -> EmbeddingModel:
        """An untrained model from an artifact config; every key and type is checked first (errors name
        ``source`` and the key)."""
        check_config(config, source)
        encoder = config["encoder"]
        try:
            return cls(FeatureConfig.from_dict(config["features"]), encoder["name"], encoder.get("options") or {},
                       config.get("evaluation") or {})
        except ConfigError as error:
            raise FormatError(str(error), source) from None

    @property
    def embedding_dim(self) -> int:
        return int(self.encoder.embedding_dim)

    @property
    def sample_rate(self) -> int:
        return self.feature_config.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def threshold(self) -> float | None:
        """The dev-set EER threshold on cosine scores recorded in ``evaluation``, or None."""
        value = self.evaluation.get("eer_threshold")
        return None if value is None else float(value)

    @property
    def config(self) -> dict[str, Any]:
        """Everything needed to rebuild the model (weights aside); saved as ``config.yaml``."""
        return {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION,
                "features": self.feature_config.to_dict(),
                "encoder": {"name": self.encoder_name, "options": dict(self.encoder_options)},
                "embedding_dim": self.embedding_dim, "evaluation": dict(self.evaluation)}

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Embed a batch.

        Parameters
        ----------
        waveforms : (B, T) float32 in [-1, 1] (or int16), at ``self.sample_rate``
        lengths : (B,) int64 valid samples per row, or None when no row is padded

        Returns
        -------
        (B, D) float32 embeddings of unit L2 norm; under ``torch.autocast`` only the encoder runs
        in low precision (features and normalisation stay float32).
        """
        with torch.autocast(waveforms.device.type, enabled=False):
            features, frame_lengths = self.frontend(waveforms, lengths)
        return F.normalize(self.encoder(features, frame_lengths).float(), dim=-1)

    def embed(self, x: Any, sample_rate: int | None = None) -> np.ndarray:
        """One utterance (path, array or tensor) → (D,) float32 embedding; see :func:`embed_one`."""
        return embed_one(self, x, sample_rate)

    def embed_batch(self, items: Sequence[Any], **options: Any) -> np.ndarray:
        """Many utterances → (N, D) float32 embeddings, bucketed by length; see :func:`embed_many`."""
        return embed_many(self, items, **options)

    @property
    def identity(self) -> str:
        """A hex digest of the config (evaluation aside) and every weight: equal iff embeddings are equal.

        Enrolment stores keep it, so that a store made with one model refuses another. Cached until
        a weight changes (in place or replaced).
        """
        state = self.state_dict()
        stamp = weights_stamp(state)
        if self._identity is None or self._identity[0] != stamp:
            self._identity = (stamp, identity_digest(self.config, state))
        return self._identity[1]

    def save(self, directory: str | Path) -> Path:
        """Write ``config.yaml`` and ``model.safetensors`` into ``directory``; returns it."""
        return save_model(self, directory)
