"""`speakertrip average EXP_DIR`: average the last snapshots of a run, validate, export the model artifact.

``speakertrip train`` already exports ``EXP_DIR/model``; this command redoes it with another
count (``--last N``) or chosen checkpoints, e.g. to compare averaging with the best checkpoint.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "average", help="average a run's last checkpoints into a model artifact (with dev EER and thresholds)",
        description="Average the last N snapshots of EXP_DIR (or --checkpoints), validate on the config's "
                    "dev trials, and write the model artifact.")
    parser.add_argument("exp_dir", type=Path, help="experiment folder written by `speakertrip train`")
    parser.add_argument("--last", type=int, default=None, help="average the last N snapshots (default: "
                                                               "train.average_last of the run's config)")
    parser.add_argument("--checkpoints", type=Path, nargs="+", help="average these checkpoint files instead")
    parser.add_argument("--out", type=Path, help="artifact folder (default: EXP_DIR/model)")
    parser.add_argument("--no-validate", action="store_true", help="skip the dev-set evaluation")
    parser.add_argument("--device", default="auto", help="where to validate (default: cuda if available)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import SpeakertripError
    from speakertrip.training.averaging import save_final_model, list_snapshots
    from speakertrip.training.config import load_config
    from speakertrip.training.distributed import resolve_device

    config = load_config(args.exp_dir / "config.yaml")
    if args.checkpoints:
        paths = list(args.checkpoints)
    else:
        count = args.last if args.last is not None else config.train.average_last
        if count < 1:
            raise SpeakertripError(f"--last must be >= 1, got {count}")
        paths = list_snapshots(args.exp_dir / "checkpoints")[-count:]
        if not paths:
            raise SpeakertripError(f"{args.exp_dir / 'checkpoints'}: no snapshot_*.pt to average")
    out = args.out or args.exp_dir / "model"
    directory, evaluation = save_final_model(config, paths, out, validate_dev=not args.no_validate,
                                         device=resolve_device(args.device), progress=True)
    rows = [("averaged", ", ".join(str(path) for path in paths))]
    if "eer" in evaluation:
        rows += [("dev EER", f"{100 * evaluation['eer']:.2f} %"), ("minDCF(0.01)", f"{evaluation['min_dcf_0.01']:.4f}"),
                 ("EER threshold", f"{evaluation['eer_threshold']:.4f}"),
                 ("minDCF(0.01) threshold", f"{evaluation['min_dcf_0.01_threshold']:.4f}")]
    rows.append(("model", str(directory)))
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
    return 0
