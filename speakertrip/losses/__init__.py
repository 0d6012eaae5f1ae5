"""Triplet losses, miners, and the AAM-softmax baseline.

>>> import torch
>>> from speakertrip.losses import TripletLoss
>>> loss = TripletLoss(margin=0.2, miner="batch_hard")
>>> loss(torch.randn(8, 16), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).ndim
0
"""

from __future__ import annotations

from speakertrip.losses.base import LOSSES, REDUCTIONS, build_loss, loss_needs_classes
from speakertrip.losses.combined import CombinedLoss
from speakertrip.losses.distances import DISTANCES, pairwise_distances
from speakertrip.losses.margin_softmax import AAMSoftmax
from speakertrip.losses.miners import (
                                       MINERS,
                                       AnchorSetMiner,
                                       BatchAllMiner,
                                       BatchHardMiner,
                                       DistanceWeightedMiner,
                                       HardestKMiner,
                                       Miner,
                                       RandomNegativeMiner,
                                       SemiHardMiner,
                                       build_miner,
)
from speakertrip.losses.multi_positive import MultiPositiveTripletLoss
from speakertrip.losses.selection import AnchorSets, Triplets
from speakertrip.losses.triplet import TripletLoss

__all__ = [
    "AAMSoftmax", "AnchorSetMiner", "AnchorSets", "BatchAllMiner", "BatchHardMiner", "CombinedLoss",
    "DISTANCES", "DistanceWeightedMiner", "HardestKMiner", "LOSSES", "MINERS", "Miner",
    "MultiPositiveTripletLoss", "REDUCTIONS", "RandomNegativeMiner", "SemiHardMiner", "TripletLoss",
    "Triplets", "build_loss", "build_miner", "loss_needs_classes", "pairwise_distances",
]
