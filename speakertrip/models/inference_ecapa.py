"""An inference-only copy of an ECAPA encoder: frozen, batch norm folded, padding by index, lengths explicit.

:class:`InferenceEcapa` computes what SpeechBrain's ECAPA lobe computes in eval mode (to float32
rounding, ~1e-6 on unit embeddings) for a padded batch as if every row ran alone:

- activations stay time-major ``(B, frames, C)``, so every 1×1 convolution is one GEMM and a
  dilated k-tap convolution is one channels-last 2-D convolution over a copy of its input padded
  with each row's own reflection (int8: a gather of k reflected frames per output frame, then one
  GEMM); the reflection indices mirror each row about its own last valid frame and are built once
  per (kernel, dilation), shared by all the convolutions that use them;
- batch norm after ReLU becomes one fused scale-and-shift (``addcmul``) where a reader needs it,
  and is folded into the readers otherwise: ``asp_bn`` into the final linear layer, each SE-Res2Net
  block's first one into the second TDNN and the Res2Net convolutions, the MFA layer's into the
  attention's first layer and the pooled statistics (per channel: mean → scale · mean + shift,
  std → |scale| · std), so that its (B, T, 1536) output is never rescaled;
- on a CPU a batch is padded to a multiple of :data:`FRAME_GRID` frames, so that oneDNN reuses
  the kernels it built for earlier shapes;
- the attention's global context ``W [x; mean; std]`` is split into ``W_x x`` and a per-utterance
  constant, saving two thirds of that layer's multiply-adds;
- masks and means use integer frame lengths, so no padded frame reaches a valid one.

Every GEMM is a :class:`Dense` layer, so the copy can compute in another precision
(:data:`PRECISIONS`): ``bfloat16`` keeps weights and activations in bfloat16 (on a CPU each GEMM
runs in oneDNN with its bias and ReLU fused; the pooling's exponentials and weighted sums run in
bfloat16 on frames centred on their mean, accumulated in float32), ``int8`` quantises each weight
matrix per output channel and each input on the fly (dynamic quantisation);
:mod:`speakertrip.models.backends` measures what each costs in accuracy and chooses among them.

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
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.models.artifact import weights_stamp

PRECISIONS = ("float32", "bfloat16", "int8")
# batches are padded to a multiple of this many frames on a CPU: oneDNN builds (JIT-compiles) its kernels for each new
# shape, which costs about one forward; with lengths on a grid a corpus reuses a few dozen shapes
FRAME_GRID = 32


def _reflect(positions: torch.Tensor, lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """The frame each position (B or 1, ...) reads under reflect padding of each row about frame 0 and
    about its own last valid frame ``lengths[b] - 1``; clamped into range (frames of padded outputs)."""
    position = positions.abs()
    last = (lengths - 1).view(-1, *[1] * (positions.dim() - 1))
    return torch.where(position > last, 2 * last - position, position).clamp(0, frames - 1)


def reflect_taps(lengths: torch.Tensor, frames: int, kernel_size: int, dilation: int) -> torch.Tensor:
    """Source frame of each tap of a "same" reflect-padded convolution, row by row: (B, frames, kernel) int64.

    Row b reflects about frame 0 on the left and about its last valid frame ``lengths[b] - 1`` on
    the right; taps of padded output frames are clamped into range (their outputs are never used).
    """
    half = dilation * (kernel_size - 1) // 2
    offsets = torch.arange(kernel_size, device=lengths.device) * dilation - half
    return _reflect((torch.arange(frames, device=lengths.device)[:, None] + offsets)[None], lengths, frames)


def reflect_edges(lengths: torch.Tensor, frames: int, half: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a (B, frames + 2·half, C) buffer holding each row at offset ``half`` needs reflected frames, and
    which of its frames they copy: two (B, 2·half) int64. The ``half`` frames before each row and the ``half``
    after its own last valid frame; a "same" convolution over the buffer then sees every row as if alone."""
    steps = torch.arange(half, device=lengths.device)
    positions = torch.cat([(steps - half)[None].expand(len(lengths), half), lengths[:, None] + steps], dim=1)
    return positions + half, _reflect(positions, lengths, frames) + half


