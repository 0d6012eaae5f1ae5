"""The cross-request batcher: concurrent callers share forward passes and get their own rows back."""

import threading
import time

import numpy as np
import pytest

import speakertrip as st
from speakertrip.errors import AudioError
from speakertrip.models import embed_many
from speakertrip.testing import speech_like, tiny_model_artifact
from speakertrip.verification.batching import EmbeddingBatcher


@pytest.fixture(scope="module")
def model():
    return st.load_model(tiny_model_artifact())


def _call_together(batcher, jobs):
    """Every job from its own thread, released at once; returns results (arrays or exceptions) in job order."""
    results, start = [None] * len(jobs), threading.Barrier(len(jobs))

    def call(index):
        with batcher.coming():  # as the service does while it decodes the upload
            start.wait()
            try:
                results[index] = batcher.embed(jobs[index])
            except Exception as error:  # noqa: BLE001 - compared below
                results[index] = error

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def test_concurrent_callers_share_batches_and_get_exactly_their_embeddings(model, one_thread):
    jobs = [[speech_like(i, 0.6 + 0.1 * i, seed=i)] + ([speech_like(i, 0.8, seed=50 + i)] if i % 3 == 0 else [])
            for i in range(12)]
    with EmbeddingBatcher(model, window=0.5) as batcher:
        results = _call_together(batcher, jobs)
        assert batcher.jobs == 12 and batcher.batches < 12  # shared forward passes
    for job, result in zip(jobs, results):
        alone = embed_many(model, job, sample_rate=16000)
        assert result.shape == (len(job), 192) and np.abs(result - alone).max() < 1e-5


def test_a_job_that_cannot_be_embedded_fails_alone(model, one_thread):
    good = [[speech_like(i, 0.7, seed=i)] for i in range(5)]
    bad = [np.zeros(400, np.float32) + 0.1]  # 25 ms: too short for the encoders
    with EmbeddingBatcher(model, window=0.5) as batcher:
        results = _call_together(batcher, good[:2] + [bad] + good[2:])
    assert isinstance(results[2], AudioError) and "0.025 s of audio" in str(results[2])
    for job, result in zip(good, results[:2] + results[3:]):
        assert np.abs(result - embed_many(model, job, sample_rate=16000)).max() < 1e-5


def test_a_lone_job_does_not_wait_for_the_window_and_close_refuses_later_jobs(model):
    batcher = EmbeddingBatcher(model, window=60.0)
    started = time.monotonic()
    with batcher.coming():
        assert batcher.embed([speech_like(1, 0.5)]).shape == (1, 192)
    assert time.monotonic() - started < 30  # nobody else announced: no collection delay
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.embed([speech_like(1, 0.5)])
