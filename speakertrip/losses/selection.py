"""What miners hand to losses: selected triplets (one-positive) or per-anchor sets (multi-positive).

Both are masks over the batch rather than lists of (a, p, n) index triplets, so that batch-all
costs (pairs × B) memory, never B³.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of ``labels`` (B,): both (B, B) bool, the diagonal excluded."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


@dataclass
class Triplets:
    """Selected triplets: anchor-positive pairs, each with a set of negatives.

    Attributes
    ----------
    anchors, positives : (M,) long
        The M anchor-positive pairs (same label, different index).
    negatives : (M, B) or (B, B) bool
        Per pair: ``negatives[m, n]`` selects the triplet ``(anchors[m], positives[m], n)``.
        Per anchor (``per_anchor=True``): row ``a`` is the negative set of every pair whose
        anchor is ``a`` (batch-all, hardest-k, batch-hard), which lets the hinge loss be summed
        by sorting each anchor's negatives instead of building an (M, B) matrix.
    per_anchor : bool
        Which of the two layouts ``negatives`` has.
    """

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    per_anchor: bool = False

    def pair_negatives(self) -> torch.Tensor:
        """(M, B) bool: the negatives of each pair, whatever the layout."""
        return self.negatives[self.anchors] if self.per_anchor else self.negatives

    def negatives_per_pair(self) -> torch.Tensor:
        """(M,) long: how many negatives each pair has."""
        counts = self.negatives.sum(dim=1)
        return counts[self.anchors] if self.per_anchor else counts

    @property
    def num_triplets(self) -> torch.Tensor:
        """The number of selected triplets, a 0-dim tensor (no device sync)."""
        return self.negatives_per_pair().sum()

    def subset(self, keep: torch.Tensor) -> "Triplets":
        """The pairs where ``keep`` (M,) is true."""
        negatives = self.negatives if self.per_anchor else self.negatives[keep]
        return Triplets(self.anchors[keep], self.positives[keep], negatives, self.per_anchor)

    def check(self, labels: torch.Tensor, source: str) -> None:
        """Raise ``ValueError`` naming ``source`` unless every selected triplet is valid for ``labels``."""
        batch = len(labels)
        count = len(self.anchors)
        rows = batch if self.per_anchor else count
        if (self.anchors.shape != (count,) or self.positives.shape != (count,)
                or self.negatives.shape != (rows, batch) or self.negatives.dtype != torch.bool):
            raise ValueError(
                f"{source} returned anchors {tuple(self.anchors.shape)}, positives "
                f"{tuple(self.positives.shape)}, negatives {tuple(self.negatives.shape)} "
                f"{self.negatives.dtype}; expected (M,), (M,) and a ({rows}, {batch}) bool mask")
        if count == 0:
            return
        for name, index in (("anchor", self.anchors), ("positive", self.positives)):
            if index.min() < 0 or index.max() >= batch:
                raise ValueError(f"{source} returned a {name} index outside 0..{batch - 1}")
        if (self.anchors == self.positives).any() or (labels[self.anchors] != labels[self.positives]).any():
            raise ValueError(f"{source} returned a positive that is the anchor itself or has another label")
        row_labels = labels if self.per_anchor else labels[self.anchors]
        if (self.negatives & (row_labels[:, None] == labels[None, :])).any():
            raise ValueError(f"{source} returned a negative with the anchor's label")


@dataclass
class AnchorSets:
    """Per-anchor positive and negative sets for the multi-positive loss.

    Attributes
    ----------
    positives, negatives : (B, B) bool
        Row ``a`` marks the positives (same label, not ``a``) and negatives (other labels) used
        for anchor ``a``. Anchors with an empty set of either kind take no part in the loss.
    """

    positives: torch.Tensor
    negatives: torch.Tensor

    @property
    def valid_anchors(self) -> torch.Tensor:
        """(B,) bool: anchors with at least one positive and one negative."""
        return self.positives.any(dim=1) & self.negatives.any(dim=1)

    def check(self, labels: torch.Tensor, source: str) -> None:
        """Raise ``ValueError`` naming ``source`` unless both sets are subsets of the label masks."""
        batch = len(labels)
        for name, mask in (("positives", self.positives), ("negatives", self.negatives)):
            if mask.shape != (batch, batch) or mask.dtype != torch.bool:
                raise ValueError(f"{source} returned {name} {tuple(mask.shape)} {mask.dtype}; "
                                 f"expected a ({batch}, {batch}) bool mask")
        positive, negative = label_masks(labels)
        if (self.positives & ~positive).any():
            raise ValueError(f"{source} returned a positive that is the anchor itself or has another label")
        if (self.negatives & ~negative).any():
            raise ValueError(f"{source} returned a negative with the anchor's label")
