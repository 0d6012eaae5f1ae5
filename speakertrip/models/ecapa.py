"""ECAPA-TDNN (Desplanques et al., 2020) from SpeechBrain's lobe, with its parameter names.

Keeping SpeechBrain's module tree means the ``embedding_model.ckpt`` of SpeechBrain's
``spkrec-ecapa-voxceleb`` (C=1024, 80 mels, 192-d) loads into ``encoder="ecapa", channels=1024``
as it is, for fine-tuning with a triplet loss (:func:`speakertrip.models.load_speechbrain_checkpoint`).
"""

from __future__ import annotations

import torch
from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, TDNNBlock

from speakertrip.errors import ConfigError
from speakertrip.models.encoder import ENCODERS, in_float32, relative_lengths


class EcapaEncoder(ECAPA_TDNN):
    """ECAPA-TDNN with channels ``[C, C, C, C, 3C]``, attentive statistics pooling, a linear embedding.

    ``forward(features (B, frames, n_mels), frame_lengths (B,) | None) -> (B, embedding_dim)``.

    >>> encoder = EcapaEncoder(40, channels=32)
    >>> encoder(torch.randn(2, 50, 40), torch.tensor([50, 30])).shape
    torch.Size([2, 192])
    """

    def __init__(self, input_size: int, channels: int = 512, embedding_dim: int = 192,
                 attention_channels: int = 128, se_channels: int = 128, res2net_scale: int = 8,
                 global_context: bool = True, dropout: float = 0.0):
        if channels <= 0 or channels % res2net_scale:
            raise ConfigError(f"ecapa channels ({channels}) must be a positive multiple of res2net_scale "
                              f"({res2net_scale}); e.g. 32, 64, 512 or 1024")
        super().__init__(input_size, lin_neurons=embedding_dim, channels=[channels] * 4 + [3 * channels],
                         attention_channels=attention_channels, se_channels=se_channels,
                         res2net_scale=res2net_scale, global_context=global_context, dropout=dropout)
        self.embedding_dim = embedding_dim

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """SpeechBrain's forward, with the final linear layer (``fc``) in float32 under autocast."""
        lengths = relative_lengths(features, frame_lengths)
        x, outputs = features.transpose(1, 2), []
        for layer in self.blocks:
            x = layer(x) if isinstance(layer, TDNNBlock) else layer(x, lengths=lengths)
            outputs.append(x)
        pooled = self.asp_bn(self.asp(self.mfa(torch.cat(outputs[1:], dim=1)), lengths=lengths))
        return in_float32(self.fc, pooled).squeeze(2)


@ENCODERS.register("ecapa")
def build_ecapa(input_size: int, channels: int = 512, embedding_dim: int = 192, attention_channels: int = 128,
                se_channels: int = 128, res2net_scale: int = 8, global_context: bool = True,
                dropout: float = 0.0) -> EcapaEncoder:
    """ECAPA-TDNN: ``channels`` 512 (6.2 M parameters) or 1024 (20.8 M); 32–64 for CPU demos."""
    return EcapaEncoder(input_size, channels, embedding_dim, attention_channels, se_channels, res2net_scale,
                        global_context, dropout)
