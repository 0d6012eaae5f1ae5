"""Embedding stores: utterance keys and a float32 ``(N, D)`` matrix, on disk as ``.npz`` or a directory.

Two formats, chosen by the path: ``name.npz`` holds the arrays ``keys`` (str) and ``embeddings``;
any other path is a directory with ``keys.txt`` (one key a line) and ``embeddings.npy``, which is
memory-mapped when read, so that a store larger than memory can be scored. Nothing is pickled.

>>> store = EmbeddingStore(["a.wav", "b.wav"], np.eye(2, dtype=np.float32))
>>> store.index_of(["b.wav", "a.wav"])
array([1, 0])
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from speakertrip.atomic import atomic_write
from speakertrip.errors import FormatError, KeyNotFoundError

KEYS_FILE, EMBEDDINGS_FILE = "keys.txt", "embeddings.npy"
_CHECK_ROWS = 65536  # rows checked for NaN at a time, so a memory-mapped store is never copied whole


def describe_missing(missing: Sequence[str], total: int, what: str = "keys", shown: int = 5) -> str:
    """``"3 of 10 keys not found: 'a', 'b', 'c'"`` — the count and the first few missing keys."""
    listed = ", ".join(repr(key) for key in missing[:shown])
    more = f", ... ({len(missing) - shown} more)" if len(missing) > shown else ""
    return f"{len(missing)} of {total} {what} not found: {listed}{more}"


class EmbeddingStore:
    """Keys and their embeddings; ``embeddings[i]`` belongs to ``keys[i]``.

    Parameters
    ----------
    keys : N distinct, non-empty strings (utterance ids as trial lists write them).
    embeddings : (N, D) floating array; kept as float32 (a float32 memory map is not copied).
    source : where the store came from, named in error messages.
    """

    def __init__(self, keys: Sequence[str], embeddings: np.ndarray, source: str | os.PathLike | None = None):
        where = source if source is not None else "embedding store"
        embeddings = np.asanyarray(embeddings)
        if embeddings.ndim != 2:
            raise FormatError(f"embeddings must be a 2-D (N, D) array, got shape {embeddings.shape}", where)
        if not np.issubdtype(embeddings.dtype, np.floating):
            raise FormatError(f"embeddings must be floating point, got {embeddings.dtype}", where)
        keys = [str(key) for key in keys]
        if len(keys) != len(embeddings):
            raise FormatError(f"{len(keys)} keys but {len(embeddings)} embedding rows", where)
        self._index = {key: i for i, key in enumerate(keys)}
        if len(self._index) != len(keys):
            seen: set[str] = set()
            repeated = [key for key in keys if key in seen or seen.add(key)]
            raise FormatError(f"{len(repeated)} duplicate keys, e.g. {', '.join(map(repr, repeated[:5]))}", where)
        bad = [key for key in keys if not key or any(c in key for c in "\n\r")]
        if bad:
            raise FormatError(f"keys must be non-empty and on one line, got {bad[0]!r}", where)
        self.keys: list[str] = keys
        self.embeddings: np.ndarray = embeddings.astype(np.float32, copy=False)
        self.source = source
        self._check_finite(where)

    def _check_finite(self, where: object) -> None:
        for start in range(0, len(self.keys), _CHECK_ROWS):
            block = self.embeddings[start:start + _CHECK_ROWS]
            bad_rows = np.flatnonzero(~np.isfinite(block).all(axis=1))
            if len(bad_rows):
                names = [self.keys[start + i] for i in bad_rows[:5]]
                raise FormatError(f"NaN or infinite values in the embedding of {', '.join(map(repr, names))}", where)

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self.embeddings.shape[1]

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        return key in self._index

    def __repr__(self) -> str:
        return f"EmbeddingStore({len(self)} keys, dim {self.dim}{f', from {self.source}' if self.source else ''})"

    def index_of(self, keys: Iterable[str]) -> np.ndarray:
        """Row numbers of ``keys`` (int64, same order); raises KeyNotFoundError listing a few missing ones."""
        keys = list(keys)
        rows = [self._index.get(key, -1) for key in keys]
        if -1 in rows:
            missing = list(dict.fromkeys(key for key, row in zip(keys, rows) if row < 0))
            where = f" in {self.source}" if self.source else ""
            raise KeyNotFoundError(describe_missing(missing, len(set(keys))) + where)
        return np.asarray(rows, dtype=np.int64)

    def get(self, key: str) -> np.ndarray:
        """The embedding of one key, shape (D,)."""
        return self.embeddings[self.index_of([key])[0]]


def load_store(path: str | os.PathLike) -> EmbeddingStore:
    """Read a store written by :func:`save_store` (``.npz`` file or directory; the directory is memory-mapped)."""
    path = Path(path)
    if not path.exists():
        raise FormatError("no such embedding store (expected a .npz file or a directory with "
                          f"{KEYS_FILE} and {EMBEDDINGS_FILE})", path)
    if path.is_dir():
        return _load_directory(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = {"keys", "embeddings"} - set(archive.files)
            if missing:
                raise FormatError(f"missing arrays {sorted(missing)} (expected 'keys' and 'embeddings')", path)
            keys, embeddings = archive["keys"], archive["embeddings"]
    except FormatError:
        raise
    except (ValueError, OSError, EOFError) as error:  # not a zip, truncated, or object arrays
        raise FormatError(f"not a readable .npz embedding store ({error})", path) from None
    if keys.size == 0:
        raise FormatError("empty embedding store (no keys)", path)
    if keys.ndim != 1 or keys.dtype.kind not in "US":
        raise FormatError(f"'keys' must be a 1-D array of strings, got {keys.dtype} with shape {keys.shape}", path)
    return EmbeddingStore(keys.astype(str).tolist(), embeddings, source=path)


def _load_directory(path: Path) -> EmbeddingStore:
    keys_path, matrix_path = path / KEYS_FILE, path / EMBEDDINGS_FILE
    for needed in (keys_path, matrix_path):
        if not needed.is_file():
            raise FormatError(f"missing {needed.name} (a store directory holds {KEYS_FILE} and "
                              f"{EMBEDDINGS_FILE})", path)
    lines = keys_path.read_text(encoding="utf-8").splitlines()
    if not lines:
        raise FormatError("empty embedding store (no keys)", keys_path)
    for line_no, line in enumerate(lines, 1):
        if not line.strip() or line != line.strip():
            raise FormatError("expected one key per line, without blanks or surrounding spaces",
                              keys_path, line_no, line)
    try:
        embeddings = np.load(matrix_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as error:
        raise FormatError(f"not a readable .npy matrix ({error})", matrix_path) from None
    return EmbeddingStore(lines, embeddings, source=path)


def save_store(store: EmbeddingStore, path: str | os.PathLike) -> Path:
    """Write ``store`` to ``path``: a ``.npz`` file if the name ends so, else a directory. Returns the path.

    Files are written under a temporary name and renamed, so a reader never sees half a store.
    """
    path = Path(path)
    if path.suffix == ".npz":
        with atomic_write(path) as handle:
            np.savez(handle, keys=np.asarray(store.keys, dtype=str), embeddings=np.ascontiguousarray(store.embeddings))
        return path
    path.mkdir(parents=True, exist_ok=True)
    for name, write in ((EMBEDDINGS_FILE, lambda handle: np.save(handle, np.ascontiguousarray(store.embeddings))),
                        (KEYS_FILE, lambda handle: handle.write("".join(f"{key}\n" for key in store.keys).encode()))):
        with atomic_write(path / name) as handle:
            write(handle)
    return path
