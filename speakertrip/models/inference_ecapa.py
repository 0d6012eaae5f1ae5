"""An inference-only copy of an ECAPA encoder: frozen, batch norm folded, padding by index, lengths explicit.

:class:`InferenceEcapa` computes what SpeechBrain's ECAPA lobe computes in eval mode (to float32
rounding, ~1e-6 on unit embeddings) for a padded batch as if every row ran alone:

- activations stay time-major ``(B, frames, C)``, so every 1×1 convolution is one GEMM
  (``F.linear``) and a dilated k-tap convolution is one gather of k reflected frames per output
  frame followed by one GEMM; the gather index mirrors each row about its own last valid frame
  and is built once per (kernel, dilation), shared by all the convolutions that use it;
- batch norm after ReLU becomes one fused scale-and-shift (``addcmul``); the last one (``asp_bn``)
  is folded into the final linear layer;
- the attention's global context ``W [x; mean; std]`` is split into ``W_x x`` and a per-utterance
  constant, saving two thirds of that layer's multiply-adds;
- masks and means use integer frame lengths, so no padded frame reaches a valid one.

:func:`inference_model` returns (and caches) the optimised copy of an ``EmbeddingModel`` whose
encoder is ECAPA, or None for other encoders; :mod:`speakertrip.models.batched` uses it when it can.

>>> from speakertrip.features import FeatureConfig
>>> from speakertrip.models import EmbeddingModel
>>> model = EmbeddingModel(FeatureConfig(n_mels=40), "ecapa", {"channels": 32}).eval()
>>> fast = inference_model(model)
>>> fast(torch.randn(2, 16000), torch.tensor([16000, 9000])).shape
torch.Size([2, 192])
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.models.artifact import weights_stamp


def reflect_taps(lengths: torch.Tensor, frames: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """Source frame of each tap of a "same" reflect-padded convolution, row by row: (B, frames, kernel) int64.

    Row b reflects about frame 0 on the left and about its last valid frame ``lengths[b] - 1`` on
    the right; taps of padded output frames are clamped into range (their outputs are never used).
    """
    half = dilation * (kernel_size - 1) // 2
    offsets = torch.arange(kernel_size, device=lengths.device) * dilation - half
    position = (torch.arange(frames, device=lengths.device)[:, None] + offsets)[None].abs()  # (1, frames, k)
    last = (lengths - 1)[:, None, None]
    position = torch.where(position > last, 2 * last - position, position)
    return position.clamp(0, frames - 1)


def _affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm (SpeechBrain's wrapper or torch's) as per-channel (scale, shift)."""
    norm = getattr(norm, "norm", norm)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


class FoldedTdnn(nn.Module):
    """SpeechBrain's TDNNBlock (conv → ReLU → batch norm) on time-major input.

    forward(x (B, frames, C_in), taps (B, frames, k) | None) -> (B, frames, C_out)
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        conv = block.conv.conv
        self.kernel_size, self.dilation = conv.kernel_size[0], conv.dilation[0]
        # (out, in, k) → (out, k·in): tap-major, matching the gathered (frames, k, in) layout
        self.register_buffer("weight", conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1).clone())
        self.register_buffer("bias", conv.bias.detach().clone())
        scale, shift = _affine(block.norm)
        self.register_buffer("scale", scale.detach().clone())
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
        if self.kernel_size > 1:
            rows = torch.arange(x.shape[0], device=x.device)[:, None, None]
            x = x[rows, taps].flatten(2)
        return torch.addcmul(self.shift, F.linear(x, self.weight, self.bias).relu_(), self.scale)


def _register_linear(module: nn.Module, name: str, conv: nn.Module | None,
                     scale: torch.Tensor | None = None, shift: torch.Tensor | None = None) -> None:
    """Keep a 1×1 convolution as ``{name}_weight`` (out, in) and ``{name}_bias`` buffers (None: no layer).

    ``scale`` and ``shift`` fold a per-input-channel affine map applied before the layer.
    """
    weight = bias = None
    if conv is not None:
        conv = getattr(conv, "conv", conv)
        weight, bias = conv.weight.detach()[..., 0], conv.bias.detach()
        if scale is not None:
            weight, bias = weight * scale, bias + weight @ shift
    module.register_buffer(f"{name}_weight", None if weight is None else weight.clone())
    module.register_buffer(f"{name}_bias", None if bias is None else bias.clone())


def _weighted_statistics(x: torch.Tensor, weights: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation over time: x (B, T, C), weights (B, T, 1 or C) → two (B, C)."""
    mean = (weights * x).sum(dim=1)
    variance = (weights * (x - mean[:, None]).square()).sum(dim=1)
    return mean, variance.clamp(min=eps).sqrt()


