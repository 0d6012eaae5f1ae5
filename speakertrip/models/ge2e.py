"""The GE2E speaker encoder (Wan et al., 2018) as Resemblyzer ships it: 3 LSTM layers, a projection, ReLU.

An utterance is embedded as Resemblyzer's ``VoiceEncoder.embed_utterance`` does: windows of 160 frames
(1.6 s) start every 77 frames (Resemblyzer's ``rate=1.3`` partials per second, about 50 % overlap); a
window is kept while at least 120 of its frames (``min_coverage=0.75``) lie inside the utterance, and
the first is always kept. Each window's last hidden state is projected, passed through a ReLU and
L2-normalised; the utterance embedding is the mean of its windows (:class:`EmbeddingModel` then
normalises it). Frames after an utterance's end come from the ``ge2e`` frontend mode, which computes
them from the silence that follows the signal, as Resemblyzer's zero padding does.

Parameter names are Resemblyzer's (``lstm.weight_ih_l0``, ..., ``linear.weight``), so its shipped
weights load as they are (:mod:`speakertrip.models.resemblyzer`). There is no BatchNorm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.models.encoder import ENCODERS


class Ge2eEncoder(nn.Module):
    """LSTM(input_size → hidden_size, layers) on windows of frames, a linear projection and ReLU, per-window
    L2 norm, mean over each utterance's windows.

    ``forward(features (B, frames, n_mels), frame_lengths (B,) | None) -> (B, embedding_dim)``; ``features``
    may run past ``frame_lengths`` (the ``ge2e`` frontend's silence after the end); windows that need frames
    beyond the tensor see zeros there (the mel power of silence).

    >>> encoder = Ge2eEncoder(40, hidden_size=16, embedding_dim=8)
    >>> encoder(torch.rand(2, 300, 40), torch.tensor([300, 100])).shape
    torch.Size([2, 8])
    >>> encoder.window_starts(torch.tensor([100, 274, 275])).tolist()  # each row's window starts
    [[0, -1, -1], [0, 77, -1], [0, 77, 154]]
    """

    def __init__(self, input_size: int, hidden_size: int = 256, num_layers: int = 3, embedding_dim: int = 256,
                 window_frames: int = 160, window_step: int = 77, min_coverage: float = 0.75):
        super().__init__()
        if not 0 < window_step <= window_frames or not 0 < min_coverage <= 1:
            raise ConfigError(f"ge2e needs 0 < window_step ({window_step}) <= window_frames ({window_frames}) "
                              f"and 0 < min_coverage ({min_coverage}) <= 1")
        self.lstm = nn.LSTM(input_size, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, embedding_dim)
        self.embedding_dim = embedding_dim
        self.window_frames, self.window_step = window_frames, window_step
        # A window starting at frame s of an utterance of n samples (frames = n // hop + 1) is kept when
        # frames - 1 - s >= min_frames: Resemblyzer's test (n - s * hop) / (window_frames * hop) >= min_coverage,
        # exact in frames when min_coverage x window_frames is whole (0.75 x 160 = 120).
        self.min_frames = round(min_coverage * window_frames)

    def frame_layers(self) -> list[nn.Module]:
        """The LSTM's layers in order, each a module holding that layer's own four tensors (the same
        parameters: freezing one freezes the encoder's); ``finetune --freeze-layers N`` freezes the first N."""
        layers = []
        for index in range(self.lstm.num_layers):
            layer = nn.Module()
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                layer.register_parameter(name, getattr(self.lstm, f"{name}_l{index}"))
            layers.append(layer)
        return layers

    def window_starts(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """(B, W) int64 start frames of each row's windows, -1 where a row has fewer than W windows."""
        counts = self.window_counts(frame_lengths)
        starts = torch.arange(int(counts.max()), device=frame_lengths.device) * self.window_step
        return torch.where(starts[None, :] < counts[:, None] * self.window_step, starts[None, :], -1)

    def window_counts(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """(B,) int64 windows of each row: the first, and those whose start leaves ``min_frames`` frames after it."""
        return (frame_lengths - 1 - self.min_frames).clamp(min=0) // self.window_step + 1

    def embed_windows(self, windows: torch.Tensor) -> torch.Tensor:
        """(N, window_frames, n_mels) → (N, embedding_dim) unit-norm window embeddings (Resemblyzer's ``forward``)."""
        _, (hidden, _) = self.lstm(windows)
        return F.normalize(F.relu(self.linear(hidden[-1])), dim=1)

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        # Tensor arithmetic only (no Python ints from data), so that an ONNX export keeps a dynamic time axis.
        batch, frames, bins = features.shape
        if frame_lengths is None:
            frame_lengths = torch.full((batch,), frames, dtype=torch.int64, device=features.device)
        counts = self.window_counts(frame_lengths.to(features.device))
        window = torch.arange(counts.max(), device=features.device)  # (W,)
        index = window[:, None] * self.window_step + torch.arange(self.window_frames, device=features.device)
        inside = (index < frames).to(features.dtype)[None, :, :, None]  # frames past the tensor: silence (zero)
        windows = features[:, index.clamp(max=frames - 1)] * inside  # (B, W, window_frames, n_mels)
        embeddings = self.embed_windows(windows.reshape(-1, self.window_frames, bins)).reshape(batch, -1,
                                                                                           self.embedding_dim)
        kept = (window[None, :] < counts[:, None]).to(embeddings.dtype)[..., None]  # (B, W, 1)
        return (embeddings * kept).sum(dim=1) / counts[:, None].to(embeddings.dtype)


@ENCODERS.register("ge2e")
def build_ge2e(input_size: int, hidden_size: int = 256, num_layers: int = 3, embedding_dim: int = 256,
               window_frames: int = 160, window_step: int = 77, min_coverage: float = 0.75) -> Ge2eEncoder:
    """GE2E: 3 LSTM layers of 256, a 256-d projection (1.4 M parameters at 40 mels); Resemblyzer's windows."""
    return Ge2eEncoder(input_size, hidden_size, num_layers, embedding_dim, window_frames, window_step, min_coverage)
