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

Every GEMM is a :class:`Dense` layer, so the copy can compute in another precision
(:data:`PRECISIONS`): ``bfloat16`` keeps the blocks' weights and activations in bfloat16 (the
pooling statistics and softmax stay float32), ``int8`` quantises each weight matrix per output
channel and each input on the fly (dynamic quantisation); :mod:`speakertrip.models.backends`
measures what each costs in accuracy and chooses among them.

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

import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.models.artifact import weights_stamp

PRECISIONS = ("float32", "bfloat16", "int8")


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


class Dense(nn.Module):
    """``y = x W^T + b`` in a chosen precision; the output has the input's dtype.

    forward(x (..., in)) -> (..., out). ``float32`` / ``bfloat16`` keep ``W`` in that dtype (the
    input is cast to it); ``int8`` keeps ``W`` quantised per output channel (symmetric) and
    quantises each input tensor on the fly (torch's dynamic quantised linear, oneDNN's kernels
    where torch has them).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "float32"):
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision, self.out_features = precision, weight.shape[0]
        weight = weight.detach().float()
        bias = None if bias is None else bias.detach().float()
        self.packed = None
        if precision == "int8":
            self.packed, self.reduce_range = _prepack_int8(weight, bias)
            weight = bias = None
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.register_buffer("weight", None if weight is None else weight.to(dtype).clone())
        self.register_buffer("bias", None if bias is None else bias.to(dtype).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range).to(x.dtype)
        return F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)


def _prepack_int8(weight: torch.Tensor, bias: torch.Tensor | None) -> tuple[torch.Tensor, bool]:
    """Per-output-channel symmetric int8 weights, packed for torch's dynamic quantised linear.

    Packed with oneDNN when torch has it (VNNI / AMX int8 kernels, no range reduction needed);
    otherwise with the default engine and 7-bit inputs (``reduce_range``), as torch's own dynamic
    quantisation does to avoid saturating the 16-bit sums of non-VNNI kernels.
    """
    scale = (weight.abs().amax(dim=1) / 127.0).clamp(min=1e-12).double()
    with warnings.catch_warnings():  # torch deprecates quantised tensors in favour of torchao; they still work
        warnings.simplefilter("ignore", UserWarning)
        quantised = torch.quantize_per_channel(weight, scale, torch.zeros_like(scale, dtype=torch.int64), 0,
                                               torch.qint8)
    engines = torch.backends.quantized.supported_engines
    engine = "onednn" if "onednn" in engines else torch.backends.quantized.engine
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        return torch.ops.quantized.linear_prepack(quantised, bias), engine != "onednn"
    finally:
        torch.backends.quantized.engine = previous


class FoldedTdnn(nn.Module):
    """SpeechBrain's TDNNBlock (conv → ReLU → batch norm) on time-major input.

    forward(x (B, frames, C_in), taps (B, frames, k) | None) -> (B, frames, C_out)
    """

    def __init__(self, block: nn.Module, precision: str = "float32"):
        super().__init__()
        conv = block.conv.conv
        self.kernel_size, self.dilation = conv.kernel_size[0], conv.dilation[0]
        # (out, in, k) → (out, k·in): tap-major, matching the gathered (frames, k, in) layout
        weight = conv.weight.detach().permute(0, 2, 1).reshape(conv.out_channels, -1)
        self.linear = Dense(weight, conv.bias, precision)
        scale, shift = _affine(block.norm)
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.register_buffer("scale", scale.detach().to(dtype).clone())
        self.register_buffer("shift", shift.detach().to(dtype).clone())

    def forward(self, x: torch.Tensor, taps: torch.Tensor | None = None) -> torch.Tensor:
        if self.kernel_size > 1:
            rows = torch.arange(x.shape[0], device=x.device)[:, None, None]
            x = x[rows, taps].flatten(2)
        return torch.addcmul(self.shift, self.linear(x).relu_(), self.scale)


def _dense(conv: nn.Module | None, precision: str, scale: torch.Tensor | None = None,
           shift: torch.Tensor | None = None) -> Dense | None:
    """A 1×1 convolution as a :class:`Dense` layer (None: no layer).

    ``scale`` and ``shift`` fold a per-input-channel affine map applied before the layer.
    """
    if conv is None:
        return None
    conv = getattr(conv, "conv", conv)
    weight, bias = conv.weight.detach()[..., 0], conv.bias.detach()
    if scale is not None:
        weight, bias = weight * scale, bias + weight @ shift
    return Dense(weight, bias, precision)


def _weighted_statistics(x: torch.Tensor, weights: torch.Tensor, eps: float,
                         centred: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted mean and standard deviation over time: x (B, T, C), weights (B, T, 1 or C) summing to 1 over T
    → two (B, C). ``centred=False`` takes the variance as E[x²] - mean² (two passes over x instead of
    four, ~2e-5 from the centred sum on unit embeddings: for the low-precision copies only)."""
    if centred:
        mean = (weights * x).sum(dim=1)
        return mean, (weights * (x - mean[:, None]).square()).sum(dim=1).clamp(min=eps).sqrt()
    if weights.shape[2] == 1:  # one weight per frame: two matrix products
        per_frame = weights.transpose(1, 2)
        mean, second = torch.bmm(per_frame, x)[:, 0], torch.bmm(per_frame, x.square())[:, 0]
    else:
        weighted = weights * x
        mean, second = weighted.sum(dim=1), (weighted * x).sum(dim=1)
    return mean, (second - mean.square()).clamp(min=eps).sqrt()


