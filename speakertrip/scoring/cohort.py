"""Cohorts for score normalisation: an embedding store used as is, or one mean embedding per speaker."""

from __future__ import annotations

import os
from typing import Callable

import numpy as np

from speakertrip.data.items import voxceleb_speaker
from speakertrip.data.embedding_store import EmbeddingStore, load_store
from speakertrip.scoring.cosine import l2_normalize

_CHUNK_ROWS = 65536


def speaker_means(store: EmbeddingStore, speaker_of: Callable[[str], str] = voxceleb_speaker) -> EmbeddingStore:
    """One embedding per speaker: the mean of its L2-normalised utterance embeddings, keyed by speaker.

    Reads the store in chunks, so a memory-mapped cohort larger than memory is fine.

    >>> store = EmbeddingStore(["s1/v/1.wav", "s1/v/2.wav", "s2/v/1.wav"], np.eye(3, dtype=np.float32))
    >>> means = speaker_means(store)
    >>> means.keys, means.embeddings[0].tolist()
    (['s1', 's2'], [0.5, 0.5, 0.0])
    """
    speakers = [speaker_of(key) for key in store.keys]
    names, owner = np.unique(np.asarray(speakers), return_inverse=True)
    sums = np.zeros((len(names), store.dim), dtype=np.float64)
    for start in range(0, len(store), _CHUNK_ROWS):
        unit = l2_normalize(store.embeddings[start:start + _CHUNK_ROWS], store.keys[start:start + _CHUNK_ROWS])
        np.add.at(sums, owner[start:start + _CHUNK_ROWS], unit)
    counts = np.bincount(owner, minlength=len(names))
    return EmbeddingStore(names.tolist(), (sums / counts[:, None]).astype(np.float32), source=store.source)


def load_cohort(path: str | os.PathLike, per_speaker_means: bool = False) -> EmbeddingStore:
    """Read a cohort store; with ``per_speaker_means``, average it per VoxCeleb speaker first."""
    store = load_store(path)
    return speaker_means(store) if per_speaker_means else store
