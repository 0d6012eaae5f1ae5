"""A metric loss plus a weighted classification head: ``triplet + w · AAM``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.losses.base import LOSSES
from speakertrip.losses.margin_softmax import AAMSoftmax
from speakertrip.losses.multi_positive import MultiPositiveTripletLoss
from speakertrip.losses.triplet import TripletLoss
from speakertrip.options import construct


class CombinedLoss(nn.Module):
    """``metric(e, y) + aam_weight · head(e, y)``; the head's weights are parameters of this module.

    ``last_stats`` holds the metric loss's statistics, the head's (``accuracy``, ...) and both
    terms (``metric_loss``, ``aam_loss``).

    >>> loss = CombinedLoss(TripletLoss(), AAMSoftmax(16, 4), aam_weight=0.5)
    >>> loss(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).ndim
    0
    """

    needs_classes = True

    def __init__(self, metric: nn.Module, aam: AAMSoftmax, aam_weight: float = 1.0):
        super().__init__()
        if isinstance(aam_weight, bool) or not isinstance(aam_weight, (int, float)) or not aam_weight >= 0:
            raise ConfigError(f"aam_weight must be a number >= 0, got {aam_weight!r}")
        self.metric, self.aam, self.aam_weight = metric, aam, float(aam_weight)
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``metric + aam_weight · aam`` of ``embeddings`` (B, D) and ``labels`` (B,) → 0-dim tensor."""
        metric_loss = self.metric(embeddings, labels)
        aam_loss = self.aam(embeddings, labels)
        self.last_stats = {**self.metric.last_stats, **self.aam.last_stats,
                           "metric_loss": metric_loss.detach(), "aam_loss": aam_loss.detach()}
        return metric_loss + self.aam_weight * aam_loss


def _combine(metric_class: type, metric_name: str):
    def build(embedding_dim: int, num_classes: int, aam_weight: float = 1.0,
              metric: Mapping[str, Any] | None = None, aam: Mapping[str, Any] | None = None) -> CombinedLoss:
        head = construct(AAMSoftmax, {"embedding_dim": embedding_dim, "num_classes": num_classes,
                                      **(aam or {})}, "aam options")
        return CombinedLoss(construct(metric_class, dict(metric or {}), f"{metric_name} options"),
                            head, aam_weight)

    build.needs_classes = True
    build.__doc__ = (f"``{metric_name}`` (options in ``metric``) plus ``aam_weight`` × AAM softmax "
                     f"(options in ``aam``: margin, scale, easy_margin).")
    return build


LOSSES.register("triplet+aam")(_combine(TripletLoss, "triplet"))
LOSSES.register("multi_positive+aam")(_combine(MultiPositiveTripletLoss, "multi_positive"))
