"""`speakertrip finetune --model M --data DIR_OR_MANIFEST --out DIR`: adapt a model to your own speakers.

M is any model `st.load_model` reads (an artifact, a SpeechBrain hub id or hub-layout folder). Some
speakers of DATA are held out as a dev set (or give --dev); the model is fine-tuned head-free with the
multi-positive triplet loss, stops when the dev EER stops improving, and the average of the last
snapshots up to the best one is saved in DIR/model with its dev EER and thresholds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from speakertrip.commands import DATA_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    from speakertrip.training.finetune_config import FinetuneConfig

    defaults = FinetuneConfig()
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a model on your own speakers (head-free triplet loss)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example: speakertrip finetune --model speechbrain/spkrec-ecapa-voxceleb --data my_speakers/ "
               "--out exp/finetuned")
    parser.add_argument("--model", required=True, help="artifact folder, hub id or SpeechBrain hub-layout folder")
    parser.add_argument("--data", required=True, type=Path, help=f"your speakers: {DATA_HELP}")
    parser.add_argument("--out", required=True, type=Path, help="experiment folder (the model lands in OUT/model)")
    parser.add_argument("--dev", type=Path, help="dev set (folder or manifest); default: hold out --dev-speakers")
    parser.add_argument("--dev-speakers", type=float, default=defaults.dev_speakers,
                        help=f"speakers held out for dev: a count, or a fraction below 1 (default {defaults.dev_speakers})")
    parser.add_argument("--max-dev-trials", type=int, default=defaults.max_dev_trials,
                        help="at most this many dev trials, up to half of them target pairs "
                             f"(default {defaults.max_dev_trials})")
    parser.add_argument("--steps", type=int, help=f"at most this many steps (default {_default('steps')})")
    parser.add_argument("--lr", type=float, help=f"peak learning rate (default {_default('lr')})")
    parser.add_argument("--min-lr", type=float, default=defaults.min_lr,
                        help=f"the cosine schedule's floor, at most --lr (default {defaults.min_lr})")
    parser.add_argument("--weight-decay", type=float, default=defaults.weight_decay,
                        help=f"AdamW weight decay (default {defaults.weight_decay})")
    parser.add_argument("--warmup", type=float, default=defaults.warmup,
                        help=f"warm-up steps, or a fraction of --steps below 1 (default {defaults.warmup})")
    parser.add_argument("--speakers-per-batch", type=int, default=defaults.speakers_per_batch,
                        help=f"P (default {defaults.speakers_per_batch}, at most the training speakers)")
    parser.add_argument("--utterances-per-speaker", type=int, default=defaults.utterances_per_speaker,
                        help=f"K (default {defaults.utterances_per_speaker})")
    parser.add_argument("--crop-seconds", type=float, help=f"training crops (default {_default('crop_seconds')})")
    parser.add_argument("--margin", type=float, default=defaults.margin,
                        help=f"triplet margin on squared distances (default {defaults.margin})")
    parser.add_argument("--freeze-layers", type=int, help="keep the first N frame-level encoder layers as they are "
                                                          f"(default {_default('freeze_layers')})")
    parser.add_argument("--freeze-statistics", action=argparse.BooleanOptionalAction,
                        default=defaults.freeze_statistics,
                        help="BatchNorm layers in inference mode while fine-tuning: the pretrained statistics "
                             "normalise your data too and stay as they are; weights still learn (default: on)")
    parser.add_argument("--source", help="manifest of source-domain data to mix in against forgetting")
    parser.add_argument("--source-speakers", type=int, help="source speakers mixed in (default: as many as yours)")
    parser.add_argument("--source-statistics", action="store_true",
                        help="BatchNorm statistics re-estimated on --source data at every validation and in "
                             "the final model: it keeps working on its original domain (measured with --lr 4e-4 "
                             "--interpolation 0.7)")
    parser.add_argument("--interpolation", type=float, default=defaults.interpolation,
                        help="the final weights: initial + INTERPOLATION x (fine-tuned - initial), a weight-space "
                             "ensemble (WiSE-FT) that forgets less; 1 keeps the fine-tuned weights "
                             f"(default {defaults.interpolation})")
    parser.add_argument("--validate-every", type=int,
                        help=f"steps between dev validations and snapshots (default {_default('validate_every')})")
    parser.add_argument("--patience", type=int, help="stop after this many validations without a better dev EER "
                                                     f"(default {_default('patience')})")
    parser.add_argument("--average-last", type=int, default=defaults.average_last,
                        help=f"snapshots up to the best one averaged into the model (default {defaults.average_last})")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--workers", type=int, default=defaults.workers, help="data loader processes")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from speakertrip.training.finetune import finetune
    from speakertrip.training.finetune_config import FinetuneConfig

    options = dict(
        steps=args.steps, lr=args.lr, min_lr=args.min_lr, warmup=args.warmup, weight_decay=args.weight_decay,
        speakers_per_batch=args.speakers_per_batch, utterances_per_speaker=args.utterances_per_speaker,
        crop_seconds=args.crop_seconds, margin=args.margin, freeze_layers=args.freeze_layers,
        freeze_statistics=args.freeze_statistics, dev_speakers=args.dev_speakers, max_dev_trials=args.max_dev_trials,
        source=args.source, source_speakers=args.source_speakers, source_statistics=args.source_statistics,
        interpolation=args.interpolation, validate_every=args.validate_every, patience=args.patience,
        average_last=args.average_last, seed=args.seed, device=args.device, workers=args.workers,
        progress=not args.no_progress)
    config = FinetuneConfig.for_encoder(encoder_of(args.model),
                                        **{name: value for name, value in options.items() if value is not None})
    from speakertrip.tables import format_fields
    from speakertrip.training.trainer import SUMMARY_FILE

    result = finetune(args.model, args.data, args.out, config, dev=args.dev, resume=args.resume)
    print((result.model_dir.parent / SUMMARY_FILE).read_text(), end="")
    rows = [("speakers", f"{result.train_speakers} fine-tuning, {result.dev_speakers} dev"
                         + (f", {result.source_speakers} source-domain mixed in" if result.source_speakers else "")),
            ("steps", f"{result.steps} (best dev EER at step {result.best_step})"),
            ("dev EER before", f"{100 * result.eer_before:.2f} %"),
            ("dev EER after", f"{100 * result.eer_after:.2f} %"),
            ("model", str(result.model_dir))]
    print(format_fields(rows))
    return 0


def _default(field: str) -> str:
    """An option's default in the help: the class default, and where an encoder has its own, that one too."""
    from speakertrip.training.finetune_config import ENCODER_DEFAULTS, FinetuneConfig

    own = [f"{encoder.upper()}: {values[field]}" for encoder, values in ENCODER_DEFAULTS.items() if field in values]
    return f"{getattr(FinetuneConfig(), field)}" + "".join(f"; {text}" for text in own)


def encoder_of(model: str) -> str | None:
    """The encoder name of ``--model`` without loading it: ``ge2e`` for ``resemblyzer``, an artifact's
    ``encoder.name``, None for anything else (a hub id: its defaults are the class defaults)."""
    import yaml

    from speakertrip.models.resemblyzer import is_resemblyzer

    if is_resemblyzer(model):
        return "ge2e"
    config = Path(model) / "config.yaml"
    try:
        data = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (OSError, yaml.YAMLError):
        return None  # load_model names the problem
    encoder = data.get("encoder") if isinstance(data, dict) else None
    return encoder.get("name") if isinstance(encoder, dict) and isinstance(encoder.get("name"), str) else None
