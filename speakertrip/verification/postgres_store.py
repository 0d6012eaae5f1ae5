"""The PostgreSQL + pgvector enrolment store: one database shared by every service replica.

Tables live in their own schema (``speakertrip`` unless the URL says ``?schema=NAME``): ``meta``
(schema version, model identity, dimension, a generation counter bumped by every write),
``speakers`` (name, centroid as a pgvector ``vector(D)``), ``utterances`` and ``cohort`` (float32
bytes). Connections come from a pool (psycopg 3 + psycopg_pool, the ``postgres`` extra) that
checks each connection before handing it out, so the store reconnects by itself after a database
restart; a request that meets the restart gets :class:`~speakertrip.errors.StoreUnavailableError`
(the service answers 503), and PostgreSQL's commit guarantees that no acknowledged enrolment is lost.

Search: :meth:`PostgresStore.build_index` builds an HNSW index (cosine distance) over the
centroids; ``identify`` then asks it for ``top_k + 16`` candidates (``ef_search``, at least that
many) and re-ranks them by exact cosine. Without the index, or while the store is smaller than
``exact_below`` speakers, the candidates come from an exact scan.

URL: ``postgresql://user:password@host:port/database?schema=speakertrip&ef_search=100&exact_below=10000
&pool_size=8``; the last four are speakertrip's, the rest (and the ``PG*`` environment variables and
password file) are libpq's. Messages show the URL with its password masked.
"""

from __future__ import annotations

import datetime
import functools
import re
import struct
import threading
import time
from typing import Any, Callable, Iterator, TypeVar
from urllib.parse import parse_qsl, urlencode

import numpy as np

from speakertrip.errors import (ConfigError, CorruptStoreError, ReadOnlyStoreError, StoreError,
                                StoreUnavailableError)
from speakertrip.verification.enrolment_store import (FLOAT, EnrolmentStore, Entry, SpeakerInfo, StoreNotFoundError,
                                                       centroids_of, grouped_utterances)

SCHEMA_VERSION = "1"
SCHEMES = ("postgresql://", "postgres://")
INDEX_NAME = "speakers_centroid_hnsw"
BULK = 64  # entries from which one enrolment goes through COPY
RECONNECT_S = 5.0  # the pool retries a lost server for this long, then afresh at the next request
OPTIONS = {"schema": str, "ef_search": int, "exact_below": int, "pool_size": int}
Method = TypeVar("Method", bound=Callable[..., Any])


def is_postgres_url(location: object) -> bool:
    return isinstance(location, str) and location.startswith(SCHEMES)


def mask_url(text: str) -> str:
    """``text`` with any password of a PostgreSQL URL (``user:PASS@`` or ``password=PASS``) shown as ``***``.

    >>> mask_url("postgresql://app:s3cret@db:5432/voices?password=x&sslmode=require")
    'postgresql://app:***@db:5432/voices?password=***&sslmode=require'
    """
    text = re.sub(r"(postgres(?:ql)?://[^/@:?#\s]*:)[^@/?#\s]*@", r"\1***@", text)
    return re.sub(r"(\bpassword=)[^&\s]*", r"\1***", text)


def split_url(url: str) -> tuple[str, dict[str, Any]]:
    """The libpq URL and speakertrip's options (``schema``, ``ef_search``, ``exact_below``, ``pool_size``)."""
    base, _, query = url.partition("?")
    kept, options = [], {}
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in OPTIONS:
            kept.append((key, value))
            continue
        try:
            options[key] = OPTIONS[key](value)
        except ValueError:
            raise ConfigError(f"{mask_url(url)}: option {key}={value!r} must be an integer") from None
    return base + (f"?{urlencode(kept)}" if kept else ""), options


def _translated(method: Method) -> Method:
    """Run ``method``; a psycopg or pool error becomes the StoreError that says what happened."""
    @functools.wraps(method)
    def wrapper(self: PostgresStore, *args: Any, **kwargs: Any) -> Any:
        import psycopg
        import psycopg_pool

        try:
            return method(self, *args, **kwargs)
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as error:
            raise self._store_error(error) from None
    return wrapper  # type: ignore[return-value]


