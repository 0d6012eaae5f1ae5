"""`speakertrip prepare <corpus>`: write manifests and trial lists for a corpus.

One subcommand per corpus module of `speakertrip.corpora`; each parses its options, calls that module's
``prepare_<corpus>`` function with typed arguments and prints. A corpus's help text is its module docstring.
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="prepare a corpus: manifests and trial lists")
    corpora = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    add_voxceleb(corpora, corpus_doc("voxceleb"))
    add_cnceleb(corpora, corpus_doc("cnceleb"))
    add_synth(corpora, corpus_doc("synth").split("\n>>>")[0])


def corpus_doc(corpus: str) -> str:
    """The docstring of ``speakertrip.corpora.<corpus>``, read from its source without importing it: every command
    builds this parser, and importing the corpus modules would load numpy, soundfile and tqdm into
    ``speakertrip metrics --help``."""
    from speakertrip import corpora

    source = (Path(corpora.__file__).parent / f"{corpus}.py").read_text(encoding="utf-8")
    return ast.get_docstring(ast.parse(source), clean=False) or ""


def add_voxceleb(corpora: argparse._SubParsersAction, description: str) -> None:
    parser = corpora.add_parser("voxceleb", help="VoxCeleb1/2 in their released layouts",
                                description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="corpus folder (VoxCeleb1, VoxCeleb2 dev, or both)")
    parser.add_argument("--out", required=True, type=Path, help="output folder for manifests and trial lists")
    parser.add_argument("--trials", nargs="+", type=Path, default=[], metavar="FILE",
                        help="trial lists in VoxCeleb format (official names under the root are found anyway)")
    parser.add_argument("--workers", type=int, default=8, help="threads reading headers (default 8)")
    parser.add_argument("--skip-bad", action="store_true", help="drop missing/unreadable files instead of failing")
    parser.add_argument("--deep", action="store_true", help="decode every file to reject silent or NaN audio "
                        "(float files are always read, for NaN/inf)")
    parser.add_argument("--test-speakers", type=int, default=0, metavar="N",
                        help="hold out the last N speakers (by id) as a test set with a trial list over them; "
                        "for corpora without a trial list, such as VoxCeleb2")
    parser.set_defaults(func=run_voxceleb)


def report(paths: dict) -> None:
    """Print the table of what was written, and how many files --skip-bad dropped."""
    from speakertrip.data.prepared import prepared_table

    print(prepared_table(paths))
    if "dropped" in paths:
        with open(paths["dropped"], encoding="utf-8") as handle:
            print(f"dropped {sum(1 for _ in handle)} bad files (--skip-bad), listed in {paths['dropped']}")


def run_voxceleb(args: argparse.Namespace) -> int:
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    report(prepare_voxceleb(args.root, args.out, args.trials, workers=args.workers, skip_bad=args.skip_bad,
                            deep=args.deep, test_speakers=args.test_speakers))
    return 0


def add_cnceleb(corpora: argparse._SubParsersAction, description: str) -> None:
    parser = corpora.add_parser("cnceleb", help="CN-Celeb1 (+ CN-Celeb2 as training data) in their released "
                                "layouts", description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True, type=Path, help="CN-Celeb1 folder (data/, dev/, eval/)")
    parser.add_argument("--cnceleb2", type=Path, help="CN-Celeb2 folder (data/<spk>/), added to the training data")
    parser.add_argument("--out", required=True, type=Path, help="output folder for manifests, trials and maps")
    parser.add_argument("--workers", type=int, default=8, help="threads reading headers (default 8)")
    parser.add_argument("--skip-bad", action="store_true",
                        help="drop missing/unreadable training files instead of failing")
    parser.add_argument("--deep", action="store_true", help="decode every file to reject silent or NaN audio")
    parser.set_defaults(func=run_cnceleb)


def run_cnceleb(args: argparse.Namespace) -> int:
    from speakertrip.corpora.cnceleb import prepare_cnceleb

    report(prepare_cnceleb(args.root, args.out, args.cnceleb2, workers=args.workers, skip_bad=args.skip_bad,
                           deep=args.deep))
    return 0


def add_synth(corpora: argparse._SubParsersAction, description: str) -> None:
    parser = corpora.add_parser("synth", help="generate and prepare the offline eSpeak speaker corpus",
                                description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder: corpus/ (audio) and data/ (manifests)")
    parser.add_argument("--speakers", type=int, default=50, help="speakers in all, held-out ones included (default 50)")
    parser.add_argument("--test-speakers", type=int, default=10, help="held-out test speakers (default 10)")
    parser.add_argument("--utterances", type=int, default=16, help="utterances per speaker (default 16)")
    parser.add_argument("--sessions", type=int, default=4, help="sessions (channels) per speaker (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same files")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    parser.set_defaults(func=run_synth)


def run_synth(args: argparse.Namespace) -> int:
    from speakertrip.corpora.synth import prepare_synth
    from speakertrip.tables import format_fields

    started = time.perf_counter()
    paths = prepare_synth(args.out, args.speakers, args.test_speakers, args.utterances, args.sessions,
                          args.seed, args.workers)
    summary = json.loads((paths["corpus"] / "synth.json").read_text())
    rows = {"corpus": paths["corpus"], "speakers": f"{args.speakers} ({args.test_speakers} held out)",
            "utterances": summary["utterances"], "hours": f"{summary['hours']:.2f}", "trials": summary["trials"],
            "seconds": f"{time.perf_counter() - started:.1f}"}
    print(format_fields(list(rows.items())))
    return 0
