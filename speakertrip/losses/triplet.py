"""One-positive triplet loss over mined triplets: ``1/N Σ max(0, d(a,p) − d(a,n) + α)``."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.losses.base import (LOSSES, REDUCTIONS, check_choice, check_inputs, check_margin,
                                     masked_mean, penalty, reduce)
from speakertrip.losses.distances import DISTANCES, pairwise_distances
from speakertrip.losses.miners import Miner, build_miner


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
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        dist = pairwise_distances(embeddings, self.distance)
        triplets = self.miner(dist, labels, embeddings)
        positive = dist[triplets.anchors, triplets.positives]  # (M,)
        negative = dist[triplets.anchors]  # (M, B); selected columns in triplets.negatives
        violation = positive[:, None] - negative + self.margin
        terms = torch.where(triplets.negatives, penalty(violation, self.soft_margin), 0.0)
        count = triplets.num_triplets
        with torch.no_grad():
            active = (triplets.negatives & (violation > 0)).sum()
            self.last_stats = {
                "active_fraction": active / count.clamp_min(1),
                "positive_distance": masked_mean(positive, torch.ones_like(positive, dtype=torch.bool)),
                "negative_distance": masked_mean(negative, triplets.negatives),
            }
        return reduce(terms, count, self.reduction)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, distance={self.distance!r}, miner={self.miner!r}, "
                f"soft_margin={self.soft_margin}, reduction={self.reduction!r}, normalize={self.normalize}")
