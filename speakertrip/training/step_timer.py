"""How long the training loop waited for batches against how long it computed, per logging window.

On a GPU the host only queues work, so host clocks around a step measure nothing useful.
:class:`StepTimer` records a CUDA event when a batch is handed to the step and one when the
step's work is queued to the end; on the GPU's own timeline, the time from one step's end to
the next step's start is time the GPU had nothing to do because the batch was late (data
wait), and the time from start to end is compute. Reading the events costs one sync, at
logging time. On the CPU the same marks are host clocks (the work is synchronous).

>>> timer = StepTimer(torch.device("cpu"))
>>> timer.batch_ready(); timer.step_done()
>>> window = timer.window()
>>> window.steps, window.data_seconds >= 0, window.compute_seconds >= 0
(1, True, True)
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch


class Window(NamedTuple):
    """One logging window: ``steps``, seconds waiting for data, seconds computing (both summed over steps)."""

    steps: int
    data_seconds: float
    compute_seconds: float

    @property
    def data_fraction(self) -> float:
        """Data wait as a fraction of the window's step time (0 when nothing was timed)."""
        total = self.data_seconds + self.compute_seconds
        return self.data_seconds / total if total > 0 else 0.0


class StepTimer:
    """Marks ``batch_ready()`` / ``step_done()`` around each step; ``window()`` sums them since the last call.

    ``restart()`` drops the time since the last mark (validation, checkpoints: not data wait).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list = []
        self.restart()

    def _mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record(torch.cuda.current_stream(self.device))
            return event
        return time.perf_counter()

    def restart(self) -> None:
        self.marks = [self._mark()]

    def batch_ready(self) -> None:
        self.marks.append(self._mark())

    def step_done(self) -> None:
        self.marks.append(self._mark())

    def window(self) -> Window:
        """Data and compute seconds since the last window (one device sync on CUDA)."""
        marks, self.marks = self.marks, self.marks[-1:]
        if self.cuda:
            marks[-1].synchronize()
            gaps = [start.elapsed_time(end) / 1000 for start, end in zip(marks, marks[1:])]
        else:
            gaps = [end - start for start, end in zip(marks, marks[1:])]
        return Window(len(gaps) // 2, sum(gaps[0::2]), sum(gaps[1::2]))
