"""The encoder registry: names → builders of (features, frame lengths) → embedding modules.

Every builder takes ``input_size`` (the number of mel bins) and keyword options; it returns an
``nn.Module`` with an ``embedding_dim`` attribute whose ``forward(features (B, frames, n_mels),
frame_lengths (B,) int64 | None) -> (B, embedding_dim)`` returns unnormalised embeddings.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import torch
from torch import nn

from speakertrip.options import construct
from speakertrip.registry import Registry

ENCODERS: Registry[Callable[..., nn.Module]] = Registry("encoder")


def build_encoder(name: str, input_size: int, options: Mapping[str, Any] | None = None) -> nn.Module:
    """Build the encoder registered as ``name`` for ``input_size`` mel bins.

    Unknown option names and values of the wrong type raise :class:`ConfigError`.

    >>> build_encoder("ecapa", 40, {"channels": 32}).embedding_dim
    192
    """
    return construct(functools.partial(ENCODERS.get(name), input_size), dict(options or {}), f"encoder {name!r}")


def relative_lengths(features: torch.Tensor, frame_lengths: torch.Tensor | None) -> torch.Tensor | None:
    """SpeechBrain's length convention: valid frames as a fraction of the padded length, (B,) float32.

    SpeechBrain masks frames with ``arange(T) < lengths * T``; in float32 ``(n / T) * T`` can
    exceed ``n`` and let one padded frame in, so the fraction is taken at ``n - 0.5`` frames.

    >>> relative_lengths(torch.zeros(2, 4, 1), torch.tensor([4, 2]))
    tensor([0.8750, 0.3750])
    """
    if frame_lengths is None:
        return None
    frames = frame_lengths.to(device=features.device, dtype=torch.float32)
    return (frames - 0.5) / max(features.shape[1], 1)


def in_float32(layer: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``layer(x)`` in float32 even under autocast (float64 stays float64): pooling statistics, and an encoder's
    final embedding layer, so that the embedding is not rounded to bfloat16 before the loss."""
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x)
