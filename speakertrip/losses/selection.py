"""What miners hand to losses: selected triplets (one-positive) or per-anchor sets (multi-positive).

Both are masks over the batch rather than lists of (a, p, n) index triplets, so that batch-all
costs (pairs × B) memory, never B³.

Inside ``with grouped_batch(k):`` (what the trainer does: every label of a P×K batch occurs
exactly K times) pairs are laid out in a fixed (B, K − 1) table instead of being found with
``nonzero``, and the validity checks, which read device values, are skipped: a training step
then never waits for the device. Outside it the layout follows the labels and every
selection is checked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch

_group_size: int | None = None


@contextlib.contextmanager
def grouped_batch(group_size: int) -> Iterator[None]:
    """Losses and miners inside this block may take every label to occur ``group_size`` times.

    Pairs then have fixed shapes (no ``nonzero``, no host reads); a label that occurs fewer
    times leaves empty (masked) slots, one that occurs more often loses its extra positives.

    >>> with grouped_batch(2):
    ...     anchors, positives, valid, width = positive_pairs(torch.tensor([0, 1, 0, 1]))
    >>> anchors.tolist(), positives.tolist(), width
    ([0, 1, 2, 3], [2, 3, 0, 1], 1)
    """
    global _group_size
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"grouped_batch: group_size must be an integer >= 1, got {group_size!r}")
    previous, _group_size = _group_size, group_size
    try:
        yield
    finally:
        _group_size = previous


def fixed_layout() -> bool:
    """Whether the caller runs inside :func:`grouped_batch` (fixed shapes, no checks)."""
    return _group_size is not None


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks of ``labels`` (B,): both (B, B) bool, the diagonal excluded."""
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int | None]:
    """Every anchor-positive pair of ``labels`` (B,): anchors (M,), positives (M,), valid (M,) bool or None, width.

    Without :func:`grouped_batch` the pairs are exactly the positive pairs (``valid`` None,
    ``width`` None). Inside it, they are the (B, W = group_size − 1) table in anchor-major order
    (``width`` W), each anchor's positives first in index order, and ``valid`` marks real pairs.
    Both layouts list the pairs in the same order.
    """
    positive, _ = label_masks(labels)
    if _group_size is None:
        anchors, positives = positive.nonzero(as_tuple=True)
        return anchors, positives, None, None
    width = max(1, min(_group_size - 1, len(labels) - 1))
    order = torch.argsort((~positive).to(torch.uint8), dim=1, stable=True)[:, :width]  # positives first
    anchors = torch.arange(len(labels), device=labels.device)[:, None].expand(-1, width)
    return anchors.reshape(-1), order.reshape(-1), positive.gather(1, order).reshape(-1), width

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
    valid : (M,) bool or None
        Pairs that take part (None: all). Fixed-size layouts mark their empty slots here
        instead of removing them, which would need the count on the host.
    width : int or None
        When set, the pairs are a (B, width) table in anchor-major order: pair ``m`` has
        anchor ``m // width`` (see :func:`positive_pairs`).
    """

    anchors: torch.Tensor
    positives: torch.Tensor
    negatives: torch.Tensor
    per_anchor: bool = False
    valid: torch.Tensor | None = None
    width: int | None = None

    def pair_negatives(self) -> torch.Tensor:
        """(M, B) bool: the negatives of each pair, whatever the layout."""
        return self.negatives[self.anchors] if self.per_anchor else self.negatives

    def negatives_per_pair(self) -> torch.Tensor:
        """(M,) long: how many negatives each pair has (0 for pairs that are not ``valid``)."""
        counts = self.negatives.sum(dim=1)
        counts = counts[self.anchors] if self.per_anchor else counts
        return counts if self.valid is None else counts * self.valid

    @property
    def num_triplets(self) -> torch.Tensor:
        """The number of selected triplets, a 0-dim tensor (no device sync)."""
        return self.negatives_per_pair().sum()

    def subset(self, keep: torch.Tensor) -> "Triplets":
        """The pairs where ``keep`` (M,) is true (in a fixed layout: marked, not removed)."""
        if self.width is not None:
            valid = keep if self.valid is None else self.valid & keep
            return Triplets(self.anchors, self.positives, self.negatives, self.per_anchor, valid, self.width)
        if self.valid is not None:
            keep = keep & self.valid
        negatives = self.negatives if self.per_anchor else self.negatives[keep]
        return Triplets(self.anchors[keep], self.positives[keep], negatives, self.per_anchor)

    def check(self, labels: torch.Tensor, source: str) -> None:
        """Raise ``ValueError`` naming ``source`` unless every selected triplet is valid for ``labels``.

        Skipped inside :func:`grouped_batch` (it reads device values).
        """
        if fixed_layout():
            return
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
        """Raise ``ValueError`` naming ``source`` unless both sets are subsets of the label masks.

        Skipped inside :func:`grouped_batch` (it reads device values).
        """
        if fixed_layout():
            return
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
