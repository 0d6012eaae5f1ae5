"""The enrolment store: speakers, their utterance embeddings and a score-normalisation cohort in one SQLite file.

Every write is one ``BEGIN IMMEDIATE`` transaction, so a failed call changes nothing and two
processes enrolling at once serialise instead of losing rows (WAL journal, busy timeout). The
store records the identity of the model that made its embeddings and refuses any other model.
Each speaker keeps every utterance embedding and their centroid: the L2-normalised mean,
recomputed from all of the speaker's utterances inside the same transaction.

SQLite's WAL mode needs a local file system (not NFS); the ``-wal``/``-shm`` side files disappear
when the last connection closes. A store that this process cannot write (a read-only file, folder
or file system) opens read-only: reading works, writing raises :class:`ReadOnlyStoreError`, and
no side file is made (SQLite's ``immutable`` mode: it assumes nobody writes the file meanwhile). Only a call that enrols creates a store; opening a missing one for reading
raises :class:`StoreNotFoundError`.

>>> import tempfile
>>> import numpy as np
>>> from pathlib import Path
>>> store = EnrolmentStore(Path(tempfile.mkdtemp()) / "speakers.db", model_identity="3f2a", embedding_dim=4)
>>> store.add("alice", np.random.default_rng(0).standard_normal((2, 4)), sources=["a1.wav", "a2.wav"])
2
>>> len(store), store.centroid("alice").shape
(1, (4,))
>>> store.close()
"""

from __future__ import annotations

import datetime
import difflib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from speakertrip.errors import ConfigError, FormatError, KeyNotFoundError, SpeakertripError

