"""`speakertrip prepare <corpus>`: write manifests and trial lists for a corpus.

Each corpus module in `speakertrip.corpora` listed in CORPORA defines
``add_prepare_parser(subparsers)``, which adds ``prepare <corpus>`` and sets ``func``.
"""

from __future__ import annotations

import argparse
import importlib

CORPORA: tuple[str, ...] = (
    "voxceleb",
    "cnceleb",
    "synth",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("prepare", help="prepare a corpus: manifests and trial lists")
    corpora = parser.add_subparsers(dest="corpus", metavar="CORPUS", required=True)
    for name in CORPORA:
        importlib.import_module(f"speakertrip.corpora.{name}").add_prepare_parser(corpora)
