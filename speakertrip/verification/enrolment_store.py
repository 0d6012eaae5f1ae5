"""The enrolment store's contract: speakers, their utterance embeddings and a cohort, tied to one model.

Two backends keep it: :class:`~speakertrip.verification.sqlite_store.SqliteStore` (one file on
one machine, the default) and :class:`~speakertrip.verification.postgres_store.PostgresStore`
(PostgreSQL + pgvector, shared by service replicas). :func:`speakertrip.verification.stores.open_store`
picks one from the store string; the Verifier and the service only see this interface.

Every backend keeps the same promises: the store records the model's identity and schema version
and refuses another; an enrolment is one transaction; concurrent enrolments lose nothing; only
enrolment creates a store; a store that may only be read refuses writes with
:class:`~speakertrip.errors.ReadOnlyStoreError`. Each speaker keeps every utterance embedding and
their centroid, the L2-normalised mean recomputed inside the enrolment's transaction. Search
returns exact cosines: a backend proposes candidates, :func:`rerank` scores them in float64.

>>> import tempfile
>>> import numpy as np
>>> from pathlib import Path
>>> from speakertrip.verification.stores import open_store
>>> store = open_store(Path(tempfile.mkdtemp()) / "speakers.db", model_identity="3f2a", embedding_dim=4)
>>> store.add("alice", np.random.default_rng(0).standard_normal((2, 4)), sources=["a1.wav", "a2.wav"])
2
>>> len(store), store.centroid("alice").shape
(1, (4,))
>>> store.close()
"""

from __future__ import annotations

import abc
import difflib
import threading
import unicodedata
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from speakertrip.errors import ConfigError, CorruptStoreError, KeyNotFoundError, ReadOnlyStoreError, SpeakertripError

FLOAT = np.dtype("<f4")
MAX_NAME_LENGTH = 128
RERANK_MARGIN = 16  # extra candidates re-scored exactly beyond top_k
Entry = tuple[str, np.ndarray, Sequence[str]]  # (name, utterance embeddings (N, D), their sources)


class ModelMismatchError(SpeakertripError):
    """The store's embeddings were made by another model than the one asked to score with it."""


class StoreNotFoundError(KeyNotFoundError):
    """No enrolment store where the store string points (only enrolment creates one)."""


@dataclass(frozen=True)
class SpeakerInfo:
    """One enrolled speaker: name, number of utterances, last change (ISO 8601, UTC)."""

    name: str
    num_utterances: int
    updated: str


def check_name(name: object) -> str:
    """The speaker name as stored (NFC-normalised), or ConfigError saying which rule it breaks.

    A name is 1-128 characters after NFC normalisation, with no control or format characters
    (Unicode categories Cc and Cf: line breaks, NUL, bidi overrides, zero-width joiners), no ``/``
    and no leading or trailing whitespace. Every backend and every caller applies this one rule.

    >>> check_name("Zoë Ng"), check_name("Zoe\\u0308 Ng") == "Zoë Ng"
    ('Zoë Ng', True)
    >>> check_name("eve\\u202e")
    Traceback (most recent call last):
    ...
    speakertrip.errors.ConfigError: speaker name 'eve\\u202e' has a control or format character U+202E; names are printable text
    """
    if not isinstance(name, str):
        raise ConfigError(f"speaker name must be a string, got {type(name).__name__} {name!r}")
    normal = unicodedata.normalize("NFC", name)
    if not normal.strip():
        raise ConfigError(f"speaker name must be a non-empty string, got {name!r}")
    if len(normal) > MAX_NAME_LENGTH:
        raise ConfigError(f"speaker name {normal[:20]!r}... has {len(normal)} characters; at most "
                          f"{MAX_NAME_LENGTH} are allowed")
    bad = next((ch for ch in normal if unicodedata.category(ch) in ("Cc", "Cf")), None)
    if bad is not None:
        raise ConfigError(f"speaker name {name!r} has a control or format character U+{ord(bad):04X}; "
                          "names are printable text")
    if normal != normal.strip():
        raise ConfigError(f"speaker name {name!r} has leading or trailing whitespace")
    if "/" in normal:
        raise ConfigError(f"speaker name {name!r} contains '/', which URLs and paths cannot carry; "
                          "use another separator")
    return normal