class FoldedSERes2Net(nn.Module):
    """SE-Res2Net block: TDNN, Res2Net dilated convolutions, TDNN, squeeze-excitation, residual.

    forward(x (B, T, C), taps (B, T, k), weights (B, 1, T) mask / lengths) -> (B, T, C)
    """

    def __init__(self, block: nn.Module, precision: str = "float32"):
        super().__init__()
        self.tdnn1, self.tdnn2 = FoldedTdnn(block.tdnn1, precision), FoldedTdnn(block.tdnn2, precision)
        self.res2net = nn.ModuleList(FoldedTdnn(b, precision) for b in block.res2net_block.blocks)
        self.scale = block.res2net_block.scale
        self.kernel_size, self.dilation = self.res2net[0].kernel_size, self.res2net[0].dilation
        self.se1 = _dense(block.se_block.conv1, precision)
        self.se2 = _dense(block.se_block.conv2, precision)
        self.shortcut = _dense(block.shortcut, precision)

    def forward(self, x: torch.Tensor, taps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        chunks = self.tdnn1(x).chunk(self.scale, dim=2)
        outputs = [chunks[0]]
        for conv, chunk in zip(self.res2net, chunks[1:]):
            outputs.append(conv(chunk if len(outputs) == 1 else chunk + outputs[-1], taps))
        x = self.tdnn2(torch.cat(outputs, dim=2))
        squeezed = torch.bmm(weights, x)[:, 0]  # mean over valid frames, (B, C)
        excite = torch.sigmoid(self.se2(self.se1(squeezed).relu_()))
        return torch.addcmul(residual, x, excite[:, None, :])


class InferenceEcapa(nn.Module):
    """Eval-mode ECAPA-TDNN (SpeechBrain's lobe, ReLU activations) rebuilt for fast inference.

    forward(features (B, frames, n_mels), frame_lengths (B,) int64 | None) -> (B, embedding_dim) float32,
    unnormalised, equal to ``encoder(features, frame_lengths)`` for every row as if it ran alone
    (in float32; ``precision`` trades that for speed, see :mod:`speakertrip.models.backends`).
    """

    def __init__(self, encoder: nn.Module, precision: str = "float32"):
        super().__init__()
        self.embedding_dim, self.precision = encoder.fc.conv.out_channels, precision
        self.dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.layer0 = FoldedTdnn(encoder.blocks[0], precision)
        self.blocks = nn.ModuleList(FoldedSERes2Net(block, precision) for block in encoder.blocks[1:])
        self.mfa = FoldedTdnn(encoder.mfa, precision)
        asp = encoder.asp
        self.global_context, self.eps = asp.global_context, asp.eps
        tdnn = asp.tdnn.conv.conv  # the attention TDNN (1×1); its batch norm stays an affine map in float32
        weight, channels = tdnn.weight.detach()[..., 0], encoder.mfa.conv.conv.out_channels
        self.attention = Dense(weight[:, :channels], tdnn.bias, precision)
        # W [x; mean; std] = W_x x + (W_mean mean + W_std std), the latter one constant per row
        self.context = Dense(weight[:, channels:], None, precision) if self.global_context else None
        scale, shift = _affine(asp.tdnn.norm)
        self.register_buffer("attention_scale", scale.detach().clone())
        self.register_buffer("attention_shift", shift.detach().clone())
        self.attention_conv = _dense(asp.conv, precision)
        self.fc = _dense(encoder.fc, precision, *_affine(encoder.asp_bn))  # asp_bn folded into fc

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, _ = features.shape
        if frame_lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.int64, device=features.device)
        else:
            lengths = frame_lengths.to(features.device, torch.int64).clamp(1, frames)
        mask = torch.arange(frames, device=features.device)[None] < lengths[:, None]  # (B, T)
        weights = (mask / lengths[:, None]).to(self.dtype)  # mean over valid frames, (B, T)
        taps: dict[tuple[int, int], torch.Tensor] = {}

        def taps_for(layer: nn.Module) -> torch.Tensor | None:
            if layer.kernel_size == 1:
                return None
            key = (layer.kernel_size, layer.dilation)
            if key not in taps:
                taps[key] = reflect_taps(lengths, frames, *key)
            return taps[key]

        x = self.layer0(features.to(self.dtype), taps_for(self.layer0))
        outputs = []
        for block in self.blocks:
            x = block(x, taps_for(block), weights[:, None, :])
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=2))
        return self._pool(x, weights[..., None].float(), mask)

    def _pool(self, x: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attentive statistics pooling, asp_bn and fc, in float32 (the GEMMs in the layers' precision):
        x (B, T, C) in the layers' dtype → (B, D)."""
        hidden = self.attention(x).float()  # its GEMM reads x in the layers' dtype: no cast of x there and back
        x = x.float()
        if self.context is not None:
            statistics = _weighted_statistics(x, weights, self.eps, self.precision == "float32")
            hidden = hidden.add_(self.context(torch.cat(statistics, dim=1))[:, None])
        hidden = torch.addcmul(self.attention_shift, hidden.relu_(), self.attention_scale).tanh_()
        scores = self.attention_conv(hidden).masked_fill_(~mask[..., None], float("-inf"))
        if self.precision == "float32":
            mean, std = _weighted_statistics(x, scores.softmax(dim=1), self.eps)
        else:
            mean, std = _softmax_statistics(x, scores, self.eps)
        return self.fc(torch.cat([mean, std], dim=1))


def _softmax_statistics(x: torch.Tensor, scores: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation over time of x (B, T, C) weighted by ``softmax(scores, dim=1)`` → two (B, C),
    for the low-precision copies: the exponentials are normalised once per channel after the sums, in place in
    ``scores`` (which this consumes), three passes over (B, T, C) where softmax then weighting take seven (the
    attentive pooling was 40 % of a bfloat16 ECAPA-512 forward; this halves its statistics). Variance as
    E[x²] − mean² (as ``_weighted_statistics(centred=False)``)."""
    weights = scores.sub_(scores.amax(dim=1, keepdim=True)).exp_()
    total = weights.sum(dim=1)
    weighted = weights.mul_(x)
    mean = weighted.sum(dim=1).div_(total)
    second = weighted.mul_(x).sum(dim=1).div_(total)
    return mean, (second - mean.square()).clamp(min=eps).sqrt()


class InferenceModel(nn.Module):
    """An ``EmbeddingModel`` with its ECAPA encoder replaced by :class:`InferenceEcapa` (eval only).

    forward(waveforms (B, T), lengths (B,) | None) -> (B, D) L2-normalised, like the model's.
    """

    def __init__(self, model: nn.Module, precision: str = "float32"):
        super().__init__()
        self.frontend = model.frontend
        self.encoder = InferenceEcapa(model.encoder, precision)
        self.embedding_dim, self.sample_rate = model.embedding_dim, model.sample_rate

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        with torch.autocast(waveforms.device.type, enabled=False):  # as EmbeddingModel: features in float32
            features, frame_lengths = self.frontend(waveforms, lengths)
        return F.normalize(self.encoder(features, frame_lengths).float(), dim=-1)


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def foldable(model: nn.Module) -> bool:
    """Whether ``model`` has an inference copy: a frontend and SpeechBrain's ECAPA with ReLU activations."""
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN, TDNNBlock

    encoder = getattr(model, "encoder", None)
    return isinstance(encoder, ECAPA_TDNN) and hasattr(model, "frontend") and all(
        isinstance(block.activation, nn.ReLU) for block in encoder.modules() if isinstance(block, TDNNBlock))


def inference_model(model: nn.Module, precision: str = "float32") -> InferenceModel | None:
    """The cached :class:`InferenceModel` of ``model`` in ``precision``, rebuilt when a weight or the device changed.

    Returns None when the model is not :func:`foldable` (the caller then runs the model itself).
    The copy holds frozen weights: build it after training.
    """
    if not foldable(model):
        return None
    stamp = weights_stamp(model.state_dict())
    copies = _CACHE.setdefault(model, {})
    cached = copies.get(precision)
    if cached is None or cached[0] != stamp:
        with torch.no_grad():
            cached = (stamp, InferenceModel(model, precision).eval())
        copies[precision] = cached
    return cached[1]
