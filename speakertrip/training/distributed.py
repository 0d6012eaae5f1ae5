"""DDP: set-up from the environment that ``torchrun`` provides (one process a device), and the
gather of every rank's embeddings so that mining sees the global batch."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Distributed:
    """This process's place: ``world_size`` processes, global ``rank``, ``local_rank`` on its node."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` (a picklable Python value) on every rank; a collective. Decisions that change
        which collectives a rank runs next (stop, save) must come from one value, or the ranks hang.

        >>> Distributed().broadcast(0.25)  # one process: the value itself
        0.25
        """
        if not self.enabled:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` → the local rank's GPU when CUDA is available, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Join the process group when launched by torchrun (``WORLD_SIZE`` > 1): NCCL on GPUs, gloo on CPUs."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    info = Distributed(world_size, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name, info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.enabled and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return info, device


def cleanup_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()

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


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor,
                 sizes: list[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' ``embeddings`` (B_r, D) and ``labels`` (B_r,) concatenated in rank order.

    Gradients flow back to this rank's rows only, scaled so that DDP's averaged parameter
    gradients equal those of a single process on the concatenated batch (the local embeddings'
    own ``.grad`` is therefore ``world_size`` times that process's). Every rank must call it at
    every step (it is a collective). Without an initialised process group of more than one
    rank it returns its inputs unchanged. ``sizes`` (every rank's B_r, in rank order) saves an
    all-gather of the sizes and a host read per call when the caller knows them (P×K batches).

    >>> e, y = gather_batch(torch.ones(2, 3), torch.tensor([0, 1]))  # single process: a no-op
    >>> e.shape, y.tolist()
    (torch.Size([2, 3]), [0, 1])
    """
    if not _is_distributed():
        return embeddings, labels
    if len(labels) != len(embeddings):
        raise ValueError(f"gather_batch: {len(embeddings)} embeddings but {len(labels)} labels")
    if sizes is None:
        sizes = _gather_sizes(len(embeddings), embeddings.device)
    elif len(sizes) != dist.get_world_size() or sizes[dist.get_rank()] != len(embeddings):
        raise ValueError(f"gather_batch: sizes {sizes} do not fit {dist.get_world_size()} ranks with "
                         f"{len(embeddings)} rows on rank {dist.get_rank()}")
    return _GatherWithGradient.apply(embeddings, sizes), _all_gather_rows(labels, sizes)
