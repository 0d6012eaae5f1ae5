"""Speakers enrolled with several utterances: scoring methods, and enrolment maps of trial lists.

Scoring a test embedding ``t`` against a speaker with utterance embeddings ``e_1..e_n``
(``ENROLMENT_SCORINGS``; embeddings are L2-normalised, so a cosine is a dot product; with one
utterance all four agree):

- ``centroid``: ``cos(normalise(mean e_i), t)``, one comparison per speaker;
- ``mean``: ``mean_i cos(e_i, t)``, the mean of the per-utterance scores;
- ``max``: ``max_i cos(e_i, t)``;
- ``top3``: the mean of the 3 highest per-utterance scores (all of them when n <= 3).

A trial list may also name an enrolment id instead of a file (CN-Celeb's ``id00800-enroll``, a
NIST-style multi-session enrolment). A map gives each id its files (the format of Kaldi's
``spk2utt`` and CN-Celeb's ``enroll.map``); the id's embedding is the mean of the files'
L2-normalised embeddings, as :func:`speaker_means` makes cohort speakers.

>>> store = EmbeddingStore(["a.wav", "b.wav", "c.wav"], np.eye(3, dtype=np.float32))
>>> models = enrolment_models(store, {"spk1-enroll": ["a.wav", "b.wav"]})
>>> models.keys, models.embeddings[0].tolist()
(['spk1-enroll'], [0.5, 0.5, 0.0])
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import numpy as np

from speakertrip.data.text_rows import TextRows
from speakertrip.errors import ConfigError, FormatError, KeyNotFoundError
from speakertrip.data.embedding_store import EmbeddingStore
from speakertrip.scoring.cosine import l2_normalize

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


def read_enrolment_map(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{enroll_id: [key, ...]}`` from ``ENROLL_ID KEY [KEY ...]`` lines; a repeated id adds keys."""
    rows = TextRows(path, "enrolment map")
    enrolments: dict[str, list[str]] = {}
    for index, fields in enumerate(rows.rows):
        if len(fields) < 2:
            raise rows.error(index, "expected 'ENROLL_ID KEY [KEY ...]'")
        enrolments.setdefault(fields[0], []).extend(fields[1:])
    return enrolments


def enrolment_models(store: EmbeddingStore, enrolments: Mapping[str, Sequence[str]]) -> EmbeddingStore:
    """One embedding per enrolment id: the mean of its files' unit-length embeddings, keyed by id."""
    ids = list(enrolments)
    keys = [key for enroll_id in ids for key in enrolments[enroll_id]]
    owner = np.repeat(np.arange(len(ids)), [len(enrolments[enroll_id]) for enroll_id in ids])
    unit = l2_normalize(store.embeddings[store.index_of(keys)], keys)
    sums = np.zeros((len(ids), store.dim), dtype=np.float64)
    np.add.at(sums, owner, unit)
    return EmbeddingStore(ids, (sums / np.bincount(owner, minlength=len(ids))[:, None]).astype(np.float32))


def with_enrolment_models(store: EmbeddingStore, enrolments: Mapping[str, Sequence[str]],
                          source: str | os.PathLike | None = None) -> EmbeddingStore:
    """``store`` plus one row per enrolment id (see :func:`enrolment_models`), so trials can name the ids."""
    clash = [enroll_id for enroll_id in enrolments if enroll_id in store]
    if clash:
        raise FormatError(f"enrolment id {clash[0]!r} is also a key of the embedding store {store.source}", source)
    try:
        models = enrolment_models(store, enrolments)
    except KeyNotFoundError as error:
        raise KeyNotFoundError(f"{source}: enrolment files not in the store: {error}" if source else str(error)) \
            from None
    return EmbeddingStore(store.keys + models.keys, np.concatenate([store.embeddings, models.embeddings]),
                          source=store.source)
