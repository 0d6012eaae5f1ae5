"""`speakertrip store info | copy | index`: operations on an enrolment store (an SQLite file or a postgresql:// URL).

``info`` reads the store now and says what it holds; ``copy SRC DST`` copies speakers, utterance
embeddings, cohort and model identity between any two stores in one transaction (SQLite ↔
PostgreSQL); ``index`` builds a PostgreSQL store's HNSW index, which identify uses when the store URL
says ``?search=hnsw`` (the default search, ``sketch``, needs no build: each process loads the speakers'
sketches at its first search). ``info`` names the search the URL chooses and what it costs.
"""

from __future__ import annotations

import argparse

STORE_HELP = "an SQLite file, or a postgresql://user@host/db URL (password from the URL, PGPASSWORD or ~/.pgpass)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("store", help="enrolment store operations: info, copy (SQLite <-> PostgreSQL), "
                                                 "index")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = actions.add_parser("info", help="what a store holds: backend, model, speakers, cohort, search")
    info.add_argument("store", metavar="STORE", help=STORE_HELP)
    info.set_defaults(func=run_info)
    copy = actions.add_parser("copy", help="copy every speaker, the cohort and the model identity into another store")
    copy.add_argument("source", metavar="SRC", help=STORE_HELP)
    copy.add_argument("destination", metavar="DST", help="a new or empty store (same kinds as SRC)")
    copy.set_defaults(func=run_copy)
    index = actions.add_parser("index", help="build a PostgreSQL store's HNSW index over the centroids (used with "
                                             "?search=hnsw in the store URL)")
    index.add_argument("store", metavar="STORE", help="a postgresql:// URL")
    index.add_argument("--m", type=int, default=16, help="HNSW links per node (16)")
    index.add_argument("--ef-construction", type=int, default=64, help="HNSW build candidate list (64)")
    index.add_argument("--memory", default="2GB", help="maintenance_work_mem for the build; the graph should fit "
                                                      "(about 1GB per million 192-d speakers; default 2GB)")
    index.set_defaults(func=run_index)


def run_info(args: argparse.Namespace) -> int:
    from speakertrip.verification.stores import open_store

    with open_store(args.store, create=False) as store:
        health = store.check()
        rows = [("store", health.pop("store")), ("backend", health.pop("backend")),
                ("model", health.pop("model")), ("embedding dim", store.embedding_dim),
                ("speakers", health.pop("speakers")), ("cohort", len(store.cohort()))]
        rows += list(health.items())
    width = max(len(key) for key, _ in rows)
    for key, value in rows:
        print(f"{key.replace('_', ' '):<{width}}  {value}")
    return 0


def run_copy(args: argparse.Namespace) -> int:
    from speakertrip.verification.stores import copy_store, describe

    copied = copy_store(args.source, args.destination)
    print(f"copied {copied['speakers']} speaker(s), {copied['utterances']} utterance embedding(s) and a cohort of "
          f"{copied['cohort']} from {describe(args.source)} to {describe(args.destination)}")
    return 0


def run_index(args: argparse.Namespace) -> int:
    from speakertrip.verification.stores import open_store

    with open_store(args.store, create=False) as store:
        seconds = store.build_index(m=args.m, ef_construction=args.ef_construction, memory=args.memory)
        print(f"{store.location}: HNSW index over {len(store)} centroids built in {seconds:.1f} s "
              f"(m={args.m}, ef_construction={args.ef_construction})")
    return 0
