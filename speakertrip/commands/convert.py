"""`speakertrip convert`: decode an audio tree (VoxCeleb2's m4a) into 16-bit mono wav with ffmpeg
(:func:`speakertrip.corpora.convert.convert_tree`; resumable, parallel)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert an m4a tree (VoxCeleb2) to 16 kHz wav with ffmpeg",
        description="Decode an audio tree (VoxCeleb2's m4a) into 16-bit mono wav with ffmpeg: in parallel, each "
                    "file renamed into place when complete, so a re-run resumes.")
    parser.add_argument("source", type=Path, help="folder to convert, e.g. VoxCeleb2/dev/aac")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: next to the inputs)")
    parser.add_argument("--ext", default="m4a", help="input extension (default m4a)")
    parser.add_argument("--sample-rate", type=int, default=16000, help="output sample rate (default 16000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 4, help="parallel ffmpeg processes")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.corpora.convert import convert_tree

    report = convert_tree(args.source, args.out or args.source, args.ext, args.sample_rate, args.workers)
    for path, error in report["failed"][:20]:
        print(f"failed: {path}: {error}")
    print(f"{'converted':<12}{'skipped':>10}{'failed':>10}\n"
          f"{len(report['converted']):<12}{len(report['skipped']):>10}{len(report['failed']):>10}")
    return 1 if report["failed"] else 0
