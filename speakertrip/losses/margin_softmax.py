"""Additive angular margin softmax (ArcFace / AAM-softmax): the classification baseline of the field."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.losses.base import LOSSES, check_inputs, check_margin, full_precision
from speakertrip.losses.selection import fixed_layout


@LOSSES.register("aam")
class AAMSoftmax(nn.Module):
    """Cross-entropy over ``s·cos(θ_y + m)`` for the true speaker and ``s·cos θ_j`` for the others.

    ``θ_j`` is the angle between the embedding and speaker j's weight vector. As in SpeechBrain
    and WeSpeaker, past ``θ = π − m`` (where ``cos(θ + m)`` would stop decreasing) the target
    logit becomes ``cos θ − m·sin m``, unless ``easy_margin`` applies the margin only where
    ``cos θ > 0``.

    Parameters
    ----------
    embedding_dim, num_classes : int
        D and the number of training speakers (labels are 0..num_classes-1).
    margin : float
        m, in radians.
    scale : float
        s.

    ``last_stats`` holds detached 0-dim tensors: ``accuracy`` (argmax of the cosines, without
    margin) and ``mean_target_cosine``.

    >>> head = AAMSoftmax(embedding_dim=16, num_classes=4)
    >>> head(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).ndim
    0
    """

    needs_classes = True

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.2, scale: float = 30.0,
                 easy_margin: bool = False):
        super().__init__()
        for name, value in (("embedding_dim", embedding_dim), ("num_classes", num_classes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"AAM softmax: {name} must be an integer >= 1, got {value!r}")
        self.margin = check_margin(margin, "AAM softmax")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0 < scale < math.inf:
            raise ConfigError(f"AAM softmax: scale must be a finite number > 0, got {scale!r}")
        self.scale, self.easy_margin = float(scale), bool(easy_margin)
        self.weight = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.xavier_normal_(self.weight)
        self.last_stats: dict[str, torch.Tensor] = {}

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Margin logits (B, C) and plain cosines (B, C) of ``embeddings`` (B, D)."""
        cosine = F.linear(F.normalize(embeddings, dim=1), F.normalize(self.weight, dim=1))
        clamped = cosine.clamp(-1 + 1e-7, 1 - 1e-7)
        sine = (1.0 - clamped.pow(2)).sqrt()
        shifted = clamped * math.cos(self.margin) - sine * math.sin(self.margin)  # cos(θ + m)
        if self.easy_margin:
            shifted = torch.where(clamped > 0, shifted, clamped)
        else:
            shifted = torch.where(clamped > -math.cos(self.margin), shifted,
                                  clamped - math.sin(self.margin) * self.margin)
        target = torch.zeros_like(cosine, dtype=torch.bool).scatter_(1, labels.long()[:, None], True)  # one_hot reads max
        return self.scale * torch.where(target, shifted, clamped), cosine

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of ``embeddings`` (B, D) with class ``labels`` (B,) → 0-dim tensor."""
        check_inputs(embeddings, labels, "AAMSoftmax")
        if embeddings.shape[1] != self.weight.shape[1]:
            raise ValueError(f"AAMSoftmax: embeddings have dimension {embeddings.shape[1]}, "
                             f"the head was built for {self.weight.shape[1]}")
        if len(labels) and not fixed_layout():  # reads two device values: not on the training hot path
            low, high = torch.stack([labels.min(), labels.max()]).tolist()
            if low < 0 or high >= len(self.weight):
                raise ValueError(f"AAMSoftmax: labels must lie in 0..{len(self.weight) - 1} "
                                 f"(num_classes={len(self.weight)}), got {low}..{high}")
        with full_precision(embeddings) as embeddings:
            logits, cosine = self.logits(embeddings, labels)
            loss = F.cross_entropy(logits, labels.long())
        with torch.no_grad():
            self.last_stats = {
                "accuracy": (cosine.argmax(dim=1) == labels).to(cosine.dtype).mean(),
                "mean_target_cosine": cosine.gather(1, labels.long()[:, None]).mean(),
            }
        return loss

    def extra_repr(self) -> str:
        return (f"embedding_dim={self.weight.shape[1]}, num_classes={self.weight.shape[0]}, "
                f"margin={self.margin}, scale={self.scale}, easy_margin={self.easy_margin}")
