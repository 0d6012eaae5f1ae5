"""Pairwise distance matrices (B×B), computed once per batch and shared by miners and losses."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from speakertrip.registry import Registry

DISTANCES: Registry = Registry("distance")


@DISTANCES.register("sqeuclidean")
def squared_euclidean(embeddings: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``‖x_i − x_j‖²`` of the rows of ``embeddings`` (B, D) → (B, B).

    Expanded as ``‖x_i‖² + ‖x_j‖² − 2 x_i·x_j`` (one matrix product), clamped at 0 and with an
    exact zero diagonal, so rounding never yields a negative distance.
    """
    squares = embeddings.pow(2).sum(dim=1)
    gram = embeddings @ embeddings.T
    dist = (squares[:, None] + squares[None, :] - 2.0 * gram).clamp_min(0.0)
    dist.diagonal().zero_()  # clamp_min keeps its input for backward, so this in-place edit is safe
    return dist


@DISTANCES.register("euclidean")
def euclidean(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances ``‖x_i − x_j‖`` (B, D) → (B, B).

    The square root is taken only where the squared distance is positive, so the gradient at
    coincident points (the diagonal) is 0 instead of NaN.
    """
    squared = squared_euclidean(embeddings)
    positive = squared > 0
    return torch.where(positive, squared.clamp_min(torch.finfo(squared.dtype).tiny).sqrt(), 0.0)


@DISTANCES.register("cosine")
def cosine(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine distances ``1 − cos(x_i, x_j)`` (B, D) → (B, B), in [0, 2]."""
    unit = F.normalize(embeddings, dim=1)
    dist = 1.0 - unit @ unit.T  # rsub keeps nothing for backward, so the in-place edit is safe
    dist.diagonal().zero_()
    return dist


def pairwise_distances(embeddings: torch.Tensor, kind: str = "sqeuclidean") -> torch.Tensor:
    """The (B, B) matrix of ``kind`` distances between the rows of ``embeddings`` (B, D).

    >>> x = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    >>> pairwise_distances(x, "euclidean")
    tensor([[0., 5.],
            [5., 0.]])
    """
    return DISTANCES.get(kind)(embeddings)


def unit_sphere_euclidean(embeddings: torch.Tensor) -> torch.Tensor:
    """Euclidean distances between the L2-normalised rows (B, D) → (B, B), in [0, 2]."""
    return euclidean(F.normalize(embeddings, dim=1))
