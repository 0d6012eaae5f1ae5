import multiprocessing
import sqlite3

import numpy as np
import pytest

from speakertrip.errors import ConfigError, FormatError, KeyNotFoundError
from speakertrip.verification.enrolment_store import EnrolmentStore, ModelMismatchError

DIM = 8


def unit(rows, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def open_store(path, identity="model-a"):
    return EnrolmentStore(path, model_identity=identity, embedding_dim=DIM)


def snapshot(path):
    with sqlite3.connect(path) as db:
        return [db.execute(f"SELECT * FROM {table} ORDER BY id").fetchall()
                for table in ("speakers", "utterances", "cohort")]


def test_add_keeps_utterances_and_normalised_mean(tmp_path):
    first, second = unit(2, 1), unit(3, 2)
    with open_store(tmp_path / "s.db") as store:
        assert store.add("alice", first, ["a1", "a2"]) == 2
        assert store.add("alice", second, ["a3", "a4", "a5"]) == 5
        sources, stored = store.utterance_embeddings("alice")
        assert sources == ["a1", "a2", "a3", "a4", "a5"]
        np.testing.assert_array_equal(stored, np.concatenate([first, second]))
        mean = np.concatenate([first, second]).mean(axis=0)
        np.testing.assert_allclose(store.centroid("alice"), mean / np.linalg.norm(mean), atol=1e-6)
        assert store.add("alice", second[:1], ["only"], replace=True) == 1
        np.testing.assert_allclose(store.centroid("alice"), second[0], atol=1e-6)
        assert [(s.name, s.num_utterances) for s in store.speakers()] == [("alice", 1)]


def test_persists_across_connections_and_remove(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        store.add("bob", unit(1), ["b"])
        store.add("alice", unit(1, 3), ["a"])
    with EnrolmentStore(tmp_path / "s.db", create=False) as store:  # no model needed to list
        assert [s.name for s in store.speakers()] == ["alice", "bob"]
        assert store.model_identity == "model-a" and store.embedding_dim == DIM
    with open_store(tmp_path / "s.db") as store:
        store.remove("bob")
        assert "bob" not in store and len(store) == 1
        assert store.utterance_embeddings("alice")[0] == ["a"]
        with pytest.raises(KeyNotFoundError, match=r"'bob' is not enrolled .*\(1 speaker enrolled\)"):
            store.remove("bob")


def test_search_matches_brute_force(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        for index, vector in enumerate(unit(30, 4)):
            store.add(f"spk{index:02d}", vector[None], [f"u{index}"])
        query = unit(1, 5)[0]
        names, matrix = store.centroids()
        expected = sorted(((float(matrix[i] @ query), names[i]) for i in range(30)), reverse=True)[:7]
        found = store.search(query, top_k=7)
        assert [name for name, _ in found] == [name for _, name in expected]
        np.testing.assert_allclose([s for _, s in found], [s for s, _ in expected], atol=1e-6)
        assert len(store.search(query, top_k=100)) == 30


def test_centroid_cache_sees_writes_of_other_connections(tmp_path):
    reader, writer = open_store(tmp_path / "s.db"), open_store(tmp_path / "s.db")
    writer.add("alice", unit(1), ["a"])
    assert reader.centroids()[0] == ["alice"]
    writer.add("bob", unit(1, 1), ["b"])
    assert reader.centroids()[0] == ["alice", "bob"]
    reader.add("carol", unit(1, 2), ["c"])
    assert reader.centroids()[0] == ["alice", "bob", "carol"]
    reader.close(), writer.close()


def test_cohort_round_trip(tmp_path):
    with open_store(tmp_path / "s.db") as store:
        assert store.cohort().shape == (0, DIM)
        store.set_cohort(unit(4), list("abcd"))
        store.set_cohort(unit(3, 1), list("xyz"))
        np.testing.assert_array_equal(store.cohort(), unit(3, 1))


def test_other_model_is_refused(tmp_path):
    open_store(tmp_path / "s.db").close()
    with pytest.raises(ModelMismatchError, match="enrolled with model model-a.*this model is model-b"):
        open_store(tmp_path / "s.db", identity="model-b")
    with pytest.raises(ModelMismatchError, match="8-d"):
        EnrolmentStore(tmp_path / "s.db", model_identity="model-a", embedding_dim=4)


@pytest.mark.parametrize("content", [b"this is not sqlite at all" * 50, b"SQLite format 3\x00" + b"\xff" * 200])
def test_corrupt_file_names_the_path(tmp_path, content):
    path = tmp_path / "bad.db"
    path.write_bytes(content)
    with pytest.raises(FormatError, match=r"bad\.db.*not a readable enrolment store"):
        open_store(path)
    assert path.read_bytes() == content


def test_foreign_sqlite_and_missing_store(tmp_path):
    with sqlite3.connect(tmp_path / "other.db") as db:
        db.execute("CREATE TABLE t (x)")
    with pytest.raises(FormatError, match=r"other\.db.*not a speakertrip enrolment store \(tables: t\)"):
        open_store(tmp_path / "other.db")
    with pytest.raises(KeyNotFoundError, match="no enrolment store here"):
        EnrolmentStore(tmp_path / "missing.db", create=False)
    assert not (tmp_path / "missing.db").exists()


@pytest.mark.parametrize("call, error", [
    (lambda s: s.add("", unit(1), ["x"]), "non-empty string"),
    (lambda s: s.add(" alice", unit(1), ["x"]), "surrounding whitespace"),
    (lambda s: s.add("carol", np.zeros((0, DIM), np.float32), []), "at least one utterance"),
    (lambda s: s.add("carol", unit(1)[:, :4], ["x"]), r"shape \(N, 8\)"),
    (lambda s: s.add("carol", np.full((1, DIM), np.nan, np.float32), ["x"]), "NaN"),
    (lambda s: s.add("alice", unit(2), ["x"], replace=True), "1 sources for 2"),
    (lambda s: s.search(unit(1)[0], top_k=0), "top_k"),
])
def test_failed_calls_leave_the_store_unchanged(tmp_path, call, error):
    with open_store(tmp_path / "s.db") as store:
        store.add("alice", unit(2), ["a1", "a2"])
        before = snapshot(tmp_path / "s.db")
        with pytest.raises(ConfigError, match=error):
            call(store)
        assert snapshot(tmp_path / "s.db") == before


def test_error_inside_a_transaction_rolls_back(tmp_path, monkeypatch):
    with open_store(tmp_path / "s.db") as store:
        store.add("alice", unit(2), ["a1", "a2"])
        before = snapshot(tmp_path / "s.db")
        monkeypatch.setattr("speakertrip.verification.enrolment_store._centroid", lambda e: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            store.add("alice", unit(1), ["a3"], replace=True)
        with pytest.raises(ZeroDivisionError):
            store.add("bob", unit(1), ["b"])
        assert snapshot(tmp_path / "s.db") == before


def _enrol_many(path, worker, rounds):
    with open_store(path) as store:
        for step in range(rounds):
            store.add(f"w{worker}-{step}", unit(1, step)[None, 0], [f"{worker}/{step}"])
            store.add("shared", unit(1, 100 + step), [f"{worker}/shared/{step}"])


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path):
    path, rounds = tmp_path / "s.db", 25
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_enrol_many, args=(path, worker, rounds)) for worker in range(2)]
    for process in workers:
        process.start()
    for process in workers:
        process.join(60)
        assert process.exitcode == 0
    with open_store(path) as store:
        assert len(store) == 2 * rounds + 1
        sources, embeddings = store.utterance_embeddings("shared")
        assert sorted(sources) == sorted(f"{w}/shared/{s}" for w in range(2) for s in range(rounds))
        mean = embeddings.mean(axis=0)
        np.testing.assert_allclose(store.centroid("shared"), mean / np.linalg.norm(mean), atol=1e-6)
        assert [s.num_utterances for s in store.speakers() if s.name == "shared"] == [2 * rounds]


def _create_and_enrol(path, name, barrier):
    barrier.wait()  # every process finds the store missing and creates it at the same moment
    EnrolmentStore(path, "m1", 4).add(name, np.eye(4, dtype=np.float32)[:2], ["a.wav", "b.wav"])


def test_processes_creating_one_new_store_at_once_all_enrol(tmp_path):
    context = multiprocessing.get_context("fork")
    for trial in range(3):
        path, barrier = tmp_path / f"s{trial}.db", context.Barrier(6)
        jobs = [context.Process(target=_create_and_enrol, args=(path, f"speaker{i}", barrier)) for i in range(6)]
        for job in jobs:
            job.start()
        for job in jobs:
            job.join(60)
        assert [job.exitcode for job in jobs] == [0] * 6
        assert len(EnrolmentStore(path)) == 6
