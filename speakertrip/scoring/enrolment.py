"""Enrolment models from several files: ``ENROLL_ID KEY [KEY ...]`` maps and their mean embeddings.

A trial list may name an enrolment id instead of a file (CN-Celeb's ``id00800-enroll``, a
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

from speakertrip.errors import FormatError, KeyNotFoundError
from speakertrip.extraction.store import EmbeddingStore
from speakertrip.scoring.cosine import l2_normalize


def read_enrolment_map(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{enroll_id: [key, ...]}`` from ``ENROLL_ID KEY [KEY ...]`` lines; a repeated id adds keys."""
    if not os.path.isfile(path):
        raise FormatError("no such enrolment map", path)
    enrolments: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise FormatError("expected 'ENROLL_ID KEY [KEY ...]'", path, line_no, line)
            enrolments.setdefault(fields[0], []).extend(fields[1:])
    if not enrolments:
        raise FormatError("the enrolment map is empty", path)
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
