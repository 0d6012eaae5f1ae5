"""Cosine scoring of a trial list against an embedding store, in vectorised chunks.

Each distinct key is looked up and L2-normalised once; trials then index that matrix, and a chunk
of trials is scored as one row-wise dot product (with torch on ``device`` when it is not the CPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from speakertrip.errors import FormatError, KeyNotFoundError
from speakertrip.data.embedding_store import EmbeddingStore, describe_missing
from speakertrip.data.trials import Trials


def l2_normalize(embeddings: np.ndarray, keys: list[str] | None = None) -> np.ndarray:
    """Rows of ``embeddings`` (N, D) scaled to unit length, float32; a zero row is an error naming its key."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if len(zero):
        name = repr(keys[zero[0]]) if keys is not None else f"row {zero[0]}"
        raise FormatError(f"{len(zero)} all-zero embeddings (first: {name}): cosine scores are undefined")
    return embeddings / norms


@dataclass(frozen=True)
class TrialEmbeddings:
    """The unit-length embeddings of the distinct keys of a trial list, and per trial its rows.

    unit : (U, D) float32, one row per distinct key (enrolment and test keys together).
    enroll_rows, test_rows : (N,) int64 rows of ``unit`` for each trial's two sides.
    """

    unit: np.ndarray
    enroll_rows: np.ndarray
    test_rows: np.ndarray


def find_missing(trials: Trials, store: EmbeddingStore) -> np.ndarray:
    """(N,) bool: True for trials whose enrolment or test key is not in ``store``."""
    return np.fromiter((e not in store or t not in store for e, t in zip(trials.enroll, trials.test)),
                       dtype=bool, count=len(trials))


def trial_embeddings(trials: Trials, store: EmbeddingStore) -> TrialEmbeddings:
    """Look up every distinct key of ``trials`` in ``store`` once; missing keys raise KeyNotFoundError."""
    keys = list(dict.fromkeys(trials.enroll + trials.test))
    missing = [key for key in keys if key not in store]
    if missing:
        where = f" of {trials.source}" if trials.source else ""
        in_store = f" in {store.source}" if store.source else ""
        raise KeyNotFoundError(f"{describe_missing(missing, len(keys), 'keys' + where)}{in_store}; "
                               f"{int(find_missing(trials, store).sum())} trials use them "
                               "(pass --skip-missing / skip_missing=True to drop those trials)")
    position = {key: i for i, key in enumerate(keys)}
    unit = l2_normalize(store.embeddings[store.index_of(keys)], keys)
    enroll_rows = np.fromiter((position[key] for key in trials.enroll), dtype=np.int64, count=len(trials))
    test_rows = np.fromiter((position[key] for key in trials.test), dtype=np.int64, count=len(trials))
    return TrialEmbeddings(unit, enroll_rows, test_rows)


def cosine_scores(embedded: TrialEmbeddings, device: str = "cpu", chunk_size: int = 16384) -> np.ndarray:
    """(N,) float32 cosine score of each trial, ``chunk_size`` trials at a time.

    On CPU a chunk is one NumPy ``einsum`` (4x faster than torch indexing there, measured); on
    another device the unit matrix moves there once and chunks are scored by torch.
    """
    if device != "cpu":
        return _cosine_scores_torch(embedded, device, chunk_size)
    count = len(embedded.enroll_rows)
    scores = np.empty(count, dtype=np.float32)
    starts = range(0, count, chunk_size)
    for start in tqdm(starts, desc="scoring", unit="chunk", leave=False, disable=len(starts) < 64):
        stop = start + chunk_size
        scores[start:stop] = np.einsum("ij,ij->i", embedded.unit[embedded.enroll_rows[start:stop]],
                                       embedded.unit[embedded.test_rows[start:stop]])
    return scores


def _cosine_scores_torch(embedded: TrialEmbeddings, device: str, chunk_size: int) -> np.ndarray:
    import torch

    unit = torch.from_numpy(embedded.unit).to(device)
    enroll_rows = torch.from_numpy(embedded.enroll_rows).to(device)
    test_rows = torch.from_numpy(embedded.test_rows).to(device)
    parts = [torch.einsum("ij,ij->i", unit[enroll_rows[start:start + chunk_size]],
                          unit[test_rows[start:start + chunk_size]])
             for start in range(0, len(enroll_rows), chunk_size)]
    return torch.cat(parts).cpu().numpy()


def score_trials(trials: Trials, store: EmbeddingStore, device: str = "cpu", chunk_size: int = 16384) -> np.ndarray:
    """Cosine scores (N,) float32 of ``trials`` with embeddings from ``store``; never rescaled.

    >>> store = EmbeddingStore(["a", "b"], np.array([[1.0, 0.0], [1.0, 1.0]], dtype=np.float32))
    >>> score_trials(Trials(["a"], ["b"]), store).round(4)
    array([0.7071], dtype=float32)
    """
    return cosine_scores(trial_embeddings(trials, store), device, chunk_size)
