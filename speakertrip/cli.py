"""The `speakertrip` command: one entry point, one module per subcommand in `speakertrip.commands`.

Each command module defines ``register(subparsers)``, which adds its parser and sets
``func`` to a callable ``run(args) -> int``. Heavy imports (torch) happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from speakertrip import __version__
from speakertrip.errors import SpeakertripError

# Module names under speakertrip.commands, in the order `--help` lists them.
COMMANDS: tuple[str, ...] = (
    "prepare",
    "score", "metrics", "calibrate",
    "convert",
    "import_model",
    "train", "finetune", "average",
    "embed", "verifier", "store", "serve", "export",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="speakertrip",
        description="Speaker verification with triplet-loss metric learning.",
    )
    parser.add_argument("--version", action="version", version=f"speakertrip {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"speakertrip.commands.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 2 error unless a command says otherwise)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except SpeakertripError as error:
        print(f"speakertrip {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
