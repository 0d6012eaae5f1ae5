"""`speakertrip demo`: the offline end-to-end run (corpus, training, scoring, verification) on CPU."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run the whole pipeline offline on a synthetic eSpeak corpus",
                                   description="Generate a synthetic speaker corpus, train a small ECAPA with "
                                               "the multi-positive triplet loss on CPU, and score held-out "
                                               "speakers against two baselines; then enrol and verify.")
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder (default demo_out)")
    parser.add_argument("--quick", action="store_true", help="a one-minute version (smaller corpus, fewer steps)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the corpus and the training run")
    parser.add_argument("--workers", type=int, default=None, help="corpus synthesis processes (default: all cores)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.demo import run_demo

    run_demo(args.out, quick=args.quick, seed=args.seed, workers=args.workers)
    return 0
