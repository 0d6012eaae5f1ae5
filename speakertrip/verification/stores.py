"""Stores by their store string: open one (a path → SQLite, ``postgresql://`` → PostgreSQL), copy one into another.

>>> import tempfile, numpy as np
>>> folder = tempfile.mkdtemp()
>>> with open_store(folder + "/a.db", model_identity="m1", embedding_dim=2) as store:
...     store.add("alice", np.array([[1.0, 0.0]]), ["a.wav"])
1
>>> copy_store(folder + "/a.db", folder + "/b.db")
{'speakers': 1, 'utterances': 1, 'cohort': 0}
>>> with open_store(folder + "/b.db") as store:
...     store.search(np.array([0.6, 0.8]), top_k=1)
[('alice', 0.6000000238418579)]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from speakertrip.errors import ConfigError
from speakertrip.verification.enrolment_store import EnrolmentStore
from speakertrip.verification.postgres_store import PostgresStore, is_postgres_url, mask_url
from speakertrip.verification.sqlite_store import SqliteStore


def open_store(location: str | Path | EnrolmentStore, model_identity: str | None = None,
               embedding_dim: int | None = None, create: bool = True, **settings: Any) -> EnrolmentStore:
    """The store at ``location``: an SQLite file path, or a ``postgresql://``/``postgres://`` URL.

    ``model_identity``/``embedding_dim`` are checked against the store (None: not checked);
    only ``create`` with both given makes a store that does not exist yet. ``settings`` go to
    the backend (``timeout`` for both; ``idle_checkpoint`` for SQLite; ``search``, ``candidates``,
    ``ef_search``, ``exact_below``, ``pool_size``, ``schema`` for PostgreSQL).
    """
    if isinstance(location, EnrolmentStore):
        location._check_model(model_identity, embedding_dim)
        return location
    if is_postgres_url(location):
        return PostgresStore(str(location), model_identity, embedding_dim, create=create, **settings)
    if isinstance(location, str) and "://" in location.split("/", 1)[0] + "/":
        raise ConfigError(f"{mask_url(location)}: unknown kind of store; give a file path (SQLite) or a "
                          "postgresql:// URL")
    unknown = set(settings) - {"timeout", "idle_checkpoint"}
    if unknown:
        raise ConfigError(f"{', '.join(sorted(unknown))}: only PostgreSQL stores take these settings")
    return SqliteStore(location, model_identity, embedding_dim, create=create, **settings)


def describe(location: str | Path) -> str:
    """How messages name a store: the path, or the URL with its password masked."""
    return mask_url(str(location))


def copy_store(source: str | Path, destination: str | Path) -> dict[str, int]:
    """Copy speakers, utterance embeddings, cohort and model identity from ``source`` into ``destination``.

    The destination may be new or empty, or hold the same model's speakers (those copied are
    added to: enrolling the same utterances twice doubles them, so copy into an empty store).
    Its writes are one transaction. Returns the numbers copied.
    """
    with open_store(source, create=False) as src:
        speakers = list(src.all_utterances())
        cohort, cohort_sources = src.cohort(), src.cohort_sources()
        identity, dim = src.model_identity, src.embedding_dim
    with open_store(destination, identity, dim) as dst:
        clash = [name for name, _, _ in speakers if name in dst] if len(dst) else []
        if clash:
            raise ConfigError(f"{dst.location} already holds {len(clash)} of the speakers to copy "
                              f"({', '.join(clash[:3])}{', ...' if len(clash) > 3 else ''}); copy into an "
                              "empty store")
        dst.add_many([(name, embeddings, sources) for name, sources, embeddings in speakers], cohort=(
            cohort, cohort_sources) if len(cohort) else None)
    return {"speakers": len(speakers), "utterances": sum(len(s) for _, s, _ in speakers), "cohort": len(cohort)}
