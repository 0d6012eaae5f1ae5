"""The SQLite enrolment store: one file on one machine, the embedded default.

Every write is one ``BEGIN IMMEDIATE`` transaction, so a failed call changes nothing and two
processes enrolling at once serialise instead of losing rows (WAL journal, busy timeout). Each
thread gets its own connection; :meth:`SqliteStore.close` closes all of them and folds the
write-ahead log into the file first, so that no ``-wal`` file is left behind holding the last
changes (a reader that could not see it would find deleted speakers again).

SQLite's WAL mode needs a local file system (not NFS). A store this process cannot write opens
read-only: reading works, writing raises :class:`~speakertrip.errors.ReadOnlyStoreError`. In a
read-only folder SQLite cannot make its ``-shm`` index: a store without a write-ahead log is then
read from the file alone (everything committed is in it), and one whose log is still there is
refused, naming what to do. A damaged file raises :class:`~speakertrip.errors.CorruptStoreError`
on every read.
"""

from __future__ import annotations

import datetime
import functools
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

import numpy as np

from speakertrip.errors import CorruptStoreError, ReadOnlyStoreError, StoreError, StoreUnavailableError
from speakertrip.verification.enrolment_store import (FLOAT, EnrolmentStore, Entry, SpeakerInfo, StoreNotFoundError,
                                                       centroids_of, grouped_utterances, top_candidates)

SCHEMA_VERSION = "1"
TABLES = {"meta", "speakers", "utterances", "cohort"}
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
Method = TypeVar("Method", bound=Callable[..., Any])


def missing_store(path: object) -> StoreNotFoundError:
    return StoreNotFoundError(f"{path}: no enrolment store here (the file does not exist); only enrolment creates "
                              f"one: speakertrip enroll --store {path} NAME FILE ...")


def is_writable(path: Path) -> bool:
    """Can SQLite write ``path`` and create its ``-wal``/``-shm`` files beside it?"""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK)


