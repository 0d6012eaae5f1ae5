"""Sum triplet penalties in O(B²) memory: pairs laid out as (anchor, slot), one slot at a time.

Anchor-positive pairs are grouped by anchor into a (B, W) table of thresholds
``t = d(a,p) + α`` (W = the most positives any anchor has, K − 1 in a P×K batch). For slot j
the violations of every anchor against every negative form one (B, B) matrix
``t[:, j] − d``; a custom backward recomputes it instead of keeping (M, B) activations,
so batch-all at B = 4096 needs a few B×B buffers, not B³ (or even M×B) memory.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def pair_slots(anchors: torch.Tensor, batch: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Order of the pairs grouped by anchor (M,), each pair's slot within its anchor (M,), and W."""
    order = anchors.argsort(stable=True)
    per_anchor = torch.bincount(anchors, minlength=batch)
    starts = per_anchor.cumsum(0) - per_anchor
    slot = torch.arange(len(anchors), device=anchors.device) - starts[anchors[order]]
    return order, slot, int(per_anchor.max()) if len(anchors) else 0


def _violation(dist: torch.Tensor, thresholds: torch.Tensor, negatives: torch.Tensor, slot: int) -> torch.Tensor:
    """(B, B): ``t[a, slot] − d(a, n)`` where selected, −inf elsewhere."""
    mask = negatives if negatives.ndim == 2 else negatives[:, slot]
    return (thresholds[:, slot, None] - dist).masked_fill(~mask, -math.inf)


class SlotPenaltySum(torch.autograd.Function):
    """``Σ_{a, j, n selected} penalty(t[a, j] − d[a, n])`` and the count of positive violations.

    Inputs: ``dist`` (B, B), ``thresholds`` (B, W) with −inf in empty slots, ``negatives``
    (B, B) bool shared by an anchor's slots or (B, W, B) bool per slot, ``soft`` (softplus
    instead of the hinge).
    """

    @staticmethod
    def forward(ctx, dist, thresholds, negatives, soft):
        total = dist.new_zeros(())
        active = torch.zeros((), dtype=torch.long, device=dist.device)
        for slot in range(thresholds.shape[1]):
            violation = _violation(dist, thresholds, negatives, slot)
            terms = F.softplus(violation) if soft else violation.clamp_min(0)
            total += terms.sum()
            active += torch.count_nonzero(terms if not soft else violation > 0)
        ctx.save_for_backward(dist, thresholds, negatives)
        ctx.soft = soft
        ctx.mark_non_differentiable(active)
        return total, active

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_total, _):
        dist, thresholds, negatives = ctx.saved_tensors
        grad_dist, grad_thresholds = torch.zeros_like(dist), torch.zeros_like(thresholds)
        for slot in range(thresholds.shape[1]):
            violation = _violation(dist, thresholds, negatives, slot)
            slope = torch.sigmoid(violation) if ctx.soft else (violation > 0).to(dist.dtype)
            grad_thresholds[:, slot] = slope.sum(dim=1)
            grad_dist -= slope
        return grad_dist * grad_total, grad_thresholds * grad_total, None, None
