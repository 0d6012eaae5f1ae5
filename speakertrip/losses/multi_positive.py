"""Multi-positive triplet loss: per anchor, the mean positive against the mean negative distance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.losses.base import (
    LOSSES,
    REDUCTIONS,
    check_choice,
    check_inputs,
    check_margin,
    full_precision,
    masked_mean,
    penalty,
    reduce,
)
from speakertrip.losses.distances import DISTANCES, pairwise_distances
from speakertrip.losses.miners import AnchorSetMiner


@LOSSES.register("multi_positive")
class MultiPositiveTripletLoss(nn.Module):
    """``1/A Σ_a max(0, mean_{p∈P(a)} d(a,p) − mean_{n∈N(a)} d(a,n) + α)`` over a (B, B) matrix.

    ``A`` counts anchors with at least one positive and one negative in the batch.

    Parameters
    ----------
    margin, distance, soft_margin, reduction, normalize
        As for :class:`~speakertrip.losses.TripletLoss` (``reduction`` averages over anchors).
    hardest_negatives : int or None
        Average only the k closest negatives of each anchor. ``None`` averages all of them, the
        literal formula, which stops learning early on real batches (random negatives are too
        easy: see docs/measurements.md); ``k = K`` of the P×K batch trains well.
    hardest_positives : int or None
        Average only the k farthest positives of each anchor (None: all).
    semi_hard_negatives : bool
        Keep only negatives with ``mean_p < d(a,n) < mean_p + α`` (the hardest one when none).

    ``last_stats`` holds detached 0-dim tensors: ``active_fraction`` (of valid anchors),
    ``positive_distance`` and ``negative_distance`` (means of the per-anchor means).

    >>> loss = MultiPositiveTripletLoss(margin=0.3, hardest_negatives=4)
    >>> loss(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).ndim
    0
    """

    needs_classes = False

    def __init__(self, margin: float = 0.2, distance: str = "sqeuclidean",
                 hardest_negatives: int | None = None, hardest_positives: int | None = None,
                 soft_margin: bool = False, reduction: str = "mean", normalize: bool = False,
                 semi_hard_negatives: bool = False):
        super().__init__()
        self.margin = check_margin(margin, "multi-positive triplet loss")
        self.distance = check_choice(distance, DISTANCES.names(), "distance")
        self.miner = AnchorSetMiner(hardest_positives, hardest_negatives,
                                    self.margin if semi_hard_negatives else None)
        self.soft_margin, self.normalize = bool(soft_margin), bool(normalize)
        self.reduction = check_choice(reduction, REDUCTIONS, "reduction")
        self.last_stats: dict[str, torch.Tensor] = {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Loss of ``embeddings`` (B, D) with speaker ``labels`` (B,) → 0-dim tensor."""
        check_inputs(embeddings, labels, "MultiPositiveTripletLoss")
        with full_precision(embeddings) as embeddings:
            return self._loss(embeddings, labels)

    def _loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=1)
        dist = pairwise_distances(embeddings, self.distance)
        sets = self.miner(dist, labels)
        valid = sets.valid_anchors
        positive = (dist * sets.positives).sum(dim=1) / sets.positives.sum(dim=1).clamp_min(1)
        negative = (dist * sets.negatives).sum(dim=1) / sets.negatives.sum(dim=1).clamp_min(1)
        violation = positive - negative + self.margin
        terms = torch.where(valid, penalty(violation, self.soft_margin), 0.0)
        count = valid.sum()
        with torch.no_grad():
            self.last_stats = {
                "active_fraction": (valid & (violation > 0)).sum() / count.clamp_min(1),
                "positive_distance": masked_mean(positive, valid),
                "negative_distance": masked_mean(negative, valid),
            }
        return reduce(terms.sum(), count, (terms > 0).sum(), self.reduction)

    def extra_repr(self) -> str:
        m = self.miner
        return (f"margin={self.margin}, distance={self.distance!r}, hardest_negatives={m.hardest_negatives}, "
                f"hardest_positives={m.hardest_positives}, semi_hard_negatives={m.semi_hard_margin is not None}, "
                f"soft_margin={self.soft_margin}, reduction={self.reduction!r}")
