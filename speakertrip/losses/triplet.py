"""One-positive triplet loss over mined triplets: ``1/N Σ max(0, d(a,p) − d(a,n) + α)``."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.losses.base import (LOSSES, REDUCTIONS, check_choice, check_inputs, check_margin,
                                     full_precision, masked_mean, reduce)
from speakertrip.losses.distances import DISTANCES, pairwise_distances
from speakertrip.losses.miners import Miner, build_miner
from speakertrip.losses.selection import Triplets
from speakertrip.losses.slots import SlotPenaltySum, pair_slots


@LOSSES.register("triplet")
class TripletLoss(nn.Module):
    """Triplet loss over the triplets a miner selects from one (B, B) distance matrix.

    Parameters
    ----------
    margin : float
        α, in units of ``distance``.
    distance : str
        ``"sqeuclidean"`` (default), ``"euclidean"`` or ``"cosine"`` (1 − cos).
    miner : str, mapping or Miner
        ``"batch_all"`` (every valid triplet, the default), ``"batch_hard"``, ``"semi_hard"``,
        ``"hardest_k"``, ``"distance_weighted"``, ``"random"``; a mapping such as
        ``{"name": "hardest_k", "k": 8}``; or a :class:`Miner`.
    soft_margin : bool
        ``softplus(d(a,p) − d(a,n) + α)`` in place of the hinge (set ``margin=0`` for Hermans et al.).
    reduction : str
        ``"mean"`` over selected triplets (default), ``"mean_nonzero"`` (over positive terms,
        as pytorch-metric-learning) or ``"sum"``.
    normalize : bool
        L2-normalise the embeddings first (normally the model already does).

    After each call ``last_stats`` holds detached 0-dim tensors: ``active_fraction`` (triplets
    with ``d(a,p) − d(a,n) + α > 0``), ``positive_distance`` and ``negative_distance`` (means
    over the selected pairs and triplets; NaN when there are none).

    >>> loss = TripletLoss(margin=0.2, miner="batch_hard")
    >>> value = loss(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3]))
    >>> value.ndim, sorted(loss.last_stats)
    (0, ['active_fraction', 'negative_distance', 'positive_distance'])
    """

    needs_classes = False

    def __init__(self, margin: float = 0.2, distance: str = "sqeuclidean",
                 miner: str | Mapping | Miner = "batch_all", soft_margin: bool = False,
                 reduction: str = "mean", normalize: bool = False):
        super().__init__()
        self.margin = check_margin(margin, "triplet loss")
        self.distance = check_choice(distance, DISTANCES.names(), "distance")
        self.miner = build_miner(miner, margin=self.margin)
        self.soft_margin, self.normalize = bool(soft_margin), bool(normalize)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``embeddings`` (B, D) with speaker ``labels`` (B,) → 0-dim tensor."""
        check_inputs(embeddings, labels, "TripletLoss")
        with full_precision(embeddings) as embeddings:
            if self.normalize:
                embeddings = F.normalize(embeddings, dim=1)
            dist = pairwise_distances(embeddings, self.distance)
            triplets = self.miner(dist, labels, embeddings)
            positive = dist[triplets.anchors, triplets.positives]  # (M,)
            total, active = penalty_sum(dist, triplets, positive + self.margin, self.soft_margin)
            nonzero = triplets.num_triplets if self.soft_margin else active
            count = triplets.num_triplets
            with torch.no_grad():
                self.last_stats = {
                    "active_fraction": active / count.clamp_min(1),
                    "positive_distance": positive.detach().mean() if triplets.valid is None
                    else masked_mean(positive, triplets.valid),
                    "negative_distance": negative_sum(dist, triplets) / count,
                }
            return reduce(total, count, nonzero, self.reduction)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, distance={self.distance!r}, miner={self.miner!r}, "
                f"soft_margin={self.soft_margin}, reduction={self.reduction!r}, normalize={self.normalize}")


def penalty_sum(dist: torch.Tensor, triplets: Triplets, thresholds: torch.Tensor,
                soft_margin: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ penalty(t_m − d(a_m, n)) over selected triplets, ``thresholds`` t (M,) = d(a,p) + α.

    Returns the differentiable total (0-dim) and the number of triplets with t − d(a,n) > 0.
    """
    if triplets.valid is not None:
        thresholds = thresholds.masked_fill(~triplets.valid, -math.inf)
    negatives = triplets.negatives
    if triplets.width is not None:  # already a (B, W) table: no sort, no host read
        table = thresholds.view(len(dist), triplets.width)
        if not triplets.per_anchor:
            negatives = negatives.view(len(dist), triplets.width, len(dist))
        return SlotPenaltySum.apply(dist, table, negatives, soft_margin)
    order, slot, width = pair_slots(triplets.anchors, len(dist))
    anchors = triplets.anchors[order]
    table = dist.new_full((len(dist), width), -math.inf).index_put((anchors, slot), thresholds[order])
    if not triplets.per_anchor:
        negatives = negatives.new_zeros((len(dist), width, len(dist))).index_put((anchors, slot), negatives[order])
    return SlotPenaltySum.apply(dist, table, negatives, soft_margin)


def negative_sum(dist: torch.Tensor, triplets: Triplets) -> torch.Tensor:
    """Detached sum of ``d(a,n)`` over the selected triplets."""
    dist = dist.detach()
    if triplets.per_anchor:
        per_pair = (dist * triplets.negatives).sum(dim=1)[triplets.anchors]
    else:
        per_pair = (dist[triplets.anchors] * triplets.negatives).sum(dim=1)
    return (per_pair if triplets.valid is None else per_pair * triplets.valid).sum()