def _translated(method: Method) -> Method:
    """Run ``method``; an ``sqlite3.Error`` becomes the StoreError that says what happened, naming the file."""
    @functools.wraps(method)
    def wrapper(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as error:
            raise self._store_error(error) from None
    return wrapper  # type: ignore[return-value]


class SqliteStore(EnrolmentStore):
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
    idle_checkpoint : seconds after the last write of this store object at which its log is folded into the
        file (a passive checkpoint), so that the file alone holds every change even if the process is killed
    """

    backend = "sqlite"

    def __init__(self, path: str | Path, model_identity: str | None = None, embedding_dim: int | None = None,
                 create: bool = True, timeout: float = 60.0, idle_checkpoint: float = 5.0):
        super().__init__()
        self.path = Path(path)
        self.location = str(self.path)
        self.timeout = timeout
        if self.path.is_dir():
            raise CorruptStoreError(f"{self.path}: is a directory, expected an enrolment store file (.db)")
        exists = self.path.exists()
        if not exists and not (create and model_identity is not None and embedding_dim is not None):
            raise missing_store(self.path)
        self.read_only = exists and not is_writable(self.path)
        self._uri = self._open_uri() if self.read_only else None
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        self.idle_checkpoint = idle_checkpoint
        self._timer: threading.Timer | None = None
        self._checkpointing = threading.Lock()  # held through an idle checkpoint: close() waits for it
        try:
            self._open(model_identity, embedding_dim)
        except BaseException:
            self.close()
            raise

    def _open_uri(self) -> str:
        """How to read a store this process cannot write, without ever missing its write-ahead log."""
        uri = self.path.resolve().as_uri()
        if os.access(self.path.parent, os.W_OK | os.X_OK):
            return f"{uri}?mode=ro"  # SQLite makes the -shm index it needs beside the file
        wal, shm = (Path(f"{self.path}-{suffix}") for suffix in ("wal", "shm"))
        if not wal.exists() or wal.stat().st_size == 0:
            return f"{uri}?immutable=1"  # no log: every committed change is in the file itself
        if shm.exists():
            return f"{uri}?mode=ro"
        raise StoreUnavailableError(
            f"{self.path}: its write-ahead log {wal.name} holds changes not yet in the file, and SQLite cannot "
            "read them in this read-only folder; open the store once where its folder is writable (e.g. "
            f"`speakertrip speakers --store {self.path}` there) so that the log is folded in, then retry")

    @property
    def _db(self) -> sqlite3.Connection:
        """This thread's connection (made on first use)."""
        db = getattr(self._local, "db", None)
        if db is None:
            if self._closed:
                raise StoreError(f"{self.path}: the enrolment store was closed")
            if self._uri is None:
                db = sqlite3.connect(str(self.path), timeout=self.timeout, isolation_level=None,
                                     check_same_thread=False)
            else:
                db = sqlite3.connect(self._uri, timeout=self.timeout, isolation_level=None, uri=True,
                                     check_same_thread=False)
            db.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            with self._lock:
                self._connections.append(db)
            self._local.db = db
        return db

    def _open(self, model_identity: str | None, embedding_dim: int | None) -> None:
        try:
            tables = {row[0] for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and not TABLES <= tables:
                raise CorruptStoreError(f"{self.path}: a SQLite file but not a speakertrip enrolment store (tables: "
                                        f"{', '.join(sorted(tables))}); choose another --store path")
            if not tables:  # a new (or empty) file; another process may be creating it too: all idempotent
                if model_identity is None or embedding_dim is None or self.read_only:
                    raise StoreNotFoundError(f"{self.path}: empty enrolment store; enrol a speaker first")
                self._enable_wal()
                with self._transaction():
                    for statement in _SCHEMA.split(";")[:-1]:
                        self._db.execute(statement)
                    for key, value in (("schema_version", SCHEMA_VERSION), ("model_identity", model_identity),
                                       ("embedding_dim", str(embedding_dim))):
                        self._db.execute("INSERT OR IGNORE INTO meta VALUES (?, ?)", (key, value))
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.Error as error:
            raise self._store_error(error) from None
        self._adopt_meta(meta, SCHEMA_VERSION, model_identity, embedding_dim)

    def _enable_wal(self) -> None:
        """Switch a new store to WAL. Two processes creating one store at once can both find it empty; the
        switch needs the file to themselves and SQLite answers "locked" at once instead of waiting, so retry."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def _store_error(self, error: sqlite3.Error) -> StoreError:
        message = str(error)
        if "readonly" in message or "read-only" in message:
            return ReadOnlyStoreError(f"{self.path}: the enrolment store is read-only (SQLite: {message}); nothing "
                                      "was changed. Enrol into a writable copy, or fix the permissions")
        if "locked" in message or "busy" in message:
            return StoreUnavailableError(f"{self.path}: another process held the store's lock for over "
                                         f"{self.timeout:g} s (SQLite: {message}); retry")
        if "disk I/O" in message or "unable to open" in message or "full" in message:
            return StoreUnavailableError(f"{self.path}: cannot read or write the store file (SQLite: {message})")
        if isinstance(error, (sqlite3.DatabaseError)) and not isinstance(error, sqlite3.ProgrammingError):
            return CorruptStoreError(f"{self.path}: not a readable enrolment store (SQLite: {message}); the file is "
                                     "damaged or not a database. Restore it from a backup, or `speakertrip store "
                                     "copy` what can still be read into a new store")
        return StoreError(f"{self.path}: {message}")

    def _transaction(self) -> _Transaction:
        return _Transaction(self)

    def _read_only_reason(self) -> str:
        return "this process cannot write the file or its folder. Enrol into a writable copy, or fix the permissions"

    # ---- writes -------------------------------------------------------------------------------
    @_translated
    def _write_speakers(self, entries: list[Entry], replace: bool,
                        cohort: tuple[np.ndarray, list[str]] | None) -> list[int]:
        db, now = self._db, _now()
        with self._transaction():
            if cohort is not None:
                db.execute("DELETE FROM cohort")
                db.executemany("INSERT INTO cohort (source, embedding) VALUES (?, ?)",
                               [(source, vector.tobytes()) for vector, source in zip(*cohort)])
            if len(entries) > 64:
                known = dict(db.execute("SELECT name, id FROM speakers"))
            else:
                known = {name: row[0] for name, _, _ in entries
                         for row in db.execute("SELECT id FROM speakers WHERE name = ?", (name,))}
            new = [entry for entry in entries if entry[0] not in known]
            if new:  # bulk: ids assigned here (we hold the write lock), centroids in one numpy pass
                first = (db.execute("SELECT MAX(id) FROM speakers").fetchone()[0] or 0) + 1
                centroids = centroids_of([embeddings for _, embeddings, _ in new])
                db.executemany("INSERT INTO speakers (id, name, centroid, num_utterances, updated) "
                               "VALUES (?, ?, ?, ?, ?)",
                               [(first + i, name, centroids[i].tobytes(), len(embeddings), now)
                                for i, (name, embeddings, _) in enumerate(new)])
                db.executemany("INSERT INTO utterances (speaker_id, source, embedding) VALUES (?, ?, ?)",
                               [(first + i, source, vector.astype(FLOAT).tobytes())
                                for i, (_, embeddings, sources) in enumerate(new)
                                for source, vector in zip(sources, embeddings)])
            counts = {name: len(embeddings) for name, embeddings, _ in new}
            for name, embeddings, sources in entries:
                if name in known:
                    counts[name] = self._add_to(known[name], embeddings, sources, replace, now)
        return [counts[name] for name, _, _ in entries]

    def _add_to(self, speaker: int, embeddings: np.ndarray, sources: list[str], replace: bool, now: str) -> int:
        db = self._db
        if replace:
            db.execute("DELETE FROM utterances WHERE speaker_id = ?", (speaker,))
        db.executemany("INSERT INTO utterances (speaker_id, source, embedding) VALUES (?, ?, ?)",
                       [(speaker, source, vector.astype(FLOAT).tobytes())
                        for source, vector in zip(sources, embeddings)])
        blobs = [blob for (blob,) in db.execute("SELECT embedding FROM utterances WHERE speaker_id = ?", (speaker,))]
        everything = np.frombuffer(b"".join(blobs), FLOAT).reshape(len(blobs), self.embedding_dim)
        db.execute("UPDATE speakers SET centroid = ?, num_utterances = ?, updated = ? WHERE id = ?",
                   (centroids_of([everything])[0].tobytes(), len(blobs), now, speaker))
        return len(blobs)

    @_translated
    def _delete_speaker(self, name: object) -> bool:
        with self._transaction():
            row = self._db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is not None:
                self._db.execute("DELETE FROM utterances WHERE speaker_id = ?", row)
                self._db.execute("DELETE FROM speakers WHERE id = ?", row)
        return row is not None

    # ---- reads --------------------------------------------------------------------------------
    @_translated
    def speakers(self) -> list[SpeakerInfo]:
        return [SpeakerInfo(*row) for row in self._db.execute(
            "SELECT name, num_utterances, updated FROM speakers ORDER BY name")]

    @_translated
    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0]

    @_translated
    def _names(self) -> list[str]:
        return [name for (name,) in self._db.execute("SELECT name FROM speakers")]

    @_translated
    def _read_centroid(self, name: object) -> np.ndarray | None:
        row = self._db.execute("SELECT centroid FROM speakers WHERE name = ?", (name,)).fetchone()
        return None if row is None else np.frombuffer(row[0], FLOAT).copy()

    @_translated
    def _read_utterances(self, name: object) -> tuple[list[str], np.ndarray] | None:
        row = self._db.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        rows = self._db.execute("SELECT source, embedding FROM utterances WHERE speaker_id = ? ORDER BY id",
                                row).fetchall()
        return [s for s, _ in rows], self._matrix([b for _, b in rows])

    @_translated
    def cohort(self) -> np.ndarray:
        return self._matrix([blob for (blob,) in self._db.execute("SELECT embedding FROM cohort ORDER BY id")])

    @_translated
    def _read_cohort_sources(self) -> list[str]:
        return [source for (source,) in self._db.execute("SELECT source FROM cohort ORDER BY id")]

    @_translated
    def _read_centroids(self) -> tuple[list[str], np.ndarray]:
        rows = self._db.execute("SELECT name, centroid FROM speakers ORDER BY name").fetchall()
        return [name for name, _ in rows], self._matrix([blob for _, blob in rows])

    @_translated
    def all_utterances(self) -> Iterator[tuple[str, list[str], np.ndarray]]:
        rows = self._db.execute("SELECT s.name, u.source, u.embedding FROM utterances u JOIN speakers s "
                                "ON s.id = u.speaker_id ORDER BY s.name, u.id").fetchall()
        return grouped_utterances(rows, self._matrix)

    @_translated
    def _generation(self) -> object:
        row = self._db.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return None if row is None else row[0]

    def _candidates(self, query: np.ndarray, count: int) -> tuple[list[str], np.ndarray]:
        """An exact scan: one matrix-vector product over the cached centroids, O(S·D)."""
        names, matrix = self.centroids()
        best = top_candidates(matrix @ query, count)
        return [names[i] for i in best], matrix[best]

    @_translated
    def _check(self) -> dict:
        meta = dict(self._db.execute("SELECT key, value FROM meta"))
        return {"schema_version": meta.get("schema_version"), "model": meta.get("model_identity"),
                "speakers": self._db.execute("SELECT COUNT(*) FROM speakers").fetchone()[0],
                "read_only": self.read_only}

    def _written(self) -> None:
        """After a commit: (re)start the idle timer whose checkpoint folds the log into the file."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if not self._closed:
                self._timer = threading.Timer(self.idle_checkpoint, self._checkpoint)
                self._timer.daemon = True
                self._timer.start()

    def _checkpoint(self) -> None:
        """A passive checkpoint on a connection of its own (never inside another thread's transaction)."""
        with self._checkpointing:
            try:
                with self._lock:
                    if self._closed:
                        return
                    db = sqlite3.connect(str(self.path), timeout=1, isolation_level=None)
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                finally:
                    db.close()
            except sqlite3.Error:
                pass  # busy or gone: the next write, or close(), checkpoints
            finally:
                with self._lock:  # a finished timer holds this method, hence the store: let the store go
                    if self._timer is threading.current_thread():
                        self._timer = None

    def close(self) -> None:
        """Close every thread's connection, folding the write-ahead log into the file first (a later
        reader that cannot see the log, e.g. in a read-only copy, then still sees every change)."""
        with self._lock:
            connections, self._connections, self._closed = self._connections, [], True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        with self._checkpointing:  # a checkpoint already running finishes first: its connection must not
            pass                   # outlive ours, or the log would stay beside the file when this process exits
        if connections and not self.read_only:
            try:
                connections[0].execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error:
                pass  # busy (another process reads) or damaged: SQLite checkpoints when its last connection closes
        for db in connections:
            db.close()


class _Transaction:
    """``BEGIN IMMEDIATE`` ... (bump the generation) ``COMMIT``, or ``ROLLBACK`` when the body raises."""

    def __init__(self, store: SqliteStore):
        self.store = store

    def __enter__(self) -> None:
        self.store._refuse_write()
        self.store._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type | None, *exc: object) -> None:
        db = self.store._db
        if kind is None:
            try:
                db.execute("INSERT INTO meta VALUES ('generation', '1') "
                           "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1")
                db.execute("COMMIT")
                self.store._written()
                return
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
        if db.in_transaction:
            db.execute("ROLLBACK")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
