"""What every loss shares: the loss registry, input checks and reductions."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from speakertrip.errors import ConfigError
from speakertrip.options import construct
from speakertrip.registry import Registry

LOSSES: Registry = Registry("loss")
REDUCTIONS = ("mean", "mean_nonzero", "sum")


def build_loss(kind: str, *, embedding_dim: int | None = None, num_classes: int | None = None,
               **options: Any) -> nn.Module:
    """A loss module by registered name, e.g. ``"triplet"``, ``"multi_positive"``, ``"aam"``, ``"triplet+aam"``.

    ``embedding_dim`` and ``num_classes`` go only to losses that need them (see
    :func:`loss_needs_classes`), so a trainer may always pass them. Unknown options fail.

    >>> loss = build_loss("triplet", margin=0.3, miner="batch_hard")
    >>> loss(torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])).shape
    torch.Size([])
    """
    factory = LOSSES.get(kind)
    if loss_needs_classes(kind):
        if embedding_dim is None or num_classes is None:
            raise ConfigError(f"loss {kind!r} has a classification head: it needs embedding_dim and "
                              f"num_classes (got {embedding_dim!r} and {num_classes!r})")
        options = {"embedding_dim": embedding_dim, "num_classes": num_classes, **options}
    return construct(factory, options, f"loss {kind!r}")


def loss_needs_classes(kind: str) -> bool:
    """Whether loss ``kind`` has per-speaker weights (so needs ``num_classes`` and integer labels 0..C-1)."""
    return bool(getattr(LOSSES.get(kind), "needs_classes", False))


def check_choice(value: Any, choices: tuple[str, ...] | list[str], what: str) -> str:
    """``value`` if it is one of ``choices``, else a ``ConfigError`` listing them."""
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; valid: {', '.join(choices)}")
    return value


def check_margin(margin: Any, what: str) -> float:
    """``margin`` as a float if it is a finite number >= 0."""
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin < float("inf"):
        raise ConfigError(f"{what}: margin must be a finite number >= 0, got {margin!r}")
    return float(margin)


def check_inputs(embeddings: torch.Tensor, labels: torch.Tensor, what: str) -> None:
    """Raise ``ValueError`` unless ``embeddings`` is (B, D) floating and ``labels`` (B,) integer on its device."""
    if embeddings.ndim != 2 or not embeddings.is_floating_point():
        raise ValueError(f"{what}: embeddings must be a (batch, dim) floating tensor, "
                         f"got {tuple(embeddings.shape)} {embeddings.dtype}")
    if labels.shape != (len(embeddings),) or labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{what}: labels must be a ({len(embeddings)},) integer tensor, "
                         f"got {tuple(labels.shape)} {labels.dtype}")
    if labels.device != embeddings.device:
        raise ValueError(f"{what}: labels are on {labels.device} but embeddings on {embeddings.device}")


@contextlib.contextmanager
def full_precision(embeddings: torch.Tensor) -> Iterator[torch.Tensor]:
    """Compute a loss in at least float32 with autocast off: ``with full_precision(e) as e: ...``.

    Distances of nearby unit vectors lose all their digits in bfloat16 (8 bits of mantissa).
    """
    with torch.autocast(embeddings.device.type, enabled=False):
        yield embeddings.float() if embeddings.dtype in (torch.float16, torch.bfloat16) else embeddings


def penalty(violation: torch.Tensor, soft_margin: bool) -> torch.Tensor:
    """The hinge ``max(0, v)``, or ``softplus(v)`` for the soft-margin variant (Hermans et al.)."""
    return F.softplus(violation) if soft_margin else F.relu(violation)


def reduce(total: torch.Tensor, count: torch.Tensor, nonzero: torch.Tensor, reduction: str) -> torch.Tensor:
    """The loss from the ``total`` of ``count`` selected terms, ``nonzero`` of them positive.

    ``"mean"`` divides by ``count`` (the definition), ``"mean_nonzero"`` by ``nonzero``
    (pytorch-metric-learning's default), ``"sum"`` does not divide. With no selected or no
    positive term the loss is an exact 0 that still has a (zero) gradient.
    """
    if reduction == "sum":
        return total
    denominator = count if reduction == "mean" else nonzero
    return total / denominator.clamp_min(1).to(total.dtype)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Detached mean of ``values`` where ``mask``; NaN when the mask is empty."""
    values, mask = values.detach(), mask.to(values.dtype)
    return (values * mask).sum() / mask.sum()