def _affine(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm (SpeechBrain's wrapper or torch's) as per-channel (scale, shift)."""
    norm = getattr(norm, "norm", norm)
    scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
    return scale, norm.bias - norm.running_mean * scale


def _onednn_linear() -> Callable | None:
    """oneDNN's linear layer with bias and ReLU fused (what torch's compiler calls on CPU), or None where torch
    lacks it: one pass over the output where ``F.linear`` then ``relu_`` take three (bias copy, GEMM, ReLU)."""
    linear = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    if linear is None or not torch.backends.mkldnn.is_available():
        return None
    try:
        x, weight = torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(4, 3, dtype=torch.bfloat16)
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, 2)
        ok = torch.equal(linear(x, packed, None, "relu", [], "").float(), torch.full((2, 4), 3.0))
    except (RuntimeError, TypeError, AttributeError):
        return None
    return linear if ok else None


_ONEDNN_LINEAR = _onednn_linear()


class Dense(nn.Module):
    """``y = x W^T + b`` (then ReLU if ``relu``) in a chosen precision; the output has the input's dtype.

    forward(x (..., in)) -> (..., out). ``float32`` / ``bfloat16`` keep ``W`` in that dtype (the
    input is cast to it); on a CPU, ``bfloat16`` also keeps ``W`` packed for oneDNN's AMX / AVX512
    kernels and runs bias and ReLU inside the GEMM (``float32`` stays on ``F.linear``: no faster
    there). ``int8`` keeps ``W`` quantised per output channel (symmetric) and quantises each input
    tensor on the fly (torch's dynamic quantised linear, oneDNN's kernels where torch has them).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "float32",
                 relu: bool = False):
        super().__init__()
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision, self.out_features, self.relu = precision, weight.shape[0], relu
        weight = weight.detach().float()
        bias = None if bias is None else bias.detach().float()
        self.packed = self.onednn = None
        if precision == "int8":
            self.packed, self.reduce_range = _prepack_int8(weight, bias)
            weight = bias = None
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        self.register_buffer("weight", None if weight is None else weight.to(dtype).clone())
        self.register_buffer("bias", None if bias is None else bias.to(dtype).clone())
        if precision == "bfloat16" and _ONEDNN_LINEAR is not None and self.weight.device.type == "cpu":
            self.onednn = torch.ops.mkldnn._reorder_linear_weight(self.weight, 1024)  # ~1000 frames a batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.onednn is not None and x.device.type == "cpu":
            return _ONEDNN_LINEAR(x.to(self.weight.dtype), self.onednn, self.bias, "relu" if self.relu else "none",
                                  [], "").to(x.dtype)
        if self.packed is not None:
            y = torch.ops.quantized.linear_dynamic(x.float(), self.packed, self.reduce_range).to(x.dtype)
        else:
            y = F.linear(x.to(self.weight.dtype), self.weight, self.bias).to(x.dtype)
        return y.relu_() if self.relu else y


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

    forward(x (B, frames, C_in), taps) -> (B, frames, C_out); with ``affine=False`` the batch norm
    is left to the consumer (buffers ``scale``, ``shift``). A k-tap layer in float32 or bfloat16 is
    one 2-D convolution over a reflect-padded copy of x seen channels-last as (B, C_in, 1, frames)
    (oneDNN's kernels on a CPU; ``taps``: :func:`reflect_edges` as rows of the flattened buffer);
    in int8 it gathers k reflected frames per output frame for one GEMM (``taps`` = :func:`reflect_taps`).

    ``before`` = (scale, shift): a per-channel affine map (the previous layer's batch norm) that the
    caller leaves off the input, folded in here: the shift into the bias (reflection keeps a
    constant constant), the scale into the weights, or with ``scale_plus`` into the forward's
    ``x * scale + plus``.
    """

    def __init__(self, block: nn.Module, precision: str = "float32", affine: bool = True,
                 before: tuple[torch.Tensor, torch.Tensor] | None = None, scale_plus: bool = False):
        super().__init__()
        self.affine = affine
        conv = block.conv.conv
        self.kernel_size, self.dilation = conv.kernel_size[0], conv.dilation[0]
        self.half = self.dilation * (self.kernel_size - 1) // 2
        self.convolves = self.kernel_size > 1 and precision != "int8"
        dtype = torch.bfloat16 if precision == "bfloat16" else torch.float32
        weight, bias = conv.weight.detach().float(), conv.bias.detach().float()  # (out, in, k), (out,)
        self.register_buffer("input_scale", None)
        if before is not None:
            bias = bias + weight.sum(dim=2) @ before[1].float()
            if scale_plus:
                self.input_scale = before[0].detach().to(dtype).clone()
            else:
                weight = weight * before[0].float()[None, :, None]
        if self.convolves:  # (out, in, k) → (out, in, 1, k), channels-last like its input
            weight = weight.to(dtype).unsqueeze(2)
            self.register_buffer("conv_weight", weight.contiguous(memory_format=torch.channels_last))
            self.register_buffer("conv_bias", bias.to(dtype).clone())
        else:  # (out, in, k) → (out, k·in): tap-major, matching the gathered (frames, k, in) layout
            self.linear = Dense(weight.permute(0, 2, 1).reshape(conv.out_channels, -1), bias, precision, relu=True)
        scale, shift = _affine(block.norm)
        self.register_buffer("scale", scale.detach().to(dtype).clone())
        self.register_buffer("shift", shift.detach().to(dtype).clone())

    def forward(self, x: torch.Tensor, taps: torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None = None,
                plus: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """The layer applied to ``x + plus`` (``plus`` optional, same shape; ``x * input_scale + plus`` with
        ``scale_plus``), written into ``out`` if given."""
        if self.convolves:
            y = self._convolve(x, plus, *taps)
        else:
            if plus is not None:
                x = x + plus if self.input_scale is None else torch.addcmul(plus, x, self.input_scale)
            if self.kernel_size > 1:
                rows = torch.arange(x.shape[0], device=x.device)[:, None, None]
                x = x[rows, taps].flatten(2)
            y = self.linear(x)
        if not self.affine:
            return y
        return torch.addcmul(self.shift, y, self.scale, out=out) if out is not None else torch.addcmul(
            self.shift, y, self.scale)

    def _convolve(self, x: torch.Tensor, plus: torch.Tensor | None, edges: torch.Tensor,
                  sources: torch.Tensor) -> torch.Tensor:
        """ReLU(conv(x + plus)) with per-row reflect padding: x (B, T, C_in) → (B, T, C_out), both time-major."""
        batch, frames, channels = x.shape
        padded = x.new_empty(batch, frames + 2 * self.half, channels)
        interior = padded[:, self.half: self.half + frames]
        if plus is None:
            interior.copy_(x)
        elif self.input_scale is None:
            torch.add(x, plus, out=interior)
        else:
            torch.addcmul(plus, x, self.input_scale, out=interior)
        padded[:, self.half + frames:] = 0  # read only by padded outputs, but those must stay finite
        flat = padded.view(-1, channels)
        flat.index_copy_(0, edges, flat.index_select(0, sources))
        y = F.conv2d(padded.transpose(1, 2).unsqueeze(2), self.conv_weight, self.conv_bias, dilation=(1, self.dilation))
        return y.squeeze(2).transpose(1, 2).relu_()


def _dense(conv: nn.Module | None, precision: str, scale: torch.Tensor | None = None,
           shift: torch.Tensor | None = None, relu: bool = False) -> Dense | None:
    """A 1×1 convolution as a :class:`Dense` layer (None: no layer).

    ``scale`` and ``shift`` fold a per-input-channel affine map applied before the layer.
    """
    if conv is None:
        return None
    conv = getattr(conv, "conv", conv)
    weight, bias = conv.weight.detach()[..., 0], conv.bias.detach()
    if scale is not None:
        weight, bias = _fold_before(weight, bias, scale, shift)
    return Dense(weight, bias, precision, relu)


def _fold_before(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor,
                 shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(W', b') with W' x + b' = W (x * scale + shift) + b: a per-input-channel affine map folded into a GEMM."""
    return weight * scale, bias + weight @ shift


class FoldedSERes2Net(nn.Module):
    """SE-Res2Net block: TDNN, Res2Net dilated convolutions, TDNN, squeeze-excitation, residual.

    forward(x (B, T, C), taps (as :class:`FoldedTdnn`), weights (B, 1, T) mask / lengths) -> (B, T, C)
    """

    def __init__(self, block: nn.Module, precision: str = "float32"):
        super().__init__()
        # the first TDNN's batch norm is folded into its consumers: the first chunk's into the second TDNN,
        # the others' into the Res2Net convolutions (the second chunk's wholly, the later ones' scale into
        # the sum with the previous output)
        self.tdnn1 = FoldedTdnn(block.tdnn1, precision, affine=False)
        self.scale = block.res2net_block.scale
        scales, shifts = (part.split(len(part) // self.scale) for part in _affine(block.tdnn1.norm))
        self.res2net = nn.ModuleList(FoldedTdnn(b, precision, before=(scales[i], shifts[i]), scale_plus=i > 1)
                                     for i, b in enumerate(block.res2net_block.blocks, start=1))
        rest = block.tdnn2.conv.conv.in_channels - len(scales[0])
        self.tdnn2 = FoldedTdnn(block.tdnn2, precision, before=(F.pad(scales[0], (0, rest), value=1.0),
                                                                F.pad(shifts[0], (0, rest))))
        first = self.res2net[0]
        self.kernel_size, self.dilation, self.half, self.convolves = (first.kernel_size, first.dilation,
                                                                      first.half, first.convolves)
        self.se1 = _dense(block.se_block.conv1, precision, relu=True)
        self.se2 = _dense(block.se_block.conv2, precision)
        self.shortcut = _dense(block.shortcut, precision)

    def forward(self, x: torch.Tensor, taps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        residual = x if self.shortcut is None else self.shortcut(x)
        x = self.tdnn1(x)
        chunks = x.chunk(self.scale, dim=2)
        # each Res2Net output overwrites the chunk it has just read, so x becomes their concatenation (its first
        # chunk, like each convolution's input, before the first TDNN's batch norm: folded into the readers)
        for index, conv in enumerate(self.res2net, start=1):
            conv(chunks[index], taps, plus=chunks[index - 1] if index > 1 else None, out=chunks[index])
        x = self.tdnn2(x)
        squeezed = torch.bmm(weights, x)[:, 0]  # mean over valid frames, (B, C)
        excite = torch.sigmoid(self.se2(self.se1(squeezed)))
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
        self.mfa = FoldedTdnn(encoder.mfa, precision, affine=False)
        mfa_scale, mfa_shift = _affine(encoder.mfa.norm)
        self.register_buffer("mfa_scale", mfa_scale.detach().float().clone())
        self.register_buffer("mfa_shift", mfa_shift.detach().float().clone())
        asp = encoder.asp
        self.global_context, self.eps = asp.global_context, asp.eps
        tdnn = asp.tdnn.conv.conv  # the attention TDNN (1×1); its batch norm stays an affine map in float32
        weight, channels = tdnn.weight.detach()[..., 0], encoder.mfa.conv.conv.out_channels
        weight_x = weight[:, :channels]  # reads the MFA output before its batch norm: the norm folded in
        self.attention = Dense(*_fold_before(weight_x, tdnn.bias, mfa_scale, mfa_shift), precision)
        # W [x; mean; std] = W_x x + (W_mean mean + W_std std), the latter one constant per row
        self.context = Dense(weight[:, channels:], None, precision) if self.global_context else None
        scale, shift = _affine(asp.tdnn.norm)
        self.register_buffer("attention_scale", scale.detach().clone())
        self.register_buffer("attention_shift", shift.detach().clone())
        conv_weight, conv_bias = asp.conv.conv.weight.detach()[..., 0], asp.conv.conv.bias.detach()
        # softmax over time ignores a per-channel constant: drop the bias; then |score| <= the row's L1 norm
        # (tanh inputs), so exp() needs no running maximum when that bound is small
        self.bounded = precision != "float32" and float(conv_weight.abs().sum(dim=1).max()) <= 40.0
        self.attention_conv = Dense(conv_weight, None if self.bounded else conv_bias, precision)
        self.fc = _dense(encoder.fc, precision, *_affine(encoder.asp_bn))  # asp_bn folded into fc

    def forward(self, features: torch.Tensor, frame_lengths: torch.Tensor | None = None) -> torch.Tensor:
        batch, frames, _ = features.shape
        if frame_lengths is None:
            lengths = torch.full((batch,), frames, dtype=torch.int64, device=features.device)
        else:
            lengths = frame_lengths.to(features.device, torch.int64).clamp(1, frames)
        if features.device.type == "cpu" and frames % FRAME_GRID:  # padded frames change no row's result
            features = F.pad(features, (0, 0, 0, FRAME_GRID - frames % FRAME_GRID))
            frames = features.shape[1]
        mask = torch.arange(frames, device=features.device)[None] < lengths[:, None]  # (B, T)
        weights = (mask / lengths[:, None]).to(self.dtype)  # mean over valid frames, (B, T)
        taps: dict[tuple, torch.Tensor | tuple[torch.Tensor, torch.Tensor]] = {}

        def taps_for(layer: nn.Module) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None:
            if layer.kernel_size == 1:
                return None
            key = (layer.kernel_size, layer.dilation, layer.convolves)
            if key not in taps:
                if layer.convolves:  # as rows of the (B·(frames + 2·half), C) padded buffer
                    start = (torch.arange(batch, device=lengths.device) * (frames + 2 * layer.half))[:, None]
                    taps[key] = tuple((start + index).flatten() for index in reflect_edges(lengths, frames, layer.half))
                else:
                    taps[key] = reflect_taps(lengths, frames, layer.kernel_size, layer.dilation)
            return taps[key]

        x = self.layer0(features.to(self.dtype), taps_for(self.layer0))
        outputs = []
        for block in self.blocks:
            x = block(x, taps_for(block), weights[:, None, :])
            outputs.append(x)
        x = self.mfa(torch.cat(outputs, dim=2))
        return self._pool(x, weights[..., None].float(), mask)

    def _pool(self, r: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Attentive statistics pooling, asp_bn and fc: r (B, T, C) = ReLU of the MFA layer, in the layers'
        dtype (its batch norm x = r * scale + shift is applied to the statistics, never to r) → (B, D)."""
        hidden = self.attention(r).float()
        low = self.precision != "float32"
        if low:
            centre, centred = _centred(r, weights.to(r.dtype))
        if self.context is not None:
            moments = _uniform_moments_low(centre, centred, weights.to(r.dtype)) if low else _moments(r, weights)
            hidden = hidden.add_(self.context(torch.cat(self._normalised(*moments), dim=1))[:, None])
        hidden = torch.addcmul(self.attention_shift, hidden.relu_(), self.attention_scale).tanh_()
        if low:
            scores = self.attention_conv(hidden.to(r.dtype))
            moments = _softmax_moments_low(centre, centred, scores, mask, self.bounded)
        else:
            scores = self.attention_conv(hidden).masked_fill_(~mask[..., None], float("-inf"))
            moments = _moments(r, scores.softmax(dim=1))
        return self.fc(torch.cat(self._normalised(*moments), dim=1))

    def _normalised(self, mean: torch.Tensor, var: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of x = r * scale + shift from r's mean and variance: two (B, C)."""
        return (torch.addcmul(self.mfa_shift, mean, self.mfa_scale),
                (var * self.mfa_scale.square()).clamp_(min=self.eps).sqrt_())


def _moments(r: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 weighted mean and centred variance over time: r (B, T, C), weights (B, T, 1 or C) → two (B, C)."""
    r = r.float()
    mean = (weights * r).sum(dim=1)
    return mean, (weights * (r - mean[:, None]).square()).sum(dim=1)


def _centred(r: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r's mean over valid frames (B, 1, C) and r minus it (B, T, C), in r's dtype; weights (B, T, 1)."""
    centre = torch.bmm(weights.transpose(1, 2), r)
    return centre, r - centre


def _uniform_moments_low(centre: torch.Tensor, centred: torch.Tensor,
                         weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 mean and variance over valid frames from :func:`_centred` (centred: no cancellation in bfloat16)."""
    per_frame = weights.transpose(1, 2)
    shift = torch.bmm(per_frame, centred)[:, 0].float()  # what rounding the centre left
    second = torch.bmm(per_frame, centred.square())[:, 0].float()
    return centre[:, 0].float() + shift, second - shift.square()


def _softmax_moments_low(centre: torch.Tensor, centred: torch.Tensor, scores: torch.Tensor, mask: torch.Tensor,
                         bounded: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 mean and variance of r = centre + centred over time weighted by softmax(scores, dim=1) (consumed)."""
    if not bounded:
        scores = scores.sub_(scores.masked_fill(~mask[..., None], float("-inf")).amax(dim=1, keepdim=True))
    weights = scores.exp_().masked_fill_(~mask[..., None], 0)
    total = weights.sum(dim=1).float()
    weighted = weights.mul_(centred)
    shift = weighted.sum(dim=1).float().div_(total)
    second = weighted.mul_(centred).sum(dim=1).float().div_(total)
    return centre[:, 0].float() + shift, second - shift.square()


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
