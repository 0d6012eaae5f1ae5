"""The non-finite guard: a training step whose loss or gradient is NaN or infinite changes nothing.

Such a step skips the optimiser update (no weight and no optimiser moment moves) and puts back
the BatchNorm running statistics that its forward pass overwrote (one NaN crop would otherwise
poison them for good). The decision stays on the device, so a healthy step costs no host sync,
and the statistics are saved and put back with a handful of kernels (``_foreach`` copies into one
flat tensor per dtype, one ``where``), not three per buffer:

- Adam and AdamW are built ``fused``, and fused optimisers take a ``found_inf`` flag (the
  protocol of ``torch.amp.GradScaler``): their kernel skips the update when it is set.
- SGD is not fused (torch's fused SGD leaves a new momentum buffer uninitialised when its first
  step is skipped), so for it the guard reads the flag on the host: one sync per step.

The flags are read when the trainer logs (every ``train.log_every`` steps, a sync it makes
anyway); then the skipped steps are reported with the utterances of their batches, and a run of
``train.max_bad_steps`` consecutive bad steps stops training with an error naming them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from speakertrip.errors import SpeakertripError
from speakertrip.training.batchnorm import batch_norms


class NonFiniteTrainingError(SpeakertripError):
    """Too many consecutive training steps had a non-finite loss or gradient."""


@dataclass
class SkippedStep:
    """A step whose update was skipped: its number, the utterances whose input samples were
    non-finite (may be empty: then the loss or the model overflowed) and all of its batch."""

    step: int
    nonfinite_inputs: list[str]
    batch: list[str] = field(repr=False)


class NonFiniteGuard:
    """Wraps ``optimizer.step()`` of one training module.

    >>> module = torch.nn.BatchNorm1d(2)
    >>> optimizer = torch.optim.AdamW(module.parameters(), fused=True)
    >>> guard = NonFiniteGuard(module, optimizer, max_bad_steps=3)
    >>> guard.save_buffers()
    >>> inputs = torch.full((4, 2), float("nan"))
    >>> module(inputs).sum().backward()
    >>> guard.step(torch.tensor(float("nan")), torch.tensor(float("nan")), inputs, step=1, batch=["a.wav"] * 4)
    >>> [s.step for s in guard.collect()], module.running_mean.tolist(), module.weight.tolist()
    ([1], [0.0, 0.0], [1.0, 1.0])
    """

    def __init__(self, module: torch.nn.Module, optimizer: torch.optim.Optimizer, max_bad_steps: int):
        self.optimizer, self.max_bad_steps = optimizer, max_bad_steps
        self.statistics = [_BufferGroup(group) for group in _by_dtype(
            buffer for norm in batch_norms(module) for buffer in norm.buffers(recurse=False))]
        self.fused = bool(optimizer.defaults.get("fused"))
        self.pending: list[tuple[int, torch.Tensor, torch.Tensor, Sequence[str]]] = []
        self.consecutive = 0
        self.skipped = 0

    def save_buffers(self) -> None:
        """Call before the forward pass: copies the (small) BatchNorm statistics."""
        for group in self.statistics:
            group.save()

    def step(self, loss: torch.Tensor, grad_norm: torch.Tensor, waveforms: torch.Tensor, step: int,
             batch: Sequence[str]) -> None:
        """``optimizer.step()`` unless ``loss`` or ``grad_norm`` is non-finite; ``step`` counts from 1;
        waveforms (B, T) and ``batch`` (B paths) name the culprits later."""
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(grad_norm))
        for group in self.statistics:
            group.restore_where(bad)
        if self.fused:
            self.optimizer.found_inf = bad.float()
            self.optimizer.step()
        elif not bool(bad):
            self.optimizer.step()
        self.pending.append((step, bad, ~torch.isfinite(waveforms).all(dim=1), batch))

    def window_flags(self) -> torch.Tensor:
        """(S,) bool on the device: which of the S steps since the last :meth:`collect` were skipped."""
        if not self.pending:
            return torch.zeros(0, dtype=torch.bool)
        return torch.stack([bad for _, bad, _, _ in self.pending])

    def collect(self, flags: Sequence[bool] | None = None) -> list[SkippedStep]:
        """The skipped steps since the last call, from ``flags`` (:meth:`window_flags` read by the caller
        together with its own numbers; None reads them here: one host sync); raises
        NonFiniteTrainingError when ``max_bad_steps`` came in a row."""
        if not self.pending:
            return []
        flags = self.window_flags().tolist() if flags is None else flags
        skipped, run = [], []
        for (step, _, rows, batch), bad in zip(self.pending, flags):
            if not bad:
                self.consecutive, run = 0, []
                continue
            rows_bad = torch.nonzero(rows).flatten().tolist()  # only for a skipped step: a rare host read
            inputs = list(dict.fromkeys(batch[i] if i < len(batch) else f"row {i} of the batch" for i in rows_bad))
            skipped.append(SkippedStep(step, inputs, list(batch)))
            run.append(skipped[-1])
            self.consecutive += 1
        self.pending = []
        self.skipped += len(skipped)
        if self.consecutive >= self.max_bad_steps:
            culprits = sorted({path for s in run for path in s.nonfinite_inputs})
            named = (f"non-finite samples in {', '.join(culprits[:5])}" + (f" and {len(culprits) - 5} more"
                     if len(culprits) > 5 else "")) if culprits else \
                "no input was non-finite, so the model or loss overflowed: lower optim.lr or set train.grad_clip"
            raise NonFiniteTrainingError(
                f"{self.consecutive} consecutive training steps (up to step {run[-1].step if run else '?'}) "
                f"had a non-finite loss or gradient and were skipped (train.max_bad_steps = {self.max_bad_steps}); "
                f"{named}; every skipped batch is listed in metrics.jsonl")
        return skipped


def _by_dtype(buffers: Iterable[torch.Tensor]) -> list[list[torch.Tensor]]:
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for buffer in buffers:
        groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    return list(groups.values())


class _BufferGroup:
    """Buffers of one dtype and device, saved into one flat tensor and put back where a flag says so."""

    def __init__(self, buffers: list[torch.Tensor]):
        self.buffers = buffers
        self.sizes = [buffer.numel() for buffer in buffers]
        self.saved = torch.empty(sum(self.sizes), dtype=buffers[0].dtype, device=buffers[0].device)
        self.saved_views = self._views(self.saved)

    def _views(self, flat: torch.Tensor) -> list[torch.Tensor]:
        return [part.view(buffer.shape) for part, buffer in zip(flat.split(self.sizes), self.buffers)]

    def save(self) -> None:
        torch._foreach_copy_(self.saved_views, self.buffers)

    def restore_where(self, bad: torch.Tensor) -> None:
        """Each buffer becomes its saved value where the 0-d bool ``bad`` is set (NaN-safe: a select)."""
        current = torch.cat([buffer.reshape(-1) for buffer in self.buffers])
        torch._foreach_copy_(self.buffers, self._views(torch.where(bad, self.saved, current)))