def name_key(name: object) -> object:
    """How lookups spell a name: NFC-normalised like :func:`check_name`, but never an error."""
    return unicodedata.normalize("NFC", name) if isinstance(name, str) else name


def centroids_of(embeddings: Sequence[np.ndarray]) -> np.ndarray:
    """The L2-normalised float64 mean of each (N_i, D) array, as float32 (S, D), in one pass."""
    counts = np.array([len(e) for e in embeddings])
    stacked = np.concatenate(embeddings).astype(np.float64)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    means = np.add.reduceat(stacked, starts, axis=0) / counts[:, None]
    return (means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)).astype(FLOAT)


def rerank(names: Sequence[str], vectors: np.ndarray, query: np.ndarray, top_k: int) -> list[tuple[str, float]]:
    """The ``top_k`` of the candidate ``names`` by exact cosine (float64 dot of the float32 vectors
    (C, D) with ``query`` (D,)), best first; ties go to the earlier candidate."""
    if not len(names):
        return []
    scores = vectors.astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))[:top_k]
    return [(names[i], float(scores[i])) for i in order]


def top_candidates(scores: np.ndarray, count: int) -> np.ndarray:
    """Indices of the ``count`` highest ``scores`` (any order): one ``argpartition``, O(S)."""
    if count >= len(scores):
        return np.arange(len(scores))
    return np.argpartition(-scores, count - 1)[:count]


def grouped_utterances(rows: Sequence[tuple[str, str, bytes]], matrix: Callable[[list[bytes]], np.ndarray]
                       ) -> Iterator[tuple[str, list[str], np.ndarray]]:
    """(name, source, embedding bytes) rows sorted by name → (name, sources, embeddings (N, D)) per speaker."""
    start = 0
    for end in range(1, len(rows) + 1):
        if end == len(rows) or rows[end][0] != rows[start][0]:
            group = rows[start:end]
            yield group[0][0], [source for _, source, _ in group], matrix([blob for _, _, blob in group])
            start = end


