"""The x-vector TDNN (Snyder et al., 2018) from SpeechBrain's lobe, with exact masked pooling.

SpeechBrain's ``StatisticsPooling`` loops over the batch when lengths are given and adds random
noise to the mean even at inference; we swap in a vectorised pooling over valid frames without
noise (it has no parameters, so state dicts keep SpeechBrain's names and still load).
"""

from __future__ import annotations

import torch
from speechbrain.lobes.models.Xvector import Xvector
from speechbrain.nnet.pooling import StatisticsPooling
from torch import nn

from speakertrip.models.encoder import ENCODERS, in_float32


class MaskedStatisticsPooling(nn.Module):
    """Mean and standard deviation over valid frames: (B, frames, C) → (B, 1, 2C).

    The standard deviation is unbiased (like ``torch.std``) plus ``eps``, as in SpeechBrain.
    Computed in float32 even under autocast (counts, means and variances lose too many digits
    in bfloat16); the output is float32 (float64 stays float64).
    """

    def __init__(self, eps: float = 1e-5):
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        frames = x.shape[1]
        if frame_lengths is None:
            frame_lengths = torch.full((x.shape[0],), frames, device=x.device)
        return in_float32(lambda values: self._pool(values, frame_lengths, frames), x)

    def _pool(self, x: torch.Tensor, frame_lengths: torch.Tensor, frames: int) -> torch.Tensor:
        counts = frame_lengths.to(x.device).clamp(1, frames)
        mask = (torch.arange(frames, device=x.device)[None, :] < counts[:, None]).to(x.dtype)[..., None]
        counts = counts.to(x.dtype)[:, None]
        mean = (x * mask).sum(dim=1) / counts
        variance = ((x - mean[:, None]) * mask).square().sum(dim=1) / (counts - 1).clamp(min=1)
        return torch.cat([mean, variance.sqrt() + self.eps], dim=1)[:, None]


class TdnnEncoder(Xvector):
    """x-vector: five TDNN layers, statistics pooling, a linear embedding layer.

    ``forward(features (B, frames, n_mels), frame_lengths (B,) | None) -> (B, embedding_dim)``.

    >>> encoder = TdnnEncoder(40, channels=32, stats_channels=64, embedding_dim=16)
    >>> encoder(torch.randn(2, 50, 40), torch.tensor([50, 30])).shape
    torch.Size([2, 16])
    """

    def __init__(self, input_size: int, channels: int = 512, stats_channels: int = 1500, embedding_dim: int = 512):
        super().__init__(in_channels=input_size, tdnn_channels=[channels] * 4 + [stats_channels],
                         lin_neurons=embedding_dim)
        for index, block in enumerate(self.blocks):
            if isinstance(block, StatisticsPooling):
                self.blocks[index] = MaskedStatisticsPooling()
        self.embedding_dim = embedding_dim

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = features
        for block in self.blocks[:-1]:
            x = block(x, frame_lengths) if isinstance(block, MaskedStatisticsPooling) else block(x)
        return in_float32(self.blocks[-1], x).squeeze(1)  # the embedding layer in float32 under autocast


@ENCODERS.register("tdnn")
def build_tdnn(input_size: int, channels: int = 512, stats_channels: int = 1500,
               embedding_dim: int = 512) -> TdnnEncoder:
    """x-vector TDNN: 512 channels, 1500 before pooling, 512-d embedding (4.4 M parameters at 80 mels)."""
    return TdnnEncoder(input_size, channels, stats_channels, embedding_dim)
