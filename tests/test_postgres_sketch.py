"""The PostgreSQL store's default search, the replica-local sketch index: its answers against brute-force numpy,
two store objects (two replicas) seeing each other's writes at once, and the migration of a version-1 store.
Against a real server (the session's ``postgres`` fixture)."""

import numpy as np
import psycopg
import pytest

from speakertrip.cli import main
from speakertrip.errors import ConfigError, StoreError
from speakertrip.verification import open_store
from speakertrip.verification.sketch_index import CODE_BYTES, SketchIndex, make_projection, sketch_codes

DIM = 48


def unit(rows, seed):
    vectors = np.random.default_rng(seed).standard_normal((rows, DIM)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def near(centroids, owners, seed):
    """Queries at cosine about 0.7 with their owners (the benchmark's kind)."""
    queries = centroids[owners] + unit(len(owners), seed)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def brute_force(names, centroids, query, top_k):
    scores = centroids.astype(np.float64) @ query.astype(np.float64)
    order = np.lexsort((np.arange(len(scores)), -scores))[:top_k]
    return [(names[i], float(scores[i])) for i in order]


def test_sketch_index_search_is_the_hamming_top_c_and_follows_removals():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 256, (500, CODE_BYTES), dtype=np.uint8)
    index = SketchIndex()
    index.apply(3, np.arange(500) * 7, codes, removed=np.zeros(0, np.int64))
    index.apply(4, np.array([7]), codes[:1], removed=np.array([14, 21]))  # 7 changed, 14 and 21 gone
    kept = np.array([i for i in range(500) if i not in (2, 3)])
    stored = codes[kept].copy()
    stored[kept == 1] = codes[0]
    hamming = np.unpackbits(stored ^ codes[5], axis=1).sum(axis=1)
    found = index.search(codes[5], 40)
    assert len(index) == 498 and index.generation == 4 and len(found) == 40 and found[0] == 35
    by_id = dict(zip(kept * 7, hamming))
    assert sorted(by_id[i] for i in found) == sorted(hamming)[:40]  # the 40 nearest (ties in any order)
    index.apply(4, np.array([0]), codes[:1], removed=np.array([0]))  # an older generation: nothing happens
    assert len(index) == 498 and len(index.search(codes[5], 1000)) == 498


def test_sketches_estimate_the_angle():
    projection = make_projection(DIM, seed=1)
    a, b = unit(2000, 2), unit(2000, 3)
    bits = np.unpackbits(sketch_codes(projection, a) ^ sketch_codes(projection, b), axis=1).mean(axis=1)
    angle = np.arccos(np.clip(np.sum(a * b, axis=1), -1, 1)) / np.pi
    assert abs(bits.mean() - angle.mean()) < 0.01 and np.corrcoef(bits, angle)[0, 1] > 0.5


def test_sketch_search_matches_brute_force_with_exact_scores(postgres):
    url = postgres.url(postgres.new_database())
    centroids, names = unit(3000, 1), [f"s{i:04d}" for i in range(3000)]
    owners = np.random.default_rng(2).integers(0, 3000, 60)
    queries = near(centroids, owners, 3)
    with open_store(url, "m", DIM, exact_below=0) as store:  # the index even at 3,000 speakers
        store.add_many([(name, vector[None], ["x"]) for name, vector in zip(names, centroids)])
        stored = np.stack([store.centroid(name) for name in names])
        assert store.check()["search"].startswith("sketch (256-bit SimHash, 256 candidates")
        hits = 0
        for query in queries:
            found, exact = store.search(query, top_k=5), brute_force(names, stored, query, 5)
            assert found[0][0] == exact[0][0]  # the best: its owner, found by its sketch
            scores = stored.astype(np.float64) @ query.astype(np.float64)
            assert [score for _, score in found] == pytest.approx([scores[int(n[1:])] for n, _ in found], abs=1e-12)
            hits += [n for n, _ in found] == [n for n, _ in exact]
        assert hits >= 50  # the runners-up (cosine ~0.35 at 48-d) are mostly among the 256 too
        assert "3000 loaded here" in store.check()["search"]
    with open_store(url, "m", DIM, exact_below=0, candidates=3000) as store:  # every speaker a candidate
        for query in queries[:10]:
            found, exact = store.search(query, top_k=5), brute_force(names, stored, query, 5)
            assert [n for n, _ in found] == [n for n, _ in exact]
            assert [s for _, s in found] == pytest.approx([s for _, s in exact], abs=1e-12)
    with open_store(url, "m", DIM, search="exact") as store:
        assert store.check()["search"] == "exact scan"
        assert store.search(queries[0], 5) == brute_force(names, stored, queries[0], 5)


