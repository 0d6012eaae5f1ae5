"""What only a PostgreSQL store has: roles, passwords and PG* settings, the HNSW index, a database crash during
enrolment, and copies to and from SQLite. Against a real server (the session's ``postgres`` fixture)."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from speakertrip.cli import main
from speakertrip.errors import ConfigError, ReadOnlyStoreError, StoreError, StoreUnavailableError
from speakertrip.testing import speech_like, tiny_model_artifact
from speakertrip.verification import Verifier, copy_store, open_store
from speakertrip.verification.enrolment_store import ModelMismatchError
from speakertrip.verification.postgres_store import mask_url

REPO = Path(__file__).resolve().parents[1]


def unit(rows, dim, seed=0):
    vectors = np.random.default_rng(seed).standard_normal((rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_read_only_role_verifies_and_identifies_and_its_writes_are_refused(postgres, tmp_path, capsys):
    database = postgres.new_database()
    model = tiny_model_artifact(tmp_path / "model")
    voices = {name: [speech_like(speaker, 1.5, seed=seed) for seed in (1, 2)] for name, speaker in (("alice", 1),
                                                                                                      ("bob", 2))}
    writer = Verifier(model, store=postgres.url(database), threshold=0.0)
    for name, waves in voices.items():
        writer.enroll(name, waves, sample_rate=16000)
    url = postgres.url(database, user=postgres.reader_role(database))
    reader = Verifier(model, store=url, threshold=0.0)
    test = speech_like(1, 1.5, seed=3)
    assert reader.verify("alice", test, sample_rate=16000) == writer.verify("alice", test, sample_rate=16000)
    assert reader.identify(test, sample_rate=16000) == writer.identify(test, sample_rate=16000)
    assert reader.store.read_only and reader.speakers() == ["alice", "bob"]
    for call in (lambda: reader.enroll("carol", voices["bob"], sample_rate=16000), lambda: reader.remove("bob"),
                 lambda: reader.enroll_cohort(voices["bob"], sample_rate=16000)):
        with pytest.raises(ReadOnlyStoreError, match="read-only .*role reader_.* has no INSERT, UPDATE and DELETE"):
            call()
    wav = tmp_path / "carol.wav"
    import soundfile as sf

    sf.write(wav, voices["bob"][0], 16000)
    assert main(["enroll", "--model", str(model), "--store", url, "carol", str(wav)]) == 2
    err = capsys.readouterr().err
    assert "the enrolment store is read-only" in err and "Traceback" not in err
    assert writer.speakers() == ["alice", "bob"]


def test_passwords_are_masked_and_pg_settings_come_from_the_environment(postgres, tmp_path, monkeypatch):
    database = postgres.new_database()
    postgres.password_role("voices_app", "s3cret-pw", database)
    url = postgres.url(database, user="voices_app", password="s3cret-pw")
    with open_store(url, "m", 4) as store:
        store.add("alice", np.eye(4, dtype=np.float32)[:1], ["a.wav"])
        assert "s3cret-pw" not in store.location and "voices_app:***@" in store.location
        assert "s3cret-pw" not in str(store.check())
    wrong = postgres.url(database, user="voices_app", password="not-the-pw")
    with pytest.raises(StoreError) as error:
        open_store(wrong)
    assert "not-the-pw" not in str(error.value) and "password authentication failed" in str(error.value)
    assert mask_url(f"{url}&password=s3cret-pw") == url.replace("s3cret-pw", "***") + "&password=***"
    # the password from a password file, the rest from PG* variables: a URL that names nothing
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"*:*:{database}:voices_app:s3cret-pw\n")
    passfile.chmod(0o600)
    for key, value in (("PGPASSFILE", passfile), ("PGHOST", postgres.socket_dir), ("PGDATABASE", database),
                       ("PGUSER", "voices_app")):
        monkeypatch.setenv(key, str(value))
    with open_store("postgresql://") as store:
        assert [s.name for s in store.speakers()] == ["alice"] and store.location == "postgresql://"


def test_hnsw_index_finds_the_exact_best_and_scores_are_exact(postgres):
    dim, url = 32, postgres.url(postgres.new_database())
    centroids = unit(3000, dim, 1)
    owners = np.random.default_rng(2).integers(0, 3000, 40)
    queries = unit(40, dim, 3) + centroids[owners]
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with open_store(url, "m", dim, search="hnsw") as store:
        store.add_many([(f"s{i:04d}", vector[None], ["x"]) for i, vector in enumerate(centroids)])
        assert store.check()["search"].startswith("exact scan")
        exact_results = [store.search(query, top_k=3) for query in queries]
        assert store.build_index() > 0
    with open_store(url + "&search=hnsw", "m", dim, exact_below=1000, ef_search=60) as store:
        assert store.check()["search"] == "hnsw (ef_search=60, exact below 1000 speakers)"
        stored = np.stack([store.centroid(f"s{i:04d}") for i in range(3000)]).astype(np.float64)
        hits = 0
        for query, exact in zip(queries, exact_results):
            found = store.search(query, top_k=3)
            scores = stored @ query.astype(np.float64)
            hits += found[0] == (f"s{int(np.argmax(scores)):04d}", float(scores.max())) == exact[0]
            assert [score for _, score in found] == [float(scores[int(name[1:])]) for name, _ in found]  # exact
            assert [score for _, score in found] == sorted((score for _, score in found), reverse=True)
        assert hits >= 36  # approximate: recall@1 >= 0.9 on random 32-d vectors, the hard case for a graph
        store.add("late", queries[0][None], ["late.wav"])  # the index takes new speakers as they come
        assert store.search(queries[0], top_k=1)[0][0] == "late"
    with open_store(url, "m", dim, exact_below=10_000, search="hnsw") as store:  # small: the exact scan
        assert store.check()["search"].startswith("hnsw") and store.search(queries[1], 3) == exact_results[1]


ENROL_FOREVER = """
    import sys, numpy as np
    from speakertrip.errors import StoreError
    from speakertrip.verification.stores import open_store
    store = open_store(sys.argv[1], model_identity="m", embedding_dim=8, timeout=3)
    rng = np.random.default_rng(0)
    for i in range(100000):
        count = 1 + i % 5
        try:
            store.add(f"s{i:05d}", rng.normal(size=(count, 8)), [f"u{i}_{j}.wav" for j in range(count)])
        except StoreError as error:
            print("unavailable", error, flush=True)
            break
        print(i, flush=True)