SCHEMA_VERSION = "1"
_FLOAT = np.dtype("<f4")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS speakers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, centroid BLOB NOT NULL,
    num_utterances INTEGER NOT NULL, updated TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS utterances (
    id INTEGER PRIMARY KEY, speaker_id INTEGER NOT NULL REFERENCES speakers(id),
    source TEXT NOT NULL, embedding BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS utterances_by_speaker ON utterances(speaker_id);
CREATE TABLE IF NOT EXISTS cohort (id INTEGER PRIMARY KEY, source TEXT NOT NULL, embedding BLOB NOT NULL);
"""


class ModelMismatchError(SpeakertripError):
    """The store's embeddings were made by another model than the one asked to score with it."""


class StoreNotFoundError(KeyNotFoundError):
    """No enrolment store at the path given (only enrolment creates one)."""


class ReadOnlyStoreError(SpeakertripError):
    """A write (enrol, remove, cohort) to a store this process may only read."""


def missing_store(path: Path) -> StoreNotFoundError:
    return StoreNotFoundError(f"{path}: no enrolment store here (the file does not exist); only enrolment creates "
                              f"one: speakertrip enroll --store {path} NAME FILE ...")


def is_writable(path: Path) -> bool:
    """Can SQLite write ``path`` and create its ``-wal``/``-shm`` files beside it?"""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


@dataclass(frozen=True)
class SpeakerInfo:
    """One enrolled speaker: name, number of utterances, last change (ISO 8601, UTC)."""

    name: str
    num_utterances: int
    updated: str


def check_name(name: object) -> str:
    """A speaker name must be a non-empty string without surrounding whitespace or line breaks."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"speaker name must be a non-empty string, got {name!r}")
    if name != name.strip() or any(ch in name for ch in "\n\r\t\0"):
        raise ConfigError(f"speaker name {name!r} has surrounding whitespace or control characters")
    return name


class EnrolmentStore:
    """Enrolled speakers in a SQLite file, tied to one model.

    Parameters
    ----------
    path : the database file; created when missing if ``create`` and ``model_identity`` and
        ``embedding_dim`` are given (else a missing file raises StoreNotFoundError); opened
        read-only when this process cannot write it or its folder
    model_identity : hex digest of the model (``EmbeddingModel.identity``); None opens the store
        without checking (listing speakers needs no model)
    embedding_dim : D, checked against the store
    create : make a new store when ``path`` does not exist
    timeout : seconds to wait for another process's write lock
    """

    def __init__(self, path: str | Path, model_identity: str | None = None, embedding_dim: int | None = None,
                 create: bool = True, timeout: float = 60.0):
        self.path = Path(path)
        if self.path.is_dir():
            raise FormatError("is a directory, expected an enrolment store file (.db)", self.path)
        exists = self.path.exists()
        if not exists and not (create and model_identity is not None and embedding_dim is not None):
            raise missing_store(self.path)
        self._writes = 0
        self._cache: tuple[tuple[int, int], list[str], np.ndarray] | None = None
        self.read_only = exists and not is_writable(self.path)
        try:
            self._db = self._connect(timeout)
        except sqlite3.Error as error:
            raise FormatError(f"cannot open the enrolment store: {error}", self.path) from None
        try:
            self._open(model_identity, embedding_dim, timeout)
        except BaseException:
            self._db.close()
            raise

    def _connect(self, timeout: float) -> sqlite3.Connection:
        """Read-write, or ``immutable`` when this process cannot write the store: SQLite then reads the
        file alone, making no ``-wal``/``-shm`` files (``mode=ro`` would leave them in a writable folder)."""
        if not self.read_only:
            return sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        return sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", timeout=timeout, isolation_level=None,
                               uri=True)

    def _open(self, model_identity: str | None, embedding_dim: int | None, timeout: float) -> None:
        try:
            self._db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not {"meta", "speakers", "utterances", "cohort"} <= tables:
                raise FormatError("a SQLite file but not a speakertrip enrolment store (tables: "
                                  f"{', '.join(sorted(tables))}); choose another --store path", self.path)
            if not tables:  # a new (or empty) file; another process may be creating it too: all idempotent
                if model_identity is None or embedding_dim is None or self.read_only:
                    raise KeyNotFoundError(f"{self.path}: empty enrolment store; enrol a speaker first")
                self._enable_wal(timeout)
                with self._transaction():
                    for statement in _SCHEMA.split(";")[:-1]:
                        self._db.execute(statement)
                    for key, value in (("schema_version", SCHEMA_VERSION), ("model_identity", model_identity),
                                       ("embedding_dim", str(embedding_dim))):
                        self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.DatabaseError as error:
            raise FormatError(f"not a readable enrolment store (SQLite: {error}); it may be corrupt or "
                              "not a database", self.path) from None
        missing = {"schema_version", "model_identity", "embedding_dim"} - set(meta)
        if missing:
            raise FormatError(f"enrolment store lacks {', '.join(sorted(missing))} in its meta table", self.path)
        if meta["schema_version"] != SCHEMA_VERSION:
            raise FormatError(f"store schema version {meta['schema_version']}, this speakertrip reads "
                              f"{SCHEMA_VERSION}", self.path)
        self.model_identity, self.embedding_dim = meta["model_identity"], int(meta["embedding_dim"])
        if model_identity is not None and model_identity != self.model_identity:
            raise ModelMismatchError(
                f"{self.path}: enrolled with model {self.model_identity[:12]}, but this model is "
                f"{model_identity[:12]}; embeddings of different models cannot be compared. Use the "
                "store's model, or enrol the speakers again into a new store with this one")
        if embedding_dim is not None and embedding_dim != self.embedding_dim:
            raise ModelMismatchError(f"{self.path}: store holds {self.embedding_dim}-d embeddings, "
                                     f"the model makes {embedding_dim}-d ones")

    def _enable_wal(self, timeout: float) -> None:
        """Switch a new store to WAL. Two processes creating one store at once can both find it empty; the
        switch needs the file to themselves and SQLite answers "locked" at once instead of waiting, so retry."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    # ---- writes -----------------------------------------------------------------------------
    def add(self, name: str, embeddings: np.ndarray, sources: Sequence[str], replace: bool = False) -> int:
        """Add utterance embeddings (N, D) of ``name`` (``replace`` drops its old ones first).

        Returns the speaker's number of utterances afterwards. All or nothing.
        """
        check_name(name)
        embeddings = self._check_embeddings(embeddings, "utterance")
        if len(sources) != len(embeddings):
            raise ConfigError(f"{len(sources)} sources for {len(embeddings)} embeddings")
        with self._transaction():
            row = self._db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is None:
                speaker = self._db.execute(
                    "INSERT INTO speakers (name, centroid, num_utterances, updated) VALUES (?, ?, 0, '')",
                    (name, b"")).lastrowid
            else:
                speaker = row[0]
                if replace:
                    self._db.execute("DELETE FROM utterances WHERE speaker_id = ?", (speaker,))
            self._db.executemany("INSERT INTO utterances (speaker_id, source, embedding) VALUES (?, ?, ?)",
                                 [(speaker, str(source), vector.astype(_FLOAT).tobytes())
                                  for source, vector in zip(sources, embeddings)])
            blobs = [blob for (blob,) in self._db.execute(
                "SELECT embedding FROM utterances WHERE speaker_id = ?", (speaker,))]
            everything = np.frombuffer(b"".join(blobs), _FLOAT).reshape(len(blobs), self.embedding_dim)
            self._db.execute("UPDATE speakers SET centroid = ?, num_utterances = ?, updated = ? WHERE id = ?",
                             (_centroid(everything).tobytes(), len(blobs), _now(), speaker))
        return len(blobs)

    def remove(self, name: str) -> None:
        """Delete a speaker and its utterances; KeyNotFoundError if not enrolled."""
        with self._transaction():
            speaker = self._speaker_id(name)
            self._db.execute("DELETE FROM utterances WHERE speaker_id = ?", (speaker,))
            self._db.execute("DELETE FROM speakers WHERE id = ?", (speaker,))

    def set_cohort(self, embeddings: np.ndarray, sources: Sequence[str]) -> None:
        """Replace the score-normalisation cohort with these embeddings (N, D)."""
        embeddings = self._check_embeddings(embeddings, "cohort")
        if len(sources) != len(embeddings):
            raise ConfigError(f"{len(sources)} sources for {len(embeddings)} cohort embeddings")
        with self._transaction():
            self._db.execute("DELETE FROM cohort")
            self._db.executemany("INSERT INTO cohort (source, embedding) VALUES (?, ?)",
                                 [(str(s), v.astype(_FLOAT).tobytes()) for s, v in zip(sources, embeddings)])

    # ---- reads ------------------------------------------------------------------------------
    def speakers(self) -> list[SpeakerInfo]:
        """Enrolled speakers, sorted by name."""
        return [SpeakerInfo(*row) for row in self._db.execute(
            "SELECT name, num_utterances, updated FROM speakers ORDER BY name")]

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]

    def __contains__(self, name: object) -> bool:
        return self._db.execute("SELECT 1 FROM speakers WHERE name = ?", (name,)).fetchone() is not None

    def centroid(self, name: str) -> np.ndarray:
        """The speaker's L2-normalised mean embedding (D,) float32."""
        row = self._db.execute("SELECT centroid FROM speakers WHERE name = ?", (name,)).fetchone()
        if row is None:
            self._speaker_id(name)  # raises the helpful error
        return np.frombuffer(row[0], _FLOAT).copy()

    def utterance_embeddings(self, name: str) -> tuple[list[str], np.ndarray]:
        """Sources and embeddings (N, D) of the speaker's enrolment utterances, in enrolment order."""
        rows = self._db.execute("SELECT source, embedding FROM utterances WHERE speaker_id = ? ORDER BY id",
                                (self._speaker_id(name),)).fetchall()
        return [s for s, _ in rows], np.frombuffer(b"".join(b for _, b in rows), _FLOAT).reshape(len(rows), -1).copy()

    def cohort(self) -> np.ndarray:
        """Cohort embeddings (N, D); N = 0 when none were stored."""
        blobs = [blob for (blob,) in self._db.execute("SELECT embedding FROM cohort ORDER BY id")]
        return np.frombuffer(b"".join(blobs), _FLOAT).reshape(len(blobs), self.embedding_dim).copy()

    def centroids(self) -> tuple[list[str], np.ndarray]:
        """All names (sorted) and centroids (S, D), cached until any connection changes the store."""
        version = (self._db.execute("PRAGMA data_version").fetchone()[0], self._writes)
        if self._cache is None or self._cache[0] != version:
            rows = self._db.execute("SELECT name, centroid FROM speakers ORDER BY name").fetchall()
            matrix = np.frombuffer(b"".join(b for _, b in rows), _FLOAT).reshape(len(rows), self.embedding_dim)
            self._cache = (version, [name for name, _ in rows], matrix)
        return self._cache[1], self._cache[2]

    def search(self, embedding: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` speakers whose centroids have the highest cosine with ``embedding`` (D,).

        One matrix-vector product over all centroids and an ``argpartition``: O(S·D).
        """
        if top_k < 1:
            raise ConfigError(f"top_k must be >= 1, got {top_k}")
        names, matrix = self.centroids()
        if not names:
            return []
        scores = matrix @ self._check_embeddings(embedding[None], "query")[0]
        k = min(top_k, len(names))
        best = np.argpartition(-scores, k - 1)[:k]
        best = best[np.lexsort((best, -scores[best]))]
        return [(names[i], float(scores[i])) for i in best]

    # ---- helpers ----------------------------------------------------------------------------
    def _speaker_id(self, name: str) -> int:
        row = self._db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        if row is not None:
            return row[0]
        names = [n for (n,) in self._db.execute("SELECT name FROM speakers")]
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyNotFoundError(f"speaker {name!r} is not enrolled in {self.path} "
                               f"({len(names)} speaker{'s' if len(names) != 1 else ''} enrolled){hint}")

    def _check_embeddings(self, embeddings: np.ndarray, what: str) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ConfigError(f"{what} embeddings must have shape (N, {self.embedding_dim}), got {embeddings.shape}")
        if len(embeddings) == 0:
            raise ConfigError(f"no {what} embeddings given (need at least one utterance)")
        if not np.isfinite(embeddings).all():
            raise ConfigError(f"{what} embeddings contain NaN or infinite values")
        return embeddings

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> EnrolmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the body raises."""

    def __init__(self, store: EnrolmentStore):
        self.store = store

    def __enter__(self) -> None:
        if self.store.read_only:
            raise ReadOnlyStoreError(f"{self.store.path}: the enrolment store is read-only (this process cannot "
                                     "write the file or its folder); nothing was changed. Enrol into a writable "
                                     "copy, or fix the permissions")
        self.store._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type | None, *exc: object) -> None:
        if kind is None:
            self.store._db.execute("COMMIT")
            self.store._writes += 1
        else:
            self.store._db.execute("ROLLBACK")


def _centroid(embeddings: np.ndarray) -> np.ndarray:
    mean = embeddings.astype(np.float64).mean(axis=0)
    return (mean / max(np.linalg.norm(mean), 1e-12)).astype(_FLOAT)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
