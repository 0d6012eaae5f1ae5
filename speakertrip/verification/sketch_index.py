"""A replica-local SimHash index: 256 sign bits per centroid, searched by Hamming distance with faiss.

A fixed random Gaussian projection (``SKETCH_BITS`` x D, drawn once when a store is created and
kept in the store so that every replica uses the same one) turns a centroid into the packed sign
bits of ``projection @ centroid``. The share of differing bits between two sketches estimates
the angle between the vectors (angle / pi), whatever the embeddings' anisotropy, so the Hamming
top-C of a query are candidates for its exact top-k. With 256 bits a query at cosine 0.7 with its
owner (45.6 degrees) differs from the owner's sketch in 65 +/- 7 bits, and from an unrelated
speaker's (90 degrees) in 128 +/- 8: at a million speakers about a handful of strangers come closer
than the owner, so C = 256 holds the owner all but always. A query further from its owner needs a
larger C (cosine 0.5: 85 +/- 7 bits).

Memory: 32 bytes of sketch and 8 of id a speaker (40 MB a million), plus the projection
(256 x D float32). faiss (faiss-cpu, the ``postgres`` extra) scans the codes; it is imported here
only, when an index is made.

>>> import numpy as np
>>> projection = make_projection(4, seed=0)
>>> codes = sketch_codes(projection, np.eye(4, dtype=np.float32))
>>> index = SketchIndex()
>>> index.apply(1, np.array([10, 11, 12, 13]), codes, removed=np.array([], np.int64))
>>> index.search(codes[2], 1).tolist(), len(index), index.generation
([12], 4, 1)
"""

from __future__ import annotations

import threading

import numpy as np

from speakertrip.errors import ConfigError, CorruptStoreError

SKETCH_BITS = 256
CODE_BYTES = SKETCH_BITS // 8
BYTES_PER_SPEAKER = CODE_BYTES + 8  # the code and its id in the replica's index


def make_projection(dim: int, seed: int | None = None) -> np.ndarray:
    """A random Gaussian projection (SKETCH_BITS, dim) float32; ``seed`` None draws a fresh one."""
    return np.random.default_rng(seed).standard_normal((SKETCH_BITS, dim)).astype("<f4")


def projection_to_text(projection: np.ndarray) -> str:
    """The projection as hex of its little-endian float32 bytes (how a store's meta row keeps it)."""
    return np.ascontiguousarray(projection, "<f4").tobytes().hex()


def projection_from_text(text: str, dim: int, where: str) -> np.ndarray:
    """The (SKETCH_BITS, dim) projection from :func:`projection_to_text`; CorruptStoreError naming ``where``."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise CorruptStoreError(f"{where}: the sketch projection is not hex text") from None
    if len(raw) != SKETCH_BITS * dim * 4:
        raise CorruptStoreError(f"{where}: the sketch projection holds {len(raw)} bytes, expected "
                                f"{SKETCH_BITS} x {dim} float32 ({SKETCH_BITS * dim * 4})")
    return np.frombuffer(raw, "<f4").reshape(SKETCH_BITS, dim).copy()


def sketch_codes(projection: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Packed sign bits of ``projection @ v`` for each row of ``vectors`` (N, D) → (N, CODE_BYTES) uint8."""
    return np.packbits(np.asarray(vectors, np.float32) @ projection.T > 0, axis=1)


class SketchIndex:
    """The sketches of one store in this process, at one store generation; thread-safe.

    :meth:`apply` brings it to a later generation (rows removed, rows added or changed); :meth:`search`
    gives the ids of the ``count`` sketches nearest a query's in Hamming distance.
    """

    def __init__(self) -> None:
        try:
            import faiss
        except ImportError as error:
            raise ConfigError(f"the PostgreSQL store's sketch search needs faiss-cpu ({error.name} is missing): "
                              "pip install 'speakertrip[postgres]', or open the store with ?search=exact") from None
        self._faiss = faiss
        faiss.omp_set_num_threads(1)  # one query per call: threads only contend; request threads run in parallel
        self._index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(SKETCH_BITS))
        self._lock = threading.Lock()
        self.generation = -1  # nothing loaded yet

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def nbytes(self) -> int:
        """Bytes the codes and ids take in memory."""
        return len(self) * BYTES_PER_SPEAKER

    def apply(self, generation: int, ids: np.ndarray, codes: np.ndarray, removed: np.ndarray) -> None:
        """Drop ``removed`` ids and the old codes of ``ids``, then add ``codes`` (N, CODE_BYTES) under ``ids`` (N,)."""
        ids = np.ascontiguousarray(ids, np.int64)
        gone = np.concatenate([np.asarray(removed, np.int64), ids])
        with self._lock:
            if generation <= self.generation:
                return  # another thread brought it this far already
            if len(gone) and self._index.ntotal:
                self._index.remove_ids(self._faiss.IDSelectorBatch(gone))
            if len(ids):
                self._index.add_with_ids(np.ascontiguousarray(codes, np.uint8), ids)
            self.generation = generation

    def search(self, code: np.ndarray, count: int) -> np.ndarray:
        """Ids of the ``count`` (or all, if fewer) stored sketches nearest ``code`` (CODE_BYTES,), nearest first."""
        with self._lock:
            if not self._index.ntotal:
                return np.zeros(0, np.int64)
            _, labels = self._index.search(np.ascontiguousarray(code, np.uint8).reshape(1, CODE_BYTES),
                                           min(int(count), int(self._index.ntotal)))
        return labels[0][labels[0] >= 0]
