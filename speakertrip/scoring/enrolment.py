"""Scoring a test embedding against speakers enrolled with several utterances.

Methods (``ENROLMENT_SCORINGS``), for a speaker with utterance embeddings ``e_1..e_n`` and a test ``t``:

- ``centroid``: ``cos(normalise(mean e_i), t)``, one comparison per speaker;
- ``mean``: ``mean_i cos(e_i, t)``, the mean of the per-utterance scores;
- ``max``: ``max_i cos(e_i, t)``;
- ``top3``: the mean of the 3 highest per-utterance scores (all of them when n <= 3).

Embeddings are L2-normalised, so a cosine is a dot product. With one utterance all four agree.
"""

from __future__ import annotations

import numpy as np

from speakertrip.errors import ConfigError

ENROLMENT_SCORINGS = ("centroid", "mean", "max", "top3")
TOP_FEW = 3


def check_scoring(method: str) -> str:
    if method not in ENROLMENT_SCORINGS:
        raise ConfigError(f"unknown enrolment scoring {method!r}; valid: {', '.join(ENROLMENT_SCORINGS)}")
    return method


def centroids(embeddings: np.ndarray, speakers: np.ndarray, num_speakers: int) -> np.ndarray:
    """L2-normalised mean embedding (S, D) of each speaker; ``speakers`` (U,) index rows of ``embeddings`` (U, D)."""
    sums = np.zeros((num_speakers, embeddings.shape[1]))
    np.add.at(sums, speakers, embeddings.astype(np.float64))
    return (sums / np.maximum(np.linalg.norm(sums, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def speaker_scores(embeddings: np.ndarray, speakers: np.ndarray, tests: np.ndarray, method: str = "centroid",
                   num_speakers: int | None = None) -> np.ndarray:
    """Scores (T, S) of test embeddings (T, D) against S speakers.

    ``embeddings`` (U, D) are the enrolment utterances, ``speakers`` (U,) their speaker index in
    ``0..S-1`` (every speaker has at least one). One (T, U) matrix product, then one reduction per
    speaker group.

    >>> e = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    >>> speaker_scores(e, np.array([0, 0, 1]), np.array([[1.0, 0.0]]), "max").tolist()
    [[1.0, 1.0]]
    """
    check_scoring(method)
    speakers = np.asarray(speakers, dtype=np.int64)
    num_speakers = int(speakers.max()) + 1 if num_speakers is None else num_speakers
    tests = np.atleast_2d(np.asarray(tests, dtype=np.float32))
    if method == "centroid":
        return tests @ centroids(embeddings, speakers, num_speakers).T
    order = np.argsort(speakers, kind="stable")
    grouped = speakers[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    if len(starts) != num_speakers:
        raise ConfigError(f"{num_speakers - len(starts)} speaker(s) have no enrolment utterance")
    scores = tests @ np.asarray(embeddings, dtype=np.float32)[order].T  # (T, U), grouped by speaker
    counts = np.diff(np.r_[starts, len(grouped)])
    if method == "mean":
        return np.add.reduceat(scores, starts, axis=1) / counts
    if method == "max":
        return np.maximum.reduceat(scores, starts, axis=1)
    # top few: sort each speaker's scores descending inside its group, keep the first TOP_FEW
    rank_in_group = np.arange(len(grouped)) - np.repeat(starts, counts)
    ordered = np.take_along_axis(scores, np.lexsort((-scores, np.broadcast_to(grouped, scores.shape)), axis=-1),
                                 axis=1)
    kept = np.where(rank_in_group < TOP_FEW, ordered, 0.0)
    return np.add.reduceat(kept, starts, axis=1) / np.minimum(counts, TOP_FEW)