class PostgresStore(EnrolmentStore):
    """Enrolled speakers in PostgreSQL with pgvector, tied to one model; shared by processes and machines.

    Parameters
    ----------
    url : ``postgresql://`` or ``postgres://`` URL (see the module docstring for its options)
    model_identity, embedding_dim, create : as :class:`~speakertrip.verification.sqlite_store.SqliteStore`
    timeout : seconds a call waits for a connection (the server down or restarting, or every pooled
        connection busy) before StoreUnavailableError
    ef_search : HNSW candidate list size of a search (recall against speed); at least top_k + 16 is used
    exact_below : scan exactly (no index) while the store holds fewer speakers than this
    pool_size : connections at most in this process's pool
    schema : the PostgreSQL schema holding the store's tables
    """

    backend = "postgresql"

    def __init__(self, url: str, model_identity: str | None = None, embedding_dim: int | None = None,
                 create: bool = True, timeout: float = 10.0, ef_search: int | None = None,
                 exact_below: int | None = None, pool_size: int | None = None, schema: str | None = None):
        super().__init__()
        try:
            import psycopg
            import psycopg_pool
        except ImportError as error:
            raise ConfigError(f"a PostgreSQL store needs the postgres extra ({error.name} is missing): "
                              "pip install 'speakertrip[postgres]'") from None
        self.location = mask_url(url)
        conninfo, options = split_url(url)
        self.ef_search = _positive("ef_search", ef_search if ef_search is not None else options.get("ef_search", 100))
        self.exact_below = _positive("exact_below", exact_below if exact_below is not None
                                     else options.get("exact_below", 10_000), zero=True)
        self.pool_size = _positive("pool_size", pool_size if pool_size is not None else options.get("pool_size", 8))
        self.schema = schema if schema is not None else options.get("schema", "speakertrip")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.schema):
            raise ConfigError(f"{self.location}: schema {self.schema!r} must be a lower-case SQL name "
                              "(letters, digits, _)")
        self.timeout = timeout
        self._plan: tuple[float, bool] = (-1.0, False)
        self._plan_lock = threading.Lock()
        self._vector_oid = 0
        kwargs = {"autocommit": True, "connect_timeout": max(2, int(min(timeout, 5)))}
        try:
            with psycopg.connect(conninfo, **kwargs) as conn:
                self._open(conn, model_identity, embedding_dim, create)
        except psycopg.Error as error:
            raise self._store_error(error, connecting=True) from None
        self._pool = psycopg_pool.ConnectionPool(
            conninfo, kwargs=kwargs, min_size=1, max_size=self.pool_size, open=False, configure=self._configure,
            check=psycopg_pool.ConnectionPool.check_connection, timeout=timeout, name="speakertrip-store",
            reconnect_timeout=RECONNECT_S)
        self._pool.open(wait=False)

    # ---- opening ------------------------------------------------------------------------------
    def _open(self, conn: Any, model_identity: str | None, embedding_dim: int | None, create: bool) -> None:
        s = self.schema
        found = conn.execute("SELECT to_regclass(%s) IS NOT NULL, EXISTS (SELECT 1 FROM pg_tables WHERE "
                             "schemaname = %s)", (f"{s}.meta", s)).fetchone()
        if not found[0]:
            if found[1]:
                raise CorruptStoreError(f"{self.location}: schema {s} holds tables but no speakertrip meta table; "
                                        "not an enrolment store (choose another ?schema=)")
            if not (create and model_identity is not None and embedding_dim is not None):
                raise StoreNotFoundError(f"{self.location}: no enrolment store in this database (no table {s}.meta); "
                                         f"only enrolment creates one: speakertrip enroll --store URL NAME FILE ...")
            self._create(conn, model_identity, embedding_dim)
        self._adopt_meta(dict(conn.execute(f"SELECT key, value FROM {s}.meta").fetchall()), SCHEMA_VERSION,
                         model_identity, embedding_dim)
        oid = conn.execute("SELECT to_regtype('vector')::oid").fetchone()[0]
        if not oid:
            raise CorruptStoreError(f"{self.location}: the pgvector type 'vector' is not visible (extension dropped, "
                                    "or not on the search_path)")
        self._vector_oid = oid
        allowed, read_only, self.user = conn.execute(
            "SELECT has_table_privilege(%s, 'INSERT, UPDATE, DELETE'), current_setting('transaction_read_only') "
            "= 'on', current_user", (f"{s}.speakers",)).fetchone()
        self._why_read_only = (f"role {self.user} has no INSERT, UPDATE and DELETE rights on {s}.speakers"
                               if not allowed else "the server accepts only reads (a standby?)")
        self.read_only = not allowed or read_only

    def _create(self, conn: Any, model_identity: str, embedding_dim: int) -> None:
        """The extension, schema, tables and meta rows, once: concurrent creators wait on one advisory lock."""
        import psycopg

        s = self.schema
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"speakertrip store {s}",))
            if conn.execute("SELECT EXISTS (SELECT 1 FROM pg_tables WHERE schemaname = %s AND tablename = 'meta')",
                            (s,)).fetchone()[0]:  # a catalog scan: to_regclass may answer from a stale cache
                return  # another process made it while we waited (and may be enrolling: no DDL now)
            if conn.execute("SELECT to_regtype('vector')").fetchone()[0] is None:
                try:
                    with conn.transaction():
                        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
                except psycopg.errors.InsufficientPrivilege:
                    raise ConfigError(f"{self.location}: the pgvector extension is not installed in this database "
                                      f"and role {conn.info.user} may not install it; ask an administrator to run "
                                      "CREATE EXTENSION vector; in it") from None
                except psycopg.errors.FeatureNotSupported as error:
                    raise ConfigError(f"{self.location}: cannot install pgvector ({error}); install the "
                                      "pgvector package on the PostgreSQL server") from None
            conn.execute(f"""
                CREATE SCHEMA IF NOT EXISTS {s};
                CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value text NOT NULL);
                CREATE TABLE IF NOT EXISTS {s}.speakers (
                    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, name text NOT NULL UNIQUE,
                    centroid vector({int(embedding_dim)}) NOT NULL, num_utterances integer NOT NULL,
                    updated timestamptz NOT NULL);
                CREATE TABLE IF NOT EXISTS {s}.utterances (
                    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
                    speaker_id bigint NOT NULL REFERENCES {s}.speakers (id) ON DELETE CASCADE,
                    source text NOT NULL, embedding bytea NOT NULL);
                CREATE INDEX IF NOT EXISTS utterances_by_speaker ON {s}.utterances (speaker_id);
                CREATE TABLE IF NOT EXISTS {s}.cohort (
                    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, source text NOT NULL,
                    embedding bytea NOT NULL)""")
            with conn.cursor() as cursor:
                cursor.executemany(f"INSERT INTO {s}.meta VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                                   [("schema_version", SCHEMA_VERSION), ("model_identity", model_identity),
                                    ("embedding_dim", str(embedding_dim)), ("generation", "0")])

    def _configure(self, conn: Any) -> None:
        """Each new pooled connection: numpy ↔ ``vector`` in binary, and the HNSW search setting."""
        from psycopg.adapt import Dumper, Loader
        from psycopg.pq import Format

        oid = self._vector_oid

        class VectorDumper(Dumper):
            format = Format.BINARY

            def dump(self, vector: np.ndarray) -> bytes:
                return struct.pack(">HH", len(vector), 0) + np.asarray(vector, ">f4").tobytes()

        class VectorLoader(Loader):
            format = Format.BINARY

            def load(self, data: Any) -> np.ndarray:
                return np.frombuffer(data, ">f4", offset=4).astype(FLOAT)

        VectorDumper.oid = oid
        conn.adapters.register_dumper(np.ndarray, VectorDumper)
        conn.adapters.register_loader(oid, VectorLoader)
        conn.execute(f"SET hnsw.ef_search = {int(self.ef_search)}")

    def _store_error(self, error: Exception, connecting: bool = False) -> StoreError:
        import psycopg

        message = " ".join(str(error).split())
        if isinstance(error, (psycopg.errors.InsufficientPrivilege, psycopg.errors.ReadOnlySqlTransaction)):
            return ReadOnlyStoreError(f"{self.location}: the enrolment store is read-only for this role "
                                      f"(PostgreSQL: {message}); nothing was changed")
        if connecting and "does not exist" in message:
            return StoreNotFoundError(f"{self.location}: {message}; only enrolment creates a store, and only "
                                      "inside an existing database (createdb NAME)")
        if isinstance(error, psycopg.OperationalError) or not isinstance(error, psycopg.Error):
            return StoreUnavailableError(f"{self.location}: PostgreSQL is unavailable "
                                         f"({message or type(error).__name__}); retry")
        if isinstance(error, (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedColumn,
                              psycopg.errors.UndefinedObject)):
            return CorruptStoreError(f"{self.location}: the enrolment store's tables are missing or changed "
                                     f"(PostgreSQL: {message})")
        if isinstance(error, psycopg.errors.UniqueViolation):
            return StoreError(f"{self.location}: another writer enrolled one of these speakers at the same moment "
                              "(nothing was changed); retry")
        return StoreError(f"{self.location}: PostgreSQL: {message}")

    def _read_only_reason(self) -> str:
        return self._why_read_only

    # ---- writes -------------------------------------------------------------------------------
    @_translated
    def _write_speakers(self, entries: list[Entry], replace: bool,
                        cohort: tuple[np.ndarray, list[str]] | None) -> list[int]:
        s = self.schema
        with self._pool.connection() as conn, conn.transaction():
            self._bump(conn)
            if cohort is not None:
                conn.execute(f"DELETE FROM {s}.cohort")
                with conn.cursor().copy(f"COPY {s}.cohort (source, embedding) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "bytea"])
                    for vector, source in zip(*cohort):
                        copy.write_row((source, vector.tobytes()))
            if len(entries) < BULK:
                return [self._add_one(conn, *entry, replace) for entry in entries]
            known = dict(conn.execute(f"SELECT name, id FROM {s}.speakers WHERE name = ANY(%s)",
                                      ([name for name, _, _ in entries],)).fetchall())
            new = [entry for entry in entries if entry[0] not in known]
            counts = {name: self._add_to(conn, known[name], embeddings, sources, replace)
                      for name, embeddings, sources in entries if name in known}
            if new:
                self._copy_new(conn, new)
                counts.update((name, len(embeddings)) for name, embeddings, _ in new)
            return [counts[name] for name, _, _ in entries]

    def _add_one(self, conn: Any, name: str, embeddings: np.ndarray, sources: list[str], replace: bool) -> int:
        s = self.schema
        for _ in range(5):  # a concurrent remove may take the row between the two statements: try again
            row = conn.execute(f"INSERT INTO {s}.speakers (name, centroid, num_utterances, updated) "
                               "VALUES (%s, %b, %s, now()) ON CONFLICT (name) DO NOTHING RETURNING id",
                               (name, centroids_of([embeddings])[0], len(embeddings))).fetchone()
            if row is not None:
                self._insert_utterances(conn, [(row[0], src, vec) for src, vec in zip(sources, embeddings)])
                return len(embeddings)
            row = conn.execute(f"SELECT id FROM {s}.speakers WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is not None:
                return self._add_to(conn, row[0], embeddings, sources, replace)
        raise StoreError(f"{self.location}: speaker {name!r} was enrolled and removed concurrently; retry")

    def _add_to(self, conn: Any, speaker: int, embeddings: np.ndarray, sources: list[str], replace: bool) -> int:
        s = self.schema
        if replace:
            conn.execute(f"DELETE FROM {s}.utterances WHERE speaker_id = %s", (speaker,))
        self._insert_utterances(conn, [(speaker, src, vec) for src, vec in zip(sources, embeddings)])
        blobs = [blob for (blob,) in conn.execute(f"SELECT embedding FROM {s}.utterances WHERE speaker_id = %s",
                                                  (speaker,), binary=True)]
        everything = self._matrix(blobs)
        conn.execute(f"UPDATE {s}.speakers SET centroid = %b, num_utterances = %s, updated = now() WHERE id = %s",
                     (centroids_of([everything])[0], len(blobs), speaker))
        return len(blobs)

    def _insert_utterances(self, conn: Any, rows: list[tuple[int, str, np.ndarray]]) -> None:
        with conn.cursor().copy(f"COPY {self.schema}.utterances (speaker_id, source, embedding) "
                                "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "bytea"])
            for speaker, source, vector in rows:
                copy.write_row((speaker, source, vector.astype(FLOAT).tobytes()))

    def _copy_new(self, conn: Any, new: list[Entry]) -> None:
        """New speakers in bulk: ids drawn from the table's sequence, then two binary COPYs."""
        s = self.schema
        sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (f"{s}.speakers",)).fetchone()[0]
        ids = [i for (i,) in conn.execute("SELECT nextval(%s) FROM generate_series(1, %s)", (sequence, len(new)))]
        centroids = centroids_of([embeddings for _, embeddings, _ in new])
        now = datetime.datetime.now(datetime.timezone.utc)
        with conn.cursor().copy(f"COPY {s}.speakers (id, name, centroid, num_utterances, updated) "
                                "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", self._vector_oid, "int4", "timestamptz"])
            for speaker, (name, embeddings, _), centroid in zip(ids, new, centroids):
                copy.write_row((speaker, name, centroid, len(embeddings), now))
        self._insert_utterances(conn, [(speaker, source, vector) for speaker, (_, embeddings, sources) in zip(ids, new)
                                       for source, vector in zip(sources, embeddings)])

    def _bump(self, conn: Any) -> None:
        """Every write changes the generation (in its transaction), so every replica's caches see it."""
        conn.execute(f"UPDATE {self.schema}.meta SET value = (value::bigint + 1)::text WHERE key = 'generation'")

    @_translated
    def _delete_speaker(self, name: object) -> bool:
        with self._pool.connection() as conn, conn.transaction():
            self._bump(conn)
            return conn.execute(f"DELETE FROM {self.schema}.speakers WHERE name = %s RETURNING id",
                                (name,)).fetchone() is not None

    @_translated
    def build_index(self, m: int = 16, ef_construction: int = 64, memory: str = "2GB") -> float:
        """Build the HNSW index over the centroids (cosine distance); returns the seconds it took.

        Writes wait while it builds; reads go on. ``memory`` is ``maintenance_work_mem`` for the build (the
        graph should fit: about 1 GB per million 192-d speakers). Building again replaces the index.
        """
        start = time.perf_counter()
        with self._pool.connection() as conn:
            conn.execute(f"SET maintenance_work_mem = '{_memory(memory)}'")
            conn.execute(f"DROP INDEX IF EXISTS {self.schema}.{INDEX_NAME}")
            conn.execute(f"CREATE INDEX {INDEX_NAME} ON {self.schema}.speakers USING hnsw (centroid vector_cosine_ops) "
                         f"WITH (m = {int(m)}, ef_construction = {int(ef_construction)})")
            conn.execute(f"ANALYZE {self.schema}.speakers")
            conn.execute("RESET maintenance_work_mem")
        self._plan = (-1.0, False)
        return time.perf_counter() - start

    # ---- reads --------------------------------------------------------------------------------
    def _rows(self, query: str, params: tuple = (), binary: bool = False) -> list[tuple]:
        with self._pool.connection() as conn:
            return conn.execute(query, params, binary=binary).fetchall()

    @_translated
    def speakers(self) -> list[SpeakerInfo]:
        return [SpeakerInfo(name, count, updated.astimezone(datetime.timezone.utc).isoformat(timespec="seconds"))
                for name, count, updated in self._rows(
                    f"SELECT name, num_utterances, updated FROM {self.schema}.speakers ORDER BY name")]

    @_translated
    def __len__(self) -> int:
        return self._rows(f"SELECT COUNT(*) FROM {self.schema}.speakers")[0][0]

    @_translated
    def _names(self) -> list[str]:
        return [name for (name,) in self._rows(f"SELECT name FROM {self.schema}.speakers")]

    @_translated
    def _read_centroid(self, name: object) -> np.ndarray | None:
        if not isinstance(name, str):
            return None
        rows = self._rows(f"SELECT centroid FROM {self.schema}.speakers WHERE name = %s", (name,), binary=True)
        return rows[0][0] if rows else None

    @_translated
    def _read_utterances(self, name: object) -> tuple[list[str], np.ndarray] | None:
        if not isinstance(name, str):
            return None
        s = self.schema
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(f"SELECT id FROM {s}.speakers WHERE name = %s", (name,)).fetchone()
            if row is None:
                return None
            rows = conn.execute(f"SELECT source, embedding FROM {s}.utterances WHERE speaker_id = %s ORDER BY id",
                                row, binary=True).fetchall()
        return [source for source, _ in rows], self._matrix([blob for _, blob in rows])

    @_translated
    def cohort(self) -> np.ndarray:
        return self._matrix([blob for (blob,) in self._rows(f"SELECT embedding FROM {self.schema}.cohort ORDER BY id",
                                                            binary=True)])

    @_translated
    def _read_cohort_sources(self) -> list[str]:
        return [source for (source,) in self._rows(f"SELECT source FROM {self.schema}.cohort ORDER BY id")]

    @_translated
    def _read_centroids(self) -> tuple[list[str], np.ndarray]:
        rows = self._rows(f"SELECT name, centroid FROM {self.schema}.speakers ORDER BY name", binary=True)
        matrix = np.stack([c for _, c in rows]) if rows else np.zeros((0, self.embedding_dim), FLOAT)
        return [name for name, _ in rows], matrix

    @_translated
    def all_utterances(self) -> Iterator[tuple[str, list[str], np.ndarray]]:
        s = self.schema
        rows = self._rows(f"SELECT s.name, u.source, u.embedding FROM {s}.utterances u JOIN {s}.speakers s "
                          "ON s.id = u.speaker_id ORDER BY s.name, u.id", binary=True)
        return grouped_utterances(rows, self._matrix)

    @_translated
    def _generation(self) -> object:
        return self._rows(f"SELECT value FROM {self.schema}.meta WHERE key = 'generation'")[0][0]

    @_translated
    def _candidates(self, query: np.ndarray, count: int) -> tuple[list[str], np.ndarray]:
        use_index = self._use_index()
        setting = ("" if count <= self.ef_search else f"SET LOCAL hnsw.ef_search = {int(count)}") if use_index \
            else "SET LOCAL enable_indexscan = off"  # exact: a scan, even where the index exists
        select = f"SELECT name, centroid FROM {self.schema}.speakers ORDER BY centroid <=> %b LIMIT %b"
        with self._pool.connection() as conn:
            if not setting:  # one round trip
                rows = conn.execute(select, (query, count), binary=True).fetchall()
            else:
                with conn.transaction():
                    conn.execute(setting)
                    rows = conn.execute(select, (query, count), binary=True).fetchall()
        matrix = np.stack([c for _, c in rows]) if rows else np.zeros((0, self.embedding_dim), FLOAT)
        return [name for name, _ in rows], matrix

    def _use_index(self) -> bool:
        """Whether the HNSW index exists and the store is not small; looked up at most every 10 s."""
        checked, use = self._plan
        if time.monotonic() - checked < 10:
            return use
        with self._plan_lock:
            index, rows = self._rows("SELECT to_regclass(%s) IS NOT NULL, (SELECT reltuples FROM pg_class WHERE oid = "
                                     "to_regclass(%s))", (f"{self.schema}.{INDEX_NAME}", f"{self.schema}.speakers"))[0]
            use = bool(index) and (rows or 0) >= self.exact_below
            self._plan = (time.monotonic(), use)
        return use

    @_translated
    def _check(self) -> dict:
        s = self.schema
        with self._pool.connection() as conn:
            meta = dict(conn.execute(f"SELECT key, value FROM {s}.meta").fetchall())
            speakers = conn.execute(f"SELECT COUNT(*) FROM {s}.speakers").fetchone()[0]
            index = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{s}.{INDEX_NAME}",)).fetchone()[0]
        return {"schema_version": meta.get("schema_version"), "model": meta.get("model_identity"),
                "speakers": speakers, "read_only": self.read_only,
                "search": f"hnsw (ef_search={self.ef_search}, exact below {self.exact_below} speakers)" if index
                else "exact scan (no index: speakertrip store index)"}

    def close(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.close()


def _positive(key: str, value: Any, zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if zero else 1):
        raise ConfigError(f"{key} must be an integer >= {0 if zero else 1}, got {value!r}")
    return value


def _memory(value: str) -> str:
    if not re.fullmatch(r"\d+\s*(kB|MB|GB)", value):
        raise ConfigError(f"memory must look like 512MB or 2GB, got {value!r}")
    return value