class EnrolmentStore(abc.ABC):
    """Enrolled speakers tied to one model; thread-safe (one store serves every request thread).

    Attributes: ``backend`` (``"sqlite"`` or ``"postgresql"``), ``location`` (how messages name the
    store, passwords masked), ``model_identity``, ``embedding_dim``, ``read_only``.
    """

    backend: str
    location: str
    model_identity: str
    embedding_dim: int
    read_only: bool = False

    def __init__(self) -> None:
        self._cache: tuple[object, list[str], np.ndarray] | None = None
        self._cache_lock = threading.Lock()

    # ---- writes -------------------------------------------------------------------------------
    def add(self, name: str, embeddings: np.ndarray, sources: Sequence[str], replace: bool = False) -> int:
        """Add utterance embeddings (N, D) of ``name`` (``replace`` drops its old ones first).

        Returns the speaker's number of utterances afterwards. All or nothing.
        """
        return self.add_many([(name, embeddings, sources)], replace=replace)[0]

    def add_many(self, entries: Iterable[Entry], replace: bool = False,
                 cohort: tuple[np.ndarray, Sequence[str]] | None = None) -> list[int]:
        """:meth:`add` for many speakers in one transaction (bulk enrolment, copies); returns their counts.

        ``cohort`` (embeddings, sources), when given, replaces the cohort in the same transaction.
        """
        if cohort is not None:
            embeddings, sources = cohort
            embeddings = self._check_embeddings(embeddings, "cohort")
            if len(sources) != len(embeddings):
                raise ConfigError(f"{len(sources)} sources for {len(embeddings)} cohort embeddings")
            cohort = (embeddings, [str(source) for source in sources])
        checked, seen = [], set()
        for name, embeddings, sources in entries:
            name = check_name(name)
            if name in seen:
                raise ConfigError(f"speaker {name!r} appears twice in one bulk enrolment; merge its utterances")
            seen.add(name)
            embeddings = self._check_embeddings(embeddings, "utterance")
            if len(sources) != len(embeddings):
                raise ConfigError(f"{len(sources)} sources for {len(embeddings)} embeddings of {name!r}")
            checked.append((name, embeddings, [str(source) for source in sources]))
        if not checked and cohort is None:
            return []
        self._refuse_write()
        return self._write_speakers(checked, replace, cohort)

    def remove(self, name: str) -> None:
        """Delete a speaker and its utterances; KeyNotFoundError if not enrolled."""
        self._refuse_write()
        if not self._delete_speaker(name_key(name)):
            raise self._not_enrolled(name)

    def set_cohort(self, embeddings: np.ndarray, sources: Sequence[str]) -> None:
        """Replace the score-normalisation cohort with these embeddings (N, D)."""
        self.add_many([], cohort=(embeddings, sources))

    # ---- reads --------------------------------------------------------------------------------
    def centroid(self, name: str) -> np.ndarray:
        """The speaker's L2-normalised mean embedding (D,) float32."""
        found = self._read_centroid(name_key(name))
        if found is None:
            raise self._not_enrolled(name)
        return found

    def utterance_embeddings(self, name: str) -> tuple[list[str], np.ndarray]:
        """Sources and embeddings (N, D) of the speaker's enrolment utterances, in enrolment order."""
        found = self._read_utterances(name_key(name))
        if found is None:
            raise self._not_enrolled(name)
        return found

    def centroids(self) -> tuple[list[str], np.ndarray]:
        """All names (sorted) and centroids (S, D), cached until any writer changes the store."""
        generation = self._generation()  # read first: a write between the two reads only refreshes again
        with self._cache_lock:
            if self._cache is None or self._cache[0] != generation:
                self._cache = (generation, *self._read_centroids())
            return self._cache[1], self._cache[2]

    def search(self, embedding: np.ndarray, top_k: int = 5) -> list[tuple[str, float]]:
        """The ``top_k`` speakers whose centroids have the highest cosine with ``embedding`` (D,), best first.

        The backend proposes ``top_k + RERANK_MARGIN`` candidates (an exact scan, or an index);
        their cosines are then computed exactly, so the scores are exact whichever found them.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1:
            raise ConfigError(f"top_k must be an integer >= 1, got {top_k!r}")
        query = self._check_embeddings(np.asarray(embedding, dtype=np.float32)[None], "query")[0]
        names, vectors = self._candidates(query, int(top_k) + RERANK_MARGIN)
        return rerank(names, vectors, query, int(top_k))

    def __contains__(self, name: object) -> bool:
        return self._read_centroid(name_key(name)) is not None

    @abc.abstractmethod
    def speakers(self) -> list[SpeakerInfo]:
        """Enrolled speakers, sorted by name."""

    @abc.abstractmethod
    def __len__(self) -> int:
        """The number of enrolled speakers."""

    @abc.abstractmethod
    def cohort(self) -> np.ndarray:
        """Cohort embeddings (N, D); N = 0 when none were stored."""

    @abc.abstractmethod
    def all_utterances(self) -> Iterator[tuple[str, list[str], np.ndarray]]:
        """Every speaker (by name) with its sources and utterance embeddings (N, D): what a copy moves."""

    def build_index(self, m: int = 16, ef_construction: int = 64, memory: str = "2GB") -> float:
        """Build the backend's search index over the centroids; returns the seconds it took.

        A backend without one (SQLite: one matrix product over every centroid) raises ConfigError.
        """
        raise ConfigError(f"{self.location}: a {self.backend} store searches every centroid exactly; it has no "
                          "index to build (PostgreSQL stores do)")

    def cohort_sources(self) -> list[str]:
        """The cohort's sources, in the order of :meth:`cohort`."""
        return self._read_cohort_sources()

    def check(self) -> dict:
        """Health: read the store now (schema, model, speakers) and say what was read; StoreError if it cannot."""
        return {"backend": self.backend, "store": self.location, **self._check()}

    @abc.abstractmethod
    def close(self) -> None:
        """Close every connection of this store (SQLite also folds its write-ahead log into the file)."""

    def __enter__(self) -> EnrolmentStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- what a backend provides ---------------------------------------------------------------
    @abc.abstractmethod
    def _write_speakers(self, entries: list[Entry], replace: bool,
                        cohort: tuple[np.ndarray, list[str]] | None) -> list[int]:
        """Checked entries (NFC names, float32 arrays) → counts afterwards, and the cohort when given
        (replacing the old one); one transaction."""

    @abc.abstractmethod
    def _delete_speaker(self, name: object) -> bool:
        """Delete the speaker; False when it is not enrolled."""

    @abc.abstractmethod
    def _read_cohort_sources(self) -> list[str]: ...

    @abc.abstractmethod
    def _read_centroid(self, name: object) -> np.ndarray | None: ...

    @abc.abstractmethod
    def _read_utterances(self, name: object) -> tuple[list[str], np.ndarray] | None: ...

    @abc.abstractmethod
    def _read_centroids(self) -> tuple[list[str], np.ndarray]: ...

    @abc.abstractmethod
    def _generation(self) -> object:
        """A value that changes whenever any writer commits (cache key of :meth:`centroids`)."""

    @abc.abstractmethod
    def _candidates(self, query: np.ndarray, count: int) -> tuple[list[str], np.ndarray]:
        """At least the ``count`` (or all, if fewer) best names and their centroids for ``query``."""

    @abc.abstractmethod
    def _check(self) -> dict: ...

    @abc.abstractmethod
    def _names(self) -> list[str]: ...

    # ---- shared helpers ------------------------------------------------------------------------
    def _refuse_write(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"{self.location}: the enrolment store is read-only ({self._read_only_reason()}); "
                                     "nothing was changed")

    def _read_only_reason(self) -> str:
        return "this process may only read it"

    def _not_enrolled(self, name: object) -> KeyNotFoundError:
        names = self._names()
        close = difflib.get_close_matches(str(name), names, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        return KeyNotFoundError(f"speaker {name!r} is not enrolled in {self.location} "
                                f"({len(names)} speaker{'s' if len(names) != 1 else ''} enrolled){hint}")

    def _matrix(self, blobs: list[bytes]) -> np.ndarray:
        """Stored float32 embedding bytes → (N, D)."""
        return np.frombuffer(b"".join(blobs), FLOAT).reshape(len(blobs), self.embedding_dim).copy()

    def _check_embeddings(self, embeddings: np.ndarray, what: str) -> np.ndarray:
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_dim:
            raise ConfigError(f"{what} embeddings must have shape (N, {self.embedding_dim}), got {embeddings.shape}")
        if len(embeddings) == 0:
            raise ConfigError(f"no {what} embeddings given (need at least one utterance)")
        if not np.isfinite(embeddings).all():
            raise ConfigError(f"{what} embeddings contain NaN or infinite values")
        return embeddings

    def _adopt_meta(self, meta: dict[str, str], schema_version: str, model_identity: str | None,
                    embedding_dim: int | None) -> None:
        """Take the model identity and dimension from the store's meta rows, after checking its schema version
        and (when given) that the model is the store's."""
        missing = {"schema_version", "model_identity", "embedding_dim"} - set(meta)
        if missing:
            raise CorruptStoreError(f"{self.location}: enrolment store lacks {', '.join(sorted(missing))} in its "
                                    "meta table")
        if meta["schema_version"] != schema_version:
            raise CorruptStoreError(f"{self.location}: store schema version {meta['schema_version']}, this "
                                    f"speakertrip reads {schema_version}; use the speakertrip that wrote it")
        self.model_identity, self.embedding_dim = meta["model_identity"], int(meta["embedding_dim"])
        self._check_model(model_identity, embedding_dim)

    def _check_model(self, model_identity: str | None, embedding_dim: int | None) -> None:
        """ModelMismatchError unless the store's model is the one given (None: not checked)."""
        if model_identity is not None and model_identity != self.model_identity:
            raise ModelMismatchError(
                f"{self.location}: enrolled with model {self.model_identity[:12]}, but this model is "
                f"{model_identity[:12]}; embeddings of different models cannot be compared. Use the "
                "store's model, or enrol the speakers again into a new store with this one")
        if embedding_dim is not None and embedding_dim != self.embedding_dim:
            raise ModelMismatchError(f"{self.location}: store holds {self.embedding_dim}-d embeddings, "
                                     f"the model makes {embedding_dim}-d ones")