def test_two_replicas_see_each_others_writes_at_once(postgres):
    url = postgres.url(postgres.new_database())
    centroids = unit(400, 4)
    a = open_store(url, "m", DIM, exact_below=0)
    b = open_store(url, "m", DIM, exact_below=0)
    try:
        a.add_many([(f"s{i:03d}", vector[None], ["x"]) for i, vector in enumerate(centroids)])
        assert b.search(centroids[7], 1)[0][0] == "s007" and a.search(centroids[8], 1)[0][0] == "s008"
        newcomer = unit(1, 5)
        a.add("newcomer", newcomer, ["n.wav"])  # enrolled on A: identify on B finds it at once
        assert b.search(newcomer[0], 1) == [("newcomer", pytest.approx(1.0, abs=1e-6))]
        b.remove("newcomer")  # removed on B: gone on A at once
        assert a.search(newcomer[0], 1)[0][0] != "newcomer" and "newcomer" not in a
        a.add("s007", centroids[9:10], ["moved.wav"], replace=True)  # a changed centroid: its sketch follows
        assert [name for name, _ in b.search(centroids[9], 2)] in (["s007", "s009"], ["s009", "s007"])
        assert b.search(centroids[7], 1)[0][0] != "s007"
        b.add_many([(f"bulk{i:03d}", vector[None], ["y"]) for i, vector in enumerate(unit(80, 6))])  # COPY path
        assert a.search(unit(80, 6)[33], 1)[0][0] == "bulk033"
        assert a.load_sketches() >= 0 and "480 loaded here" in a.check()["search"]
    finally:
        a.close()
        b.close()


def downgrade_to_version_1(url):
    """Turn a version-2 store into what speakertrip with schema version 1 wrote: no sketches, revisions or removed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("""
            ALTER TABLE speakertrip.speakers DROP COLUMN sketch, DROP COLUMN revision;
            DROP TABLE speakertrip.removed;
            DELETE FROM speakertrip.meta WHERE key = 'sketch_projection';
            UPDATE speakertrip.meta SET value = '1' WHERE key = 'schema_version'""")


def test_a_version_1_store_is_migrated_by_a_writer_and_refused_to_a_reader(postgres, capsys):
    database = postgres.new_database()
    url = postgres.url(database)
    centroids, names = unit(300, 7), [f"s{i:03d}" for i in range(300)]
    with open_store(url, "m", DIM) as store:
        store.add_many([(name, vector[None], ["x"]) for name, vector in zip(names, centroids)])
        store.remove("s000")
    downgrade_to_version_1(url)
    reader = postgres.url(database, user=postgres.reader_role(database))
    with pytest.raises(StoreError, match="schema version 1 and this speakertrip reads version 2; open it once as "
                                         "its owner .* to migrate it in place .*role reader_"):
        open_store(reader)
    assert main(["store", "info", url]) == 0  # the owner opens it: migrated
    out = capsys.readouterr().out
    assert "schema version  2" in out and "search          sketch (256-bit SimHash, 256 candidates" in out
    assert main(["store", "info", url + "&search=hnsw"]) == 0
    assert "search          exact scan (no index: speakertrip store index)" in capsys.readouterr().out
    with open_store(url, exact_below=0) as store:
        assert store.check()["schema_version"] == "2"
        query = near(centroids, np.array([42]), 8)[0]
        assert store.search(query, 3) == brute_force(names[1:], centroids[1:], query, 3)
        store.add("late", centroids[:1], ["late.wav"])
        assert store.search(centroids[0], 1)[0][0] == "late"
    with open_store(reader, exact_below=0) as store:
        assert store.search(centroids[0], 1)[0][0] == "late" and store.read_only


def test_search_options_are_checked(postgres_url):
    with pytest.raises(ConfigError, match="search='ann' is not a search; choose one of sketch, hnsw, exact"):
        open_store(postgres_url + "&search=ann", "m", DIM)
    with pytest.raises(ConfigError, match="candidates must be an integer >= 1, got 0"):
        open_store(postgres_url, "m", DIM, candidates=0)
