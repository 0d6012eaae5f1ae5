"""Count what would make a GPU wait for the host (or the host for the GPU), even when run on the CPU.

:class:`HostSyncCounter` watches every tensor operation of a block (a ``TorchDispatchMode``
plus a ``TorchFunctionMode``) and counts, by category:

- ``sync``: reads of a device value into Python (``aten._local_scalar_dense``, which every
  ``.item()``, ``int()``, ``bool()`` of a tensor goes through) and operations whose output
  shape depends on the data (``nonzero``, ``masked_select``, ``unique``, boolean indexing,
  ``bincount``, ``repeat_interleave`` without ``output_size``, ``equal``);
- ``to_host``: ``.cpu()``, ``.numpy()``, ``.tolist()`` and copies from another device to the CPU;
- ``from_host``: tensors made from host data (``torch.tensor``, ``torch.as_tensor``,
  ``torch.from_numpy``), copies from the CPU to another device, and random or constant
  factories called without a ``device`` (on a GPU run they would be made on the CPU).

On a CPU these cost nothing, which is exactly why they go unnoticed: the counts are the same
whatever the device, so a CPU test can assert that a training step has none.

>>> with HostSyncCounter() as counter:
...     x = torch.arange(4.0, device="cpu")
...     _ = x[x > 1]                     # boolean indexing: data-dependent shape
...     _ = float(x.sum())               # a device read
>>> counter.counts["sync"], [name for name, _ in counter.events]
(2, ['aten.index.Tensor (boolean index)', 'aten._local_scalar_dense.default'])
"""

from __future__ import annotations

import traceback
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten.masked_select.default,
            aten._unique.default, aten._unique2.default, aten.unique_dim.default,
            aten.unique_consecutive.default, aten.bincount.default, aten.equal.default,
            aten.is_nonzero.default}
INDEX_OPS = {aten.index.Tensor, aten.index_put.default, aten.index_put_.default, aten._index_put_impl_.default}
FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.zeros, torch.ones, torch.empty,
             torch.full, torch.arange, torch.linspace, torch.eye}
TO_HOST_METHODS = {"cpu", "numpy", "tolist"}


def _has_bool_index(indices) -> bool:
    return any(isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in indices)


class _Dispatch(TorchDispatchMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in SYNC_OPS:
            self.record("sync", str(func))
        elif func == aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            self.record("sync", f"{func} (no output_size)")
        elif func in INDEX_OPS and _has_bool_index(args[1]):
            self.record("sync", f"{func} (boolean index)")
        elif func == aten.lift_fresh.default:
            self.record("from_host", "a tensor made from host data")
        elif func in (aten._to_copy.default, aten.copy_.default):
            source = args[1] if func == aten.copy_.default else args[0]
            target = args[0].device if func == aten.copy_.default else kwargs.get("device") or source.device
            if torch.device(target) != source.device:
                kind = "to_host" if torch.device(target).type == "cpu" else "from_host"
                self.record(kind, f"{func} {source.device} -> {target}")
        return func(*args, **kwargs)


class _Function(TorchFunctionMode):
    def __init__(self, record):
        super().__init__()
        self.record = record

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in TO_HOST_METHODS and args and isinstance(args[0], torch.Tensor):
            self.record("to_host", f"Tensor.{name}")
        elif func in FACTORIES and kwargs.get("device") is None:
            self.record("from_host", f"torch.{name} without a device")
        return func(*args, **kwargs)


class HostSyncCounter:
    """Context manager counting host synchronisations and host↔device traffic (see the module docstring).

    ``counts`` maps category → number; ``events`` lists ``(what, where)`` with the innermost
    frame of speakertrip code that caused it (``stack=True`` keeps the whole stack instead).
    """

    def __init__(self, stack: bool = False):
        self.counts: Counter[str] = Counter()
        self.events: list[tuple[str, str]] = []
        self.stack = stack
        self._modes = (_Function(self._record), _Dispatch(self._record))

    def _record(self, category: str, what: str) -> None:
        stack = traceback.extract_stack()[:-2]  # without _record and the mode's hook
        if any(frame.name == "_get_value" and "torch/optim" in frame.filename for frame in stack[-4:]):
            return  # optimisers keep their step counts on the CPU on purpose: a host read, never a device sync
        self.counts[category] += 1
        frames = [frame for frame in stack if "speakertrip" in frame.filename and "host_syncs" not in frame.filename]
        where = "; ".join(f"{f.filename.rsplit('speakertrip/', 1)[-1]}:{f.lineno}" for f in
                          (frames if self.stack else frames[-1:]))
        self.events.append((what, where))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __enter__(self) -> HostSyncCounter:
        for mode in self._modes:
            mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        for mode in reversed(self._modes):
            mode.__exit__(*exc)

    def report(self) -> str:
        """One line per distinct event with its count, most frequent first."""
        return "\n".join(f"{count:>4} x {what} at {where}" for (what, where), count in
                         Counter(self.events).most_common())