class FoldedSERes2Net(nn.Module):
    """SE-Res2Net block: TDNN, Res2Net dilated convolutions, TDNN, squeeze-excitation, residual.

    forward(x (B, T, C), taps (B, T, k), weights (B, 1, T) mask / lengths) -> (B, T, C)
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.tdnn1, self.tdnn2 = FoldedTdnn(block.tdnn1), FoldedTdnn(block.tdnn2)
        self.res2net = nn.ModuleList(FoldedTdnn(b) for b in block.res2net_block.blocks)
        self.scale = block.res2net_block.scale
        self.kernel_size, self.dilation = self.res2net[0].kernel_size, self.res2net[0].dilation
        _register_linear(self, "se1", block.se_block.conv1)
        _register_linear(self, "se2", block.se_block.conv2)
        _register_linear(self, "shortcut", block.shortcut)

    def forward(self, x: torch.Tensor, taps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut_weight is None else F.linear(x, self.shortcut_weight, self.shortcut_bias)
        chunks = self.tdnn1(x).chunk(self.scale, dim=2)
        outputs = [chunks[0]]
        for conv, chunk in zip(self.res2net, chunks[1:]):
            outputs.append(conv(chunk if len(outputs) == 1 else chunk + outputs[-1], taps))
        x = self.tdnn2(torch.cat(outputs, dim=2))
        squeezed = torch.bmm(weights, x)[:, 0]  # mean over valid frames, (B, C)
        excite = torch.sigmoid(F.linear(F.linear(squeezed, self.se1_weight, self.se1_bias).relu_(),
                                        self.se2_weight, self.se2_bias))
        return torch.addcmul(residual, x, excite[:, None, :])


class InferenceEcapa(nn.Module):
    """Eval-mode ECAPA-TDNN (SpeechBrain's lobe, ReLU activations) rebuilt for fast inference.

    forward(features (B, frames, n_mels), frame_lengths (B,) int64 | None) -> (B, embedding_dim),
    unnormalised, equal to ``encoder(features, frame_lengths)`` for every row as if it ran alone.
    """

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.embedding_dim = encoder.fc.conv.out_channels
        self.layer0 = FoldedTdnn(encoder.blocks[0])
        self.blocks = nn.ModuleList(FoldedSERes2Net(block) for block in encoder.blocks[1:])
        self.mfa = FoldedTdnn(encoder.mfa)
        asp = encoder.asp
        self.global_context, self.eps = asp.global_context, asp.eps
        self.attention = FoldedTdnn(asp.tdnn)
        _register_linear(self, "attention_conv", asp.conv)
        _register_linear(self, "fc", encoder.fc, *_affine(encoder.asp_bn))  # asp_bn folded into fc

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, _ = features.shape
        if frame_lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.int64, device=features.device)
        else:
            lengths = frame_lengths.to(features.device, torch.int64).clamp(1, frames)
        mask = torch.arange(frames, device=features.device)[None] < lengths[:, None]  # (B, T)
        weights = (mask / lengths[:, None]).to(features.dtype)  # mean over valid frames, (B, T)
        taps: dict[tuple[int, int], torch.Tensor] = {}

        def taps_for(layer: nn.Module) -> torch.Tensor | None:
            if layer.kernel_size == 1:
                return None
            key = (layer.kernel_size, layer.dilation)
            if key not in taps:
                taps[key] = reflect_taps(lengths, frames, *key)
            return taps[key]

        x = self.layer0(features, taps_for(self.layer0))
        outputs = []
        for block in self.blocks:
            x = block(x, taps_for(block), weights[:, None, :])
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=2))
        return self._pool(x, weights[..., None], mask)

    def _pool(self, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attentive statistics pooling, asp_bn and fc: x (B, T, C) → (B, D)."""
        attention = self.attention
        channels = x.shape[2]
        if self.global_context:  # W [x; mean; std] = W_x x + (W_mean mean + W_std std), the latter per row
            mean, std = _weighted_statistics(x, weights, self.eps)
            w_x, w_mean, w_std = attention.weight.split(channels, dim=1)
            context = F.linear(mean, w_mean) + F.linear(std, w_std) + attention.bias
            hidden = F.linear(x, w_x).add_(context[:, None, :])
        else:
            hidden = F.linear(x, attention.weight, attention.bias)
        hidden = torch.addcmul(attention.shift, hidden.relu_(), attention.scale).tanh_()
        scores = F.linear(hidden, self.attention_conv_weight, self.attention_conv_bias)
        scores = scores.masked_fill_(~mask[..., None], float("-inf"))
        mean, std = _weighted_statistics(x, scores.softmax(dim=1), self.eps)
        return F.linear(torch.cat([mean, std], dim=1), self.fc_weight, self.fc_bias)


class InferenceModel(nn.Module):
    """An ``EmbeddingModel`` with its ECAPA encoder replaced by :class:`InferenceEcapa` (eval only).

    forward(waveforms (B, T), lengths (B,) | None) -> (B, D) L2-normalised, like the model's.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.frontend = model.frontend
        self.encoder = InferenceEcapa(model.encoder)
        self.embedding_dim, self.sample_rate = model.embedding_dim, model.sample_rate

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(waveforms.device.type, enabled=False):  # as EmbeddingModel: features in float32
            features, frame_lengths = self.frontend(waveforms, lengths)
        return F.normalize(self.encoder(features, frame_lengths).float(), dim=-1)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def inference_model(model: nn.Module) -> InferenceModel | None:
    """The cached :class:`InferenceModel` of ``model``, rebuilt when a weight or the device changed.

    Returns None when the encoder is not SpeechBrain's ECAPA with ReLU activations (the caller
    then runs the model itself). The copy holds frozen weights: build it after training.
    """
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, TDNNBlock

    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, ECAPA_TDNN) or not hasattr(model, "frontend") or not all(
            isinstance(block.activation, nn.ReLU) for block in encoder.modules() if isinstance(block, TDNNBlock)):
        return None
    stamp = weights_stamp(model.state_dict())
    cached = _CACHE.get(model)
    if cached is None or cached[0] != stamp:
        with torch.no_grad():
            cached = (stamp, InferenceModel(model).eval())
        _CACHE[model] = cached
    return cached[1]
