"""`speakertrip train CONFIG.yaml [--resume] [--section.key=value ...]`: train an encoder.

Overrides after the config win over the file (``--optim.lr=1e-3 --model.options.channels=1024``);
see OVERRIDES below (``--augment=null``, ``--path+={mapping}``).
Under ``torchrun --nproc_per_node N -m speakertrip train CONFIG`` every process runs this command.
"""

from __future__ import annotations

import argparse


OVERRIDES = """\
overrides (applied in order, values are YAML):
  --section.key=value     set one key: --optim.lr=1e-3, --data.dev=null, --train.epochs=20
  --section.key={...}     a mapping REPLACES the file's mapping:
                          --augment.weights={none: 1.0} leaves no reverb/noise weight behind
  --section.key+={...}    MERGE into the file's mapping instead:
                          --model.options+={channels: 1024} keeps embedding_dim
  --section.key.sub=value a path reaches into a mapping, keeping its other keys:
                          --model.options.channels=1024
  --augment=null          switch an optional section off (here: no augmentation,
                          no MUSAN/RIRS_NOISES needed)

example: speakertrip train recipes/voxceleb/conf/ecapa_triplet.yaml --train.epochs=20 --augment=null
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an encoder with a triplet (or AAM) loss",
        description="Train an encoder as CONFIG says; overrides like --optim.lr=1e-3 follow the config.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=OVERRIDES)
    parser.add_argument("config", help="YAML config (sections data, features, augment, model, loss, optim, "
                                       "schedule, train)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in train.exp_dir from checkpoints/last.pt")
    parser.add_argument("overrides", nargs=argparse.REMAINDER, metavar="--section.key=value",
                        help="config overrides (YAML values)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.training.config import load_config
    from speakertrip.training.trainer import SUMMARY_FILE, train

    overrides = [item for item in args.overrides if item != "--resume"]
    resume = args.resume or len(overrides) != len(args.overrides)
    summary = train(load_config(args.config, overrides), resume=resume) / SUMMARY_FILE
    if summary.is_file():  # written by the main rank
        print(summary.read_text(), end="")
    return 0
