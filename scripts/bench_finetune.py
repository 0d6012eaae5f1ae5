#!/usr/bin/env python3
"""Fine-tuning on real voices: the demo model (synthetic eSpeak speech only) before and after `speakertrip finetune`.

In one run:

1. the demo model's EER on real voices (``/work/shared/corpora/realvoices_dev.py``: 39 TTS voices, each
   built from one real person's recordings), split into folds of speakers;
2. per fold, ``speakertrip finetune`` on the other voices (its own dev speakers held out of those), then the
   EER on the fold's voices, which the fine-tuning never saw; folds rotate so every voice is evaluated once;
3. the eSpeak held-out EER (the demo's test speakers and trial list) before and after, for forgetting;
4. EER against the number of fine-tuning speakers (e.g. 6, 13, 26) on the first fold's voices.

Targets: real-voice EER after <= 0.6 x before; eSpeak held-out EER after <= 1.1 x before.

    nice python scripts/bench_finetune.py --workdir /tmp/bench_finetune
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

DEMO = Path("/work/demo_full/demo_out")
REAL = Path("/work/realvoices/corpus")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEMO / "exp" / "model", help="the model to fine-tune")
    parser.add_argument("--real", type=Path, default=REAL, help="real-voices corpus (VoxCeleb layout)")
    parser.add_argument("--espeak-test", type=Path, default=DEMO / "synth" / "data" / "test.jsonl")
    parser.add_argument("--espeak-trials", type=Path, default=DEMO / "synth" / "data" / "trials" / "veri_test2.txt")
    parser.add_argument("--source", type=Path, default=DEMO / "synth" / "data" / "fit.jsonl",
                        help="source-domain manifest mixed in against forgetting ('none' to switch off)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_finetune"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="*", default=[6, 13, 26],
                        help="fine-tuning speaker counts for the curve (fold 1's voices evaluated)")
    parser.add_argument("--steps", type=int, help="`speakertrip finetune --steps` (default: its own)")
    parser.add_argument("--finetune-args", default="", help="extra `speakertrip finetune` options, quoted")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def evaluate(model, utterances, trials_path: Path) -> float:
    """EER (fraction) of ``model`` on a trial list over ``utterances``."""
    from speakertrip.training.validation import validate

    return validate(model, utterances, trials_path)["eer"]


def run_finetune(model: Path, speakers: list[str], by_speaker: dict, workdir: Path, args: argparse.Namespace) -> Path:
    """`speakertrip finetune` on ``speakers`` (a manifest of theirs); returns the fine-tuned model folder."""
    from speakertrip.cli import main
    from speakertrip.data.manifest import write_manifest

    data = write_manifest([u for speaker in speakers for u in by_speaker[speaker]], workdir / "finetune_data.jsonl")
    command = ["finetune", "--model", str(model), "--data", str(data), "--out", str(workdir / "run"),
               *(["--steps", str(args.steps)] if args.steps else []), "--seed", str(args.seed), "--no-progress",
               *args.finetune_args.split()]
    if str(args.source) != "none":
        command += ["--source", str(args.source)]
    if (workdir / "run" / "model" / "config.yaml").is_file():
        return workdir / "run" / "model"  # done in an earlier invocation
    print("$ speakertrip " + " ".join(command), flush=True)
    if main(command) != 0:
        sys.exit(f"speakertrip finetune failed in {workdir}")
    return workdir / "run" / "model"


def main() -> None:
    args = parse_args()
    import speakertrip as st
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.data.manifest import read_manifest
    from speakertrip.data.split import make_trials, write_trials

    started = time.perf_counter()
    for path in (args.model, args.real, args.espeak_test, args.espeak_trials):
        if not path.exists():
            sys.exit(f"missing {path}")
    real = read_manifest(prepare_voxceleb(args.real, args.workdir / "real", progress=False)["utts"])
    by_speaker: dict[str, list] = {}
    for utterance in real:
        by_speaker.setdefault(utterance.spk_id, []).append(utterance)
    speakers = sorted(by_speaker)
    order = list(np.random.default_rng(args.seed).permutation(speakers))
    folds = [sorted(order[index::args.folds]) for index in range(args.folds)]
    espeak = read_manifest(args.espeak_test)
    demo = st.load_model(args.model)
    espeak_before = evaluate(demo, espeak, args.espeak_trials)
    print(f"real voices: {len(speakers)} speakers, {len(real)} utterances, {args.folds} folds; "
          f"demo model {args.model}; eSpeak held-out EER before {100 * espeak_before:.2f} %", flush=True)

    rows = []
    for index, held_out in enumerate(folds):
        fold_dir = args.workdir / f"fold{index + 1}"
        trials = write_trials(make_trials([u for s in held_out for u in by_speaker[s]], seed=args.seed),
                              fold_dir / "eval_trials.txt")
        evaluated = [u for s in held_out for u in by_speaker[s]]
        before = evaluate(demo, evaluated, trials)
        tuned_dir = run_finetune(args.model, [s for s in speakers if s not in held_out], by_speaker, fold_dir, args)
        tuned = st.load_model(tuned_dir)
        rows.append((index + 1, len(speakers) - len(held_out), len(held_out), before,
                     evaluate(tuned, evaluated, trials), evaluate(tuned, espeak, args.espeak_trials)))
        print(f"fold {index + 1}: real EER {100 * rows[-1][3]:.2f} % -> {100 * rows[-1][4]:.2f} %, "
              f"eSpeak {100 * espeak_before:.2f} % -> {100 * rows[-1][5]:.2f} %", flush=True)

    curve = []
    first = folds[0]
    others = [s for s in order if s not in first]
    trials = args.workdir / "fold1" / "eval_trials.txt"
    evaluated = [u for s in first for u in by_speaker[s]]
    for size in args.sizes:
        if size >= len(others):
            curve.append((len(others), rows[0][4], rows[0][5]))  # fold 1's run used all of them
            continue
        tuned_dir = run_finetune(args.model, sorted(others[:size]), by_speaker, args.workdir / f"size{size}", args)
        tuned = st.load_model(tuned_dir)
        curve.append((size, evaluate(tuned, evaluated, trials), evaluate(tuned, espeak, args.espeak_trials)))

    print(f"\n{'fold':<6}{'tuned on':>10}{'evaluated':>11}{'real EER before':>17}{'after':>9}"
          f"{'eSpeak before':>15}{'after':>9}")
    for fold, tuned_on, evaluated_count, before, after, espeak_after in rows:
        print(f"{fold:<6}{tuned_on:>10}{evaluated_count:>11}{100 * before:>16.2f}%{100 * after:>8.2f}%"
              f"{100 * espeak_before:>14.2f}%{100 * espeak_after:>8.2f}%")
    real_before = float(np.mean([row[3] for row in rows]))
    real_after = float(np.mean([row[4] for row in rows]))
    espeak_after = float(np.mean([row[5] for row in rows]))
    print(f"{'mean':<6}{'':>10}{'':>11}{100 * real_before:>16.2f}%{100 * real_after:>8.2f}%"
          f"{100 * espeak_before:>14.2f}%{100 * espeak_after:>8.2f}%")
    print(f"\n{'fine-tuning speakers':<22}{'real EER (fold 1 voices)':>26}{'eSpeak EER':>12}")
    print(f"{0:<22}{100 * rows[0][3]:>25.2f}%{100 * espeak_before:>11.2f}%")
    for size, real_eer, espeak_eer in curve:
        print(f"{size:<22}{100 * real_eer:>25.2f}%{100 * espeak_eer:>11.2f}%")
    real_ratio, espeak_ratio = real_after / real_before, espeak_after / espeak_before
    print(f"\nreal voices never fine-tuned on: EER ratio after/before {real_ratio:.3f} (target <= 0.60: "
          f"{'met' if real_ratio <= 0.6 else 'NOT met'})")
    print(f"eSpeak held-out (forgetting):    EER ratio after/before {espeak_ratio:.3f} (target <= 1.10: "
          f"{'met' if espeak_ratio <= 1.1 else 'NOT met'})")
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
