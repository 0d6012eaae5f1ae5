"""Gather embeddings and labels from every DDP rank so that mining sees the global batch."""

from __future__ import annotations

import torch
import torch.distributed as dist


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _gather_sizes(local_size: int, device: torch.device) -> list[int]:
    size = torch.tensor([local_size], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _all_gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (n_r, ...) in rank order; ranks may hold different n_r."""
    padded = tensor.new_zeros((max(sizes), *tensor.shape[1:]))
    padded[: len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherWithGradient(torch.autograd.Function):
    """All-gather whose backward sums every rank's gradient for the local rows.

    Every rank computes the same loss on the global batch, and DDP divides the summed
    parameter gradients by the world size W. Summing (not slicing) the gradients here makes
    the local rows receive W × ∂L/∂e_local, so that after DDP's average the parameters get
    exactly the gradient of one process computing L on the concatenated batch.
    """

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        rank = dist.get_rank()
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return _all_gather_rows(local, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.start: ctx.stop], None


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' ``embeddings`` (B_r, D) and ``labels`` (B_r,) concatenated in rank order.

    Gradients flow back to this rank's rows only, scaled so that DDP's averaged parameter
    gradients equal those of a single process on the concatenated batch (the local embeddings'
    own ``.grad`` is therefore ``world_size`` times that process's). Every rank must call it at
    every step (it is a collective). Without an initialised process group of more than one
    rank it returns its inputs unchanged.

    >>> e, y = gather_batch(torch.ones(2, 3), torch.tensor([0, 1]))  # single process: a no-op
    >>> e.shape, y.tolist()
    (torch.Size([2, 3]), [0, 1])
    """
    if not _is_distributed():
        return embeddings, labels
    if len(labels) != len(embeddings):
        raise ValueError(f"gather_batch: {len(embeddings)} embeddings but {len(labels)} labels")
    sizes = _gather_sizes(len(embeddings), embeddings.device)
    return _GatherWithGradient.apply(embeddings, sizes), _all_gather_rows(labels, sizes)