"""


@pytest.mark.slow  # a crash recovery and a second process
def test_database_crash_during_enrolment_loses_no_acknowledged_enrolment(postgres):
    url = postgres.url(postgres.new_database())
    survivor = open_store(url, "m", 8, timeout=3)  # open across the crash: its pool must reconnect by itself
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-c", textwrap.dedent(ENROL_FOREVER), url], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    acknowledged = [process.stdout.readline() for _ in range(30)]
    postgres.crash()
    try:
        with pytest.raises(StoreUnavailableError, match="PostgreSQL is unavailable"):
            survivor.speakers()
    finally:
        postgres.start()
    rest, err = process.communicate(timeout=120)
    lines = acknowledged + rest.splitlines(keepends=True)
    assert lines[-1].startswith("unavailable") and "Traceback" not in err, err
    done = [int(line) for line in lines if line.strip().isdigit()]
    names = [s.name for s in survivor.speakers()]  # the same store object, after the restart
    assert names[:len(done)] == [f"s{i:05d}" for i in done]
    assert len(names) in (len(done), len(done) + 1)  # the one in flight: committed or not, never half
    for name, sources, embeddings in survivor.all_utterances():
        assert len(sources) == 1 + int(name[1:]) % 5
        mean = embeddings.astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(survivor.centroid(name), mean / np.linalg.norm(mean), atol=1e-7)
    survivor.add("after", np.ones((1, 8)), ["x.wav"])
    survivor.close()
    process.send_signal(signal.SIGTERM) if process.poll() is None else None


def test_copy_between_sqlite_and_postgresql_keeps_everything(postgres, tmp_path):
    url = postgres.url(postgres.new_database())
    rng = np.random.default_rng(0)
    with open_store(tmp_path / "a.db", "model-x", 8) as store:
        store.add_many([(f"spk{i}", rng.normal(size=(1 + i % 3, 8)), [f"{i}/{j}.wav" for j in range(1 + i % 3)])
                        for i in range(12)])
        store.add("Zo\u00eb", rng.normal(size=(2, 8)), ["z1.wav", "z2.wav"])
        store.set_cohort(rng.normal(size=(5, 8)), [f"c{i}.wav" for i in range(5)])
    assert copy_store(tmp_path / "a.db", url) == {"speakers": 13, "utterances": 26, "cohort": 5}
    assert copy_store(url, tmp_path / "b.db")["speakers"] == 13

    def contents(location):
        with open_store(location) as store:
            return (store.model_identity, store.embedding_dim, [(s.name, s.num_utterances) for s in store.speakers()],
                    [(n, s, e.tolist()) for n, s, e in store.all_utterances()], store.cohort().tolist(),
                    store.cohort_sources(), [store.centroid(s.name).tolist() for s in store.speakers()],
                    store.search(np.ones(8) / np.sqrt(8), 5))

    assert contents(tmp_path / "a.db") == contents(url) == contents(tmp_path / "b.db")
    with open_store(tmp_path / "other.db", "model-y", 8) as other:
        other.add("someone", np.ones((1, 8)), ["s.wav"])
    with pytest.raises(ModelMismatchError, match="enrolled with model model-y"):
        copy_store(tmp_path / "a.db", tmp_path / "other.db")
    with pytest.raises(ConfigError, match="already holds 13 of the speakers"):
        copy_store(tmp_path / "a.db", url)
