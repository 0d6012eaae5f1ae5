"""Cross-request batching: threads hand waveforms to one model thread, which embeds them together.

Requests that arrive while the model is busy queue up and are embedded in the next call of
:func:`~speakertrip.models.embed_many` (length-bucketed passes, one stream per CPU thread),
so a loaded service computes wide batches instead of one utterance at a time. Callers may
announce a job while they still decode its audio (:meth:`EmbeddingBatcher.coming`); a batch waits
up to ``window`` seconds for announced jobs, and not at all when none is on its way, so a lone
request pays no collection delay. Embeddings do not depend on the company they
are computed in (``embed_many`` is exact under batching), and a job that cannot be embedded
fails alone: its batch is retried one job at a time.

>>> import numpy as np, speakertrip as st
>>> from speakertrip.testing import speech_like, tiny_model_artifact
>>> model = st.load_model(tiny_model_artifact())
>>> with EmbeddingBatcher(model) as batcher:
...     batcher.embed([speech_like(1, 1.0), speech_like(2, 1.5)]).shape
(2, 192)
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
from torch import nn

from speakertrip.models import embed_many


@dataclass
class _Job:
    waves: Sequence[np.ndarray]
    future: Future = field(default_factory=Future)


class EmbeddingBatcher:
    """One thread that owns the model and embeds the waveforms of many callers in shared batches.

    Parameters
    ----------
    model : an ``EmbeddingModel``; waveforms passed to :meth:`embed` are mono float32 at ``model.sample_rate``
    window : seconds a batch waits, after its first job arrived, for jobs announced by :meth:`coming`
    max_batch_seconds : stop collecting once this much audio (seconds) is queued for one call; smaller
        calls let the next requests be decoded while the model computes
    streams : forward passes at once (``embed_many``'s ``streams``). One leaves the interpreter lock
        to the request threads while torch's intra-op threads still use every core; two streams of
        Python-level forward passes beside a web server measured slower on 2 cores
    backend : how batches are computed (``embed_many``'s ``backend``; :mod:`speakertrip.models.backends`)
    """

    def __init__(self, model: nn.Module, window: float = 0.005, max_batch_seconds: float = 60.0, streams: int = 1,
                 backend: str = "auto"):
        self.model, self.window, self.streams, self.backend = model, window, streams, backend
        self.max_samples = int(max_batch_seconds * model.sample_rate)
        self.batches = self.jobs = 0  # counters: calls of embed_many, jobs served
        self._coming, self._lock, self._local = 0, threading.Lock(), threading.local()
        self._queue: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="speakertrip-embedder", daemon=True)
        self._thread.start()

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Announce that this thread will call :meth:`embed` soon (it is decoding audio): batches
        being collected wait for it, within the window."""
        self._announce(+1)
        try:
            yield
        finally:
            self._arrived()  # also when the job never came (bad audio)

    def embed(self, waves: Sequence[np.ndarray]) -> np.ndarray:
        """Embed waveforms (each (T,) float32 at the model's rate); blocks, returns (N, D) float32."""
        if not self._thread.is_alive():
            raise RuntimeError("the embedding batcher is closed")
        job = _Job(list(waves))
        self._queue.put(job)
        self._arrived()
        return job.future.result()

    def _announce(self, change: int) -> None:
        with self._lock:
            self._coming += change
        self._local.announced = change > 0

    def _arrived(self) -> None:
        if getattr(self._local, "announced", False):
            self._announce(-1)

    def close(self) -> None:
        """Finish the queued jobs, then stop the model thread."""
        self._queue.put(None)
        self._thread.join()

    def __enter__(self) -> EmbeddingBatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._queue.get()
            if first is None:
                return
            jobs, samples = [first], sum(len(w) for w in first.waves)
            deadline = time.monotonic() + self.window
            while samples < self.max_samples:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    if self._coming <= 0 or time.monotonic() >= deadline:
                        break
                    time.sleep(0.0005)  # an announced job is being decoded
                    continue
                if job is None:
                    stopping = True
                    break
                jobs.append(job)
                samples += sum(len(w) for w in job.waves)
            self._serve(jobs)

    def _serve(self, jobs: list[_Job]) -> None:
        try:
            self.batches += 1
            embeddings = embed_many(self.model, [wave for job in jobs for wave in job.waves],
                                    sample_rate=int(self.model.sample_rate), loader_threads=1,
                                    streams=self.streams, backend=self.backend)
        except Exception as error:  # noqa: BLE001 - a bad job must not fail the others: retry them alone
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)  # raised again by the caller's embed()
            else:
                for job in jobs:
                    self._serve([job])
            return
        start = 0
        for job in jobs:
            self.jobs += 1
            job.future.set_result(embeddings[start:start + len(job.waves)])
            start += len(job.waves)
