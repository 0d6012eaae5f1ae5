"""The PostgreSQL + pgvector enrolment store: one database shared by every service replica.

Tables live in their own schema (``speakertrip`` unless the URL says ``?schema=NAME``): ``meta``
(schema version, model identity, dimension, the sketch projection, a generation counter bumped by
every write), ``speakers`` (name, centroid as a pgvector ``vector(D)``, its 256-bit sketch, and the
generation that last wrote it as ``revision``), ``removed`` (id and generation of each deleted
speaker), ``utterances`` and ``cohort`` (float32 bytes). Connections come from a pool (psycopg 3 + psycopg_pool, the ``postgres`` extra) that
checks each connection before handing it out, so the store reconnects by itself after a database
restart; a request that meets the restart gets :class:`~speakertrip.errors.StoreUnavailableError`
(the service answers 503), and PostgreSQL's commit guarantees that no acknowledged enrolment is lost.

Search (``search=``, every mode re-ranks its candidates by exact cosine, so scores are exact):

- ``sketch`` (the default): each process keeps the speakers' SimHash sketches in memory
  (:mod:`~speakertrip.verification.sketch_index`, 40 bytes a speaker: 40 MB a million), takes the
  ``candidates`` nearest in Hamming distance (default 256, at least 16 x top_k) and fetches their
  centroids by id; the fetch also reads the generation, and when another replica wrote since, the
  process first loads the rows written since (``revision`` > its generation, and ``removed``) and
  searches again, so a search sees every write committed before it began. The first search loads
  every id and sketch (40 bytes a speaker, never the centroids). Recall grows with ``candidates``
  and with how close a query is to its owner (the sketch module says how).
- ``hnsw``: pgvector's HNSW index over the centroids (cosine distance), built by
  :meth:`PostgresStore.build_index` (``speakertrip store index``); it is asked for ``top_k + 16``
  candidates (``ef_search``, at least that many). On random 192-d speakers it finds the exact best
  for only 42-86 % of queries at 200,000 (ef_search 40-200), so it is not the default.
- ``exact``: a scan of every centroid in the database.

Without the chosen index, or while the store is smaller than ``exact_below`` speakers, the candidates
come from the exact scan.

A store of schema version 1 (no sketches) is migrated in one transaction when a role that may
write opens it; a role that may only read is refused until then.

URL: ``postgresql://user:password@host:port/database?schema=speakertrip&search=sketch&candidates=256
&ef_search=100&exact_below=10000&pool_size=8``; those six are speakertrip's, the rest (and the ``PG*`` environment variables and
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
from speakertrip.verification.enrolment_store import (FLOAT, RERANK_MARGIN, EnrolmentStore, Entry, SpeakerInfo,
                                                       StoreNotFoundError, centroids_of, grouped_utterances)
from speakertrip.verification.sketch_index import (BYTES_PER_SPEAKER, CODE_BYTES, SKETCH_BITS, SketchIndex,
                                                    make_projection, projection_from_text, projection_to_text,
                                                    sketch_codes)

SCHEMA_VERSION = "2"  # 2: sketches, revisions and the removed table (1 is migrated on opening)
SCHEMES = ("postgresql://", "postgres://")
INDEX_NAME = "speakers_centroid_hnsw"
BULK = 64  # entries from which one enrolment goes through COPY
RECONNECT_S = 5.0  # the pool retries a lost server for this long, then afresh at the next request
OPTIONS = {"schema": str, "search": str, "candidates": int, "ef_search": int, "exact_below": int, "pool_size": int}
SEARCHES = ("sketch", "hnsw", "exact")
CANDIDATES = 256  # sketch candidates re-ranked exactly by default (at least 16 x top_k)
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
    """The libpq URL and speakertrip's options (``schema``, ``search``, ``candidates``, ``ef_search``,
    ``exact_below``, ``pool_size``)."""
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
    search : ``sketch`` (the default), ``hnsw`` or ``exact``: how candidates are found (module docstring)
    candidates : sketch candidates re-ranked exactly (recall against speed); at least 16 x top_k is used
    ef_search : HNSW candidate list size of a search (recall against speed); at least top_k + 16 is used
    exact_below : scan exactly (no index) while the store holds fewer speakers than this
    pool_size : connections at most in this process's pool
    schema : the PostgreSQL schema holding the store's tables
    """

    backend = "postgresql"

    def __init__(self, url: str, model_identity: str | None = None, embedding_dim: int | None = None,
                 create: bool = True, timeout: float = 10.0, ef_search: int | None = None,
                 exact_below: int | None = None, pool_size: int | None = None, schema: str | None = None,
                 search: str | None = None, candidates: int | None = None):
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
        self.search_mode = search if search is not None else options.get("search", "sketch")
        if self.search_mode not in SEARCHES:
            raise ConfigError(f"{self.location}: search={self.search_mode!r} is not a search; choose one of "
                              f"{', '.join(SEARCHES)}")
        self.candidates = _positive("candidates", candidates if candidates is not None
                                    else options.get("candidates", CANDIDATES))
        self.schema = schema if schema is not None else options.get("schema", "speakertrip")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.schema):
            raise ConfigError(f"{self.location}: schema {self.schema!r} must be a lower-case SQL name "
                              "(letters, digits, _)")
        self.timeout = timeout
        self._plan: tuple[float, bool, float] = (-1.0, False, 0.0)
        self._plan_lock = threading.Lock()
        self._vector_oid = 0
        self._projection = np.zeros((0, 0), FLOAT)
        self._sketches: Any = None  # the SketchIndex, made at the first sketch search
        self._sync_lock = threading.Lock()
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
        meta = dict(conn.execute(f"SELECT key, value FROM {s}.meta").fetchall())
        if meta.get("schema_version") == "1":
            meta = self._migrate(conn)
        self._adopt_meta(meta, SCHEMA_VERSION, model_identity, embedding_dim)
        self._projection = projection_from_text(meta.get("sketch_projection", ""), self.embedding_dim,
                                                f"{self.location}: {s}.meta")

    def _migrate(self, conn: Any) -> dict[str, str]:
        """Schema version 1 → 2 in one transaction: a sketch and revision on every speaker, the removed table.

        Writers wait on the generation row meanwhile; a role that may not alter the tables is refused with
        what to do. Returns the meta rows afterwards.
        """
        import psycopg

        s = self.schema
        refusal = StoreError(f"{self.location}: the enrolment store has schema version 1 and this speakertrip reads "
                             f"version 2; open it once as its owner (speakertrip store info URL) to migrate it in place "
                             f"(role {self.user} may not: {self._why_read_only if self.read_only else 'not the owner'})")
        if self.read_only:
            raise refusal
        self._configure(conn)
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"speakertrip store {s}",))
                self._bump(conn)  # the generation row lock: no writer runs while the tables change
                meta = dict(conn.execute(f"SELECT key, value FROM {s}.meta").fetchall())
                if meta.get("schema_version") != "1":
                    return meta  # another process migrated it while we waited
                projection = make_projection(int(meta["embedding_dim"]))
                conn.execute(f"""
                    ALTER TABLE {s}.speakers ADD COLUMN sketch bytea, ADD COLUMN revision bigint NOT NULL DEFAULT 0;
                    CREATE TABLE {s}.removed (speaker_id bigint NOT NULL, revision bigint NOT NULL);
                    CREATE INDEX removed_by_revision ON {s}.removed (revision);
                    CREATE TEMPORARY TABLE sketch_fill (id bigint, sketch bytea) ON COMMIT DROP""")
                rows = conn.execute(f"SELECT id, centroid FROM {s}.speakers", binary=True).fetchall()
                codes = sketch_codes(projection, np.stack([c for _, c in rows])) if rows else []
                with conn.cursor().copy("COPY sketch_fill FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["int8", "bytea"])
                    for (speaker, _), code in zip(rows, codes):
                        copy.write_row((speaker, code.tobytes()))
                conn.execute(f"""
                    UPDATE {s}.speakers s SET sketch = f.sketch FROM sketch_fill f WHERE s.id = f.id;
                    ALTER TABLE {s}.speakers ALTER COLUMN sketch SET NOT NULL;
                    CREATE INDEX speakers_by_revision ON {s}.speakers (revision)""")
                for grantee, privilege in conn.execute(  # whoever may read (or write) speakers may do so on removed
                        f"SELECT CASE a.grantee WHEN 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END, a.privilege_type "
                        f"FROM pg_class c, "
                        f"aclexplode(c.relacl) a WHERE c.oid = '{s}.speakers'::regclass AND a.grantee <> c.relowner "
                        "AND a.privilege_type IN ('SELECT', 'INSERT', 'DELETE')").fetchall():
                    conn.execute(f"GRANT {privilege} ON {s}.removed TO {grantee}")
                conn.execute(f"INSERT INTO {s}.meta VALUES ('sketch_projection', %s)", (projection_to_text(projection),))
                conn.execute(f"UPDATE {s}.meta SET value = %s WHERE key = 'schema_version'", (SCHEMA_VERSION,))
                return dict(conn.execute(f"SELECT key, value FROM {s}.meta").fetchall())
        except psycopg.errors.InsufficientPrivilege:
            raise refusal from None

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
                    updated timestamptz NOT NULL, sketch bytea NOT NULL, revision bigint NOT NULL);
                CREATE INDEX IF NOT EXISTS speakers_by_revision ON {s}.speakers (revision);
                CREATE TABLE IF NOT EXISTS {s}.removed (speaker_id bigint NOT NULL, revision bigint NOT NULL);
                CREATE INDEX IF NOT EXISTS removed_by_revision ON {s}.removed (revision);
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
                                    ("embedding_dim", str(embedding_dim)), ("generation", "0"),
                                    ("sketch_projection", projection_to_text(make_projection(embedding_dim)))])

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
            revision = self._bump(conn)
            if cohort is not None:
                conn.execute(f"DELETE FROM {s}.cohort")
                with conn.cursor().copy(f"COPY {s}.cohort (source, embedding) FROM STDIN (FORMAT BINARY)") as copy:
                    copy.set_types(["text", "bytea"])
                    for vector, source in zip(*cohort):
                        copy.write_row((source, vector.tobytes()))
            if len(entries) < BULK:
                return [self._add_one(conn, *entry, replace, revision) for entry in entries]
            known = dict(conn.execute(f"SELECT name, id FROM {s}.speakers WHERE name = ANY(%s)",
                                      ([name for name, _, _ in entries],)).fetchall())
            new = [entry for entry in entries if entry[0] not in known]
            counts = {name: self._add_to(conn, known[name], embeddings, sources, replace, revision)
                      for name, embeddings, sources in entries if name in known}
            if new:
                self._copy_new(conn, new, revision)
                counts.update((name, len(embeddings)) for name, embeddings, _ in new)
            return [counts[name] for name, _, _ in entries]

    def _add_one(self, conn: Any, name: str, embeddings: np.ndarray, sources: list[str], replace: bool,
                 revision: int) -> int:
        s = self.schema
        centroid = centroids_of([embeddings])[0]
        for _ in range(5):  # a concurrent remove may take the row between the two statements: try again
            row = conn.execute(f"INSERT INTO {s}.speakers (name, centroid, num_utterances, updated, sketch, revision) "
                               "VALUES (%s, %b, %s, now(), %b, %s) ON CONFLICT (name) DO NOTHING RETURNING id",
                               (name, centroid, len(embeddings), self._sketch(centroid), revision)).fetchone()
            if row is not None:
                self._insert_utterances(conn, [(row[0], src, vec) for src, vec in zip(sources, embeddings)])
                return len(embeddings)
            row = conn.execute(f"SELECT id FROM {s}.speakers WHERE name = %s FOR UPDATE", (name,)).fetchone()
            if row is not None:
                return self._add_to(conn, row[0], embeddings, sources, replace, revision)
        raise StoreError(f"{self.location}: speaker {name!r} was enrolled and removed concurrently; retry")

    def _add_to(self, conn: Any, speaker: int, embeddings: np.ndarray, sources: list[str], replace: bool,
                revision: int) -> int:
        s = self.schema
        if replace:
            conn.execute(f"DELETE FROM {s}.utterances WHERE speaker_id = %s", (speaker,))
        self._insert_utterances(conn, [(speaker, src, vec) for src, vec in zip(sources, embeddings)])
        blobs = [blob for (blob,) in conn.execute(f"SELECT embedding FROM {s}.utterances WHERE speaker_id = %s",
                                                  (speaker,), binary=True)]
        centroid = centroids_of([self._matrix(blobs)])[0]
        conn.execute(f"UPDATE {s}.speakers SET centroid = %b, num_utterances = %s, updated = now(), sketch = %b, "
                     "revision = %s WHERE id = %s", (centroid, len(blobs), self._sketch(centroid), revision, speaker))
        return len(blobs)

    def _insert_utterances(self, conn: Any, rows: list[tuple[int, str, np.ndarray]]) -> None:
        with conn.cursor().copy(f"COPY {self.schema}.utterances (speaker_id, source, embedding) "
                                "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", "bytea"])
            for speaker, source, vector in rows:
                copy.write_row((speaker, source, vector.astype(FLOAT).tobytes()))

    def _copy_new(self, conn: Any, new: list[Entry], revision: int) -> None:
        """New speakers in bulk: ids drawn from the table's sequence, then two binary COPYs."""
        s = self.schema
        sequence = conn.execute("SELECT pg_get_serial_sequence(%s, 'id')", (f"{s}.speakers",)).fetchone()[0]
        ids = [i for (i,) in conn.execute("SELECT nextval(%s) FROM generate_series(1, %s)", (sequence, len(new)))]
        centroids = centroids_of([embeddings for _, embeddings, _ in new])
        codes = sketch_codes(self._projection, centroids)
        now = datetime.datetime.now(datetime.timezone.utc)
        with conn.cursor().copy(f"COPY {s}.speakers (id, name, centroid, num_utterances, updated, sketch, revision) "
                                "FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "text", self._vector_oid, "int4", "timestamptz", "bytea", "int8"])
            for speaker, (name, embeddings, _), centroid, code in zip(ids, new, centroids, codes):
                copy.write_row((speaker, name, centroid, len(embeddings), now, code.tobytes(), revision))
        self._insert_utterances(conn, [(speaker, source, vector) for speaker, (_, embeddings, sources) in zip(ids, new)
                                       for source, vector in zip(sources, embeddings)])

    def _bump(self, conn: Any) -> int:
        """Every write changes the generation (in its transaction), so every replica's caches see it; the new
        generation is the revision of the rows it writes. Its row lock makes writers commit in generation order."""
        return int(conn.execute(f"UPDATE {self.schema}.meta SET value = (value::bigint + 1)::text "
                                "WHERE key = 'generation' RETURNING value").fetchone()[0])

    def _sketch(self, centroid: np.ndarray) -> bytes:
        return sketch_codes(self._projection, centroid[None])[0].tobytes()

    @_translated
    def _delete_speaker(self, name: object) -> bool:
        s = self.schema
        with self._pool.connection() as conn, conn.transaction():
            revision = self._bump(conn)
            row = conn.execute(f"DELETE FROM {s}.speakers WHERE name = %s RETURNING id", (name,)).fetchone()
            if row is not None:
                conn.execute(f"INSERT INTO {s}.removed VALUES (%s, %s)", (row[0], revision))
            return row is not None

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
        self._plan = (-1.0, False, 0.0)
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
        hnsw, rows = self._index_plan()
        if self.search_mode == "sketch" and rows >= self.exact_below:
            return self._sketch_candidates(query, max(count, self.candidates, 16 * (count - RERANK_MARGIN)))
        use_index = self.search_mode == "hnsw" and hnsw and rows >= self.exact_below
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

    def _index_plan(self) -> tuple[bool, float]:
        """Whether the HNSW index exists, and about how many speakers the store holds (the planner's count, or the
        live rows counted since, whichever is larger); looked up at most every 10 s."""
        checked, index, rows = self._plan
        if time.monotonic() - checked < 10:
            return index, rows
        with self._plan_lock:
            index, rows = self._rows("SELECT to_regclass(%s) IS NOT NULL, (SELECT GREATEST(reltuples, "
                                     "pg_stat_get_live_tuples(oid)) FROM pg_class WHERE oid = to_regclass(%s))",
                                     (f"{self.schema}.{INDEX_NAME}", f"{self.schema}.speakers"))[0]
            self._plan = (time.monotonic(), bool(index), float(rows or 0))
        return bool(index), float(rows or 0)

    def _sketch_candidates(self, query: np.ndarray, count: int) -> tuple[list[str], np.ndarray]:
        """The ``count`` nearest sketches' names and centroids, fetched by id with the store's generation in one
        round trip (one row: the names joined by line breaks, which names never hold, and the centroids' pgvector
        binary forms end to end); when another process wrote since this one's index was brought up to date, it is
        brought up to date and searched again (twice at most: the third answer is at least as new as the search's
        start)."""
        index = self._sketches if self._sketches is not None and self._sketches.generation >= 0 else self._sync()
        code = sketch_codes(self._projection, query[None])[0]
        s = self.schema
        for attempt in range(3):
            local = index.generation
            ids = index.search(code, count)
            generation, names, blob = self._rows(
                f"SELECT (SELECT value::bigint FROM {s}.meta WHERE key = 'generation'), string_agg(name, E'\\n' "
                "ORDER BY id), string_agg(vector_send(centroid), ''::bytea ORDER BY id) FROM "
                f"{s}.speakers WHERE id = ANY(%s::bigint[])", (ids.tolist(),), binary=True)[0]
            if generation <= local or attempt == 2:
                break
            index = self._sync()
        if not names:
            return [], np.zeros((0, self.embedding_dim), FLOAT)
        sent = np.dtype([("header", ">i4"), ("vector", ">f4", (self.embedding_dim,))])  # pgvector's vector_send
        return names.split("\n"), np.frombuffer(blob, sent)["vector"].astype(FLOAT)

    @_translated
    def load_sketches(self) -> float:
        """Bring this process's sketch index up to date now (the first search does otherwise); returns the seconds.

        The first load reads every speaker's id and sketch (40 bytes a speaker, the centroids stay in the
        database); later ones read only the speakers written and removed since.
        """
        start = time.perf_counter()
        self._sync()
        return time.perf_counter() - start

    def _sync(self) -> SketchIndex:
        """The sketch index brought to the store's current generation: rows with a later revision, and removals."""
        s = self.schema
        with self._sync_lock:
            if self._sketches is None:
                self._sketches = SketchIndex()
            index = self._sketches
            since = index.generation
            generation, id_blob, code_blob, removed_blob = self._rows(f"""
                WITH changed AS (SELECT id, sketch FROM {s}.speakers WHERE revision > %(since)s)
                SELECT (SELECT value::bigint FROM {s}.meta WHERE key = 'generation'),
                       (SELECT string_agg(int8send(id), ''::bytea ORDER BY id) FROM changed),
                       (SELECT string_agg(sketch, ''::bytea ORDER BY id) FROM changed),
                       (SELECT string_agg(int8send(speaker_id), ''::bytea) FROM {s}.removed
                        WHERE revision > %(since)s AND %(since)s >= 0)""", {"since": since}, binary=True)[0]
            ids = np.frombuffer(id_blob or b"", ">i8").astype(np.int64)
            codes = np.frombuffer(code_blob or b"", np.uint8)
            if len(codes) != len(ids) * CODE_BYTES:
                raise CorruptStoreError(f"{self.location}: {s}.speakers holds sketches of {len(codes)} bytes for "
                                        f"{len(ids)} speakers; expected {CODE_BYTES} bytes each")
            index.apply(generation, ids, codes.reshape(len(ids), CODE_BYTES),
                        np.frombuffer(removed_blob or b"", ">i8").astype(np.int64))
        return index

    @_translated
    def _check(self) -> dict:
        s = self.schema
        with self._pool.connection() as conn:
            meta = dict(conn.execute(f"SELECT key, value FROM {s}.meta").fetchall())
            speakers = conn.execute(f"SELECT COUNT(*) FROM {s}.speakers").fetchone()[0]
            index = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{s}.{INDEX_NAME}",)).fetchone()[0]
        return {"schema_version": meta.get("schema_version"), "model": meta.get("model_identity"),
                "speakers": speakers, "read_only": self.read_only, "search": self._describe_search(index)}

    def _describe_search(self, hnsw: bool) -> str:
        if self.search_mode == "sketch":
            loaded = f"; {len(self._sketches)} loaded here" if self._sketches is not None else ""
            return (f"sketch ({SKETCH_BITS}-bit SimHash, {self.candidates} candidates re-ranked exactly, exact below "
                    f"{self.exact_below} speakers; {BYTES_PER_SPEAKER} bytes a speaker in each process{loaded})")
        if self.search_mode == "hnsw" and hnsw:
            return f"hnsw (ef_search={self.ef_search}, exact below {self.exact_below} speakers)"
        if self.search_mode == "hnsw":
            return "exact scan (no index: speakertrip store index)"
        return "exact scan"

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
