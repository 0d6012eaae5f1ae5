#!/usr/bin/env python3
"""Fine-tuning on real voices: a model before and after `speakertrip finetune` (the demo model, trained on synthetic
eSpeak speech only, or with ``--model resemblyzer`` Resemblyzer's GE2E encoder, trained on real speech).

In one run:

1. the demo model's EER on real voices (the realvoices_dev corpus: 39 TTS voices, each built from one
   real person's recordings), split into folds of speakers;
2. per fold, ``speakertrip finetune`` on the other voices (its own dev speakers held out of those), then the
   EER on the fold's voices, which the fine-tuning never saw; folds rotate so every voice is evaluated once;
3. the eSpeak held-out EER (the demo's test speakers and trial list) before and after, for forgetting;
4. EER against the number of fine-tuning speakers (e.g. 6, 13, 26) on the first fold's voices;
5. with ``--splits N``, steps 1-3 on N random splits of the voices (the fold ratios of one split move a lot
   with the split and seed alone), the targets judged on the mean of the splits' ratios.

Targets: real-voice EER after <= 0.6 x before; eSpeak held-out EER after <= 1.1 x before. With ``--model
resemblyzer``: 0.7 x and 1.2 x; no source data are mixed in (its source domain, VoxCeleb and LibriSpeech, is
not here), and the run also embeds every utterance with the ``resemblyzer`` package itself (CPU): the "before"
figures must equal Resemblyzer's own EER on the same trials (checked per fold), and a table compares the
package's preprocessing choices (raw waveform, volume normalisation, ``preprocess_wav`` with webrtcvad
trimming) with speakertrip's embed on all the real voices and the eSpeak list.

    nice python scripts/bench_finetune.py --real REALVOICES/ --workdir /tmp/bench_finetune --splits 3 \
        --finetune-args "--source-statistics --lr 4e-4 --interpolation 0.7"

The demo model and its eSpeak data come from ``--demo`` (default ``demo_out``, where ``make demo`` writes);
when its model is missing, ``speakertrip demo --out DEMO`` makes it first (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RESEMBLYZER = "resemblyzer"
TARGETS = {RESEMBLYZER: (0.7, 1.2)}  # (real-voice, eSpeak) EER ratio targets by model; others: DEFAULT_TARGETS
DEFAULT_TARGETS = (0.6, 1.1)
DEMO_FILES = {"model": "exp/model", "espeak_test": "synth/data/test.jsonl",
              "espeak_trials": "synth/data/trials/veri_test2.txt", "source": "synth/data/train.jsonl"}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--real", type=Path, required=True,
                        help="real-voices corpus (VoxCeleb layout): the OUT folder of the realvoices_dev corpus "
                             "builder script (run it with OUT; see its docstring for the apt packages)")
    parser.add_argument("--demo", type=Path, default=Path("demo_out"),
                        help="a `speakertrip demo` output folder, made there when its model is missing; the "
                             "defaults of the next four options are inside it")
    parser.add_argument("--model", type=Path, help="the model to fine-tune: an artifact folder or 'resemblyzer' "
                        "(default DEMO/exp/model)")
    parser.add_argument("--espeak-test", type=Path, help="default DEMO/synth/data/test.jsonl")
    parser.add_argument("--espeak-trials", type=Path, help="default DEMO/synth/data/trials/veri_test2.txt")
    parser.add_argument("--source", type=Path, help="source-domain manifest mixed in against forgetting "
                        "(default DEMO/synth/data/train.jsonl; 'none' to switch off)")
    parser.add_argument("--no-preprocessing-table", action="store_true", help="with --model resemblyzer: skip the "
                        "table of preprocessing choices (the per-fold check against the package still runs)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench_finetune"))
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--first-folds", type=int, help="fine-tune and evaluate only the first N folds of each "
                        "split (a quicker, noisier run; the voices of the other folds are never evaluated)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[6, 13, 26],
                        help="fine-tuning speaker counts for the curve (fold 1's voices evaluated)")
    parser.add_argument("--steps", type=int, help="`speakertrip finetune --steps` (default: its own)")
    parser.add_argument("--finetune-args", default="", help="extra `speakertrip finetune` options, quoted")
    parser.add_argument("--seed", type=int, default=0, help="the split of the voices into folds, and the "
                        "fine-tuning seed")
    parser.add_argument("--splits", type=int, default=1, help="repeat on this many splits (seeds --seed, "
                        "--seed + 1, ...; runs in WORKDIR/splitN) and judge the targets on their mean ratios")
    args = parser.parse_args()
    if is_resemblyzer(args.model) and args.source is None:
        args.source = Path("none")  # its source domain is not here, and eSpeak speakers are the forgetting test
    defaults = [name for name in DEMO_FILES if getattr(args, name) is None]
    for name in defaults:
        setattr(args, name, args.demo / DEMO_FILES[name])
    if any(not getattr(args, name).exists() for name in defaults):
        print(f"no demo run in {args.demo}: running `speakertrip demo --out {args.demo}` (minutes on a CPU)",
              flush=True)
        subprocess.run([sys.executable, "-m", "speakertrip", "demo", "--out", str(args.demo)], check=True)
    return args


def is_resemblyzer(model: Path | None) -> bool:
    return model is not None and str(model) == RESEMBLYZER and not model.exists()


def embeddings_of(model, utterances) -> dict[str, np.ndarray]:
    """``utt_id`` -> embedding of every utterance, by ``model.embed_batch``."""
    return dict(zip([u.utt_id for u in utterances], model.embed_batch(list(utterances))))


def eer_of(embeddings: dict[str, np.ndarray], trials_path: Path) -> float:
    """EER (fraction) of the labelled trial list ``trials_path`` with the embeddings by ``utt_id``."""
    from speakertrip.data.embedding_store import EmbeddingStore
    from speakertrip.scoring import eer, read_trials, score_trials

    trials = read_trials(trials_path)
    keys = sorted(set(trials.enroll) | set(trials.test))
    store = EmbeddingStore(keys, np.stack([embeddings[key] for key in keys]).astype(np.float32))
    return eer(score_trials(trials, store), trials.labels)


def evaluate(model, utterances, trials_path: Path) -> float:
    """EER (fraction) of ``model`` on a trial list over ``utterances``."""
    return eer_of(embeddings_of(model, utterances), trials_path)


def package_embeddings(utterances, preprocessing: str) -> dict[str, np.ndarray]:
    """``utt_id`` -> ``resemblyzer.VoiceEncoder().embed_utterance`` (the package itself, on the CPU) of each utterance
    as speakertrip reads it, after ``preprocessing``: "raw", "volume" (``normalize_volume`` to -30 dBFS, raising
    only: what speakertrip's ge2e frontend does) or "preprocess_wav" (volume and webrtcvad silence trimming)."""
    from resemblyzer import VoiceEncoder, preprocess_wav
    from resemblyzer.audio import normalize_volume
    from resemblyzer.hparams import audio_norm_target_dBFS
    from speakertrip.audio import load_audio

    encoder = VoiceEncoder("cpu", verbose=False)
    prepare = {"raw": lambda wav: wav, "preprocess_wav": preprocess_wav,
               "volume": lambda wav: normalize_volume(wav, audio_norm_target_dBFS, increase_only=True)}[preprocessing]
    return {u.utt_id: encoder.embed_utterance(prepare(load_audio(u.path, 16000)).astype(np.float32))
            for u in utterances}


def run_finetune(model: Path, speakers: list[str], by_speaker: dict, workdir: Path, seed: int,
                 args: argparse.Namespace) -> Path:
    """`speakertrip finetune` on ``speakers`` (a manifest of theirs); returns the fine-tuned model folder."""
    from speakertrip.cli import main
    from speakertrip.data.manifest import write_manifest

    data = write_manifest([u for speaker in speakers for u in by_speaker[speaker]], workdir / "finetune_data.jsonl")
    command = ["finetune", "--model", str(model), "--data", str(data), "--out", str(workdir / "run"),
               *(["--steps", str(args.steps)] if args.steps else []), "--seed", str(seed), "--no-progress",
               *args.finetune_args.split()]
    if str(args.source) != "none":
        command += ["--source", str(args.source)]
    if (workdir / "run" / "model" / "config.yaml").is_file():
        return workdir / "run" / "model"  # done in an earlier invocation
    print("$ speakertrip " + " ".join(command), flush=True)
    if main(command) != 0:
        sys.exit(f"speakertrip finetune failed in {workdir}")
    return workdir / "run" / "model"


def split_folds(speakers: list[str], folds: int, seed: int) -> tuple[list[str], list[list[str]]]:
    """The speakers in a random order (``seed``), and ``folds`` folds dealt from it."""
    order = list(np.random.default_rng(seed).permutation(speakers))
    return order, [sorted(order[index::folds]) for index in range(folds)]


def run_split(seed: int, workdir: Path, context: dict, args: argparse.Namespace) -> list[tuple]:
    """Per fold of the split ``seed``: (fold, tuned on, evaluated, real EER before, after, eSpeak after)."""
    import speakertrip as st
    from speakertrip.data.split import make_trials, write_trials

    by_speaker, espeak = context["by_speaker"], context["espeak"]
    speakers = sorted(by_speaker)
    _, folds = split_folds(speakers, args.folds, seed)
    rows = []
    for index, held_out in enumerate(folds[:args.first_folds]):
        fold_dir = workdir / f"fold{index + 1}"
        evaluated = [u for s in held_out for u in by_speaker[s]]
        trials = write_trials(make_trials(evaluated, seed=seed), fold_dir / "eval_trials.txt")
        before = eer_of(context["initial_embeddings"], trials)
        if "package_embeddings" in context:
            package = eer_of(context["package_embeddings"], trials)
            context["package_gaps"].append(abs(before - package))
            print(f"split {seed} fold {index + 1}: before {100 * before:.2f} % (speakertrip), Resemblyzer package "
                  f"{100 * package:.2f} % ({'equal' if abs(before - package) < 5e-5 else 'DIFFERENT'})", flush=True)
        tuned_dir = run_finetune(args.model, [s for s in speakers if s not in held_out], by_speaker, fold_dir, seed,
                                 args)
        tuned = st.load_model(tuned_dir)
        rows.append((index + 1, len(speakers) - len(held_out), len(held_out), before,
                     evaluate(tuned, evaluated, trials), evaluate(tuned, espeak, args.espeak_trials)))
        print(f"split {seed} fold {index + 1}: real EER {100 * rows[-1][3]:.2f} % -> {100 * rows[-1][4]:.2f} %, "
              f"eSpeak {100 * context['espeak_before']:.2f} % -> {100 * rows[-1][5]:.2f} %", flush=True)
    return rows


def speaker_curve(workdir: Path, first_rows: list[tuple], context: dict, args: argparse.Namespace) -> list[tuple]:
    """(speakers, real EER on the first split's fold-1 voices, eSpeak EER) per fine-tuning speaker count."""
    import speakertrip as st

    by_speaker, espeak = context["by_speaker"], context["espeak"]
    order, folds = split_folds(sorted(by_speaker), args.folds, args.seed)
    others = [s for s in order if s not in folds[0]]
    trials = workdir / "fold1" / "eval_trials.txt"
    evaluated = [u for s in folds[0] for u in by_speaker[s]]
    curve = []
    for size in args.sizes:
        if size >= len(others):
            curve.append((len(others), first_rows[0][4], first_rows[0][5]))  # fold 1's run used all of them
            continue
        tuned_dir = run_finetune(args.model, sorted(others[:size]), by_speaker, workdir / f"size{size}", args.seed,
                                 args)
        tuned = st.load_model(tuned_dir)
        curve.append((size, evaluate(tuned, evaluated, trials), evaluate(tuned, espeak, args.espeak_trials)))
    return curve


def print_split(seed: int, rows: list[tuple], espeak_before: float) -> tuple[float, float]:
    """The split's fold table; returns its (real, eSpeak) EER ratios after/before."""
    print(f"\nsplit {seed}\n{'fold':<6}{'tuned on':>10}{'evaluated':>11}{'real EER before':>17}{'after':>9}"
          f"{'eSpeak before':>15}{'after':>9}")
    for fold, tuned_on, evaluated_count, before, after, espeak_after in rows:
        print(f"{fold:<6}{tuned_on:>10}{evaluated_count:>11}{100 * before:>16.2f}%{100 * after:>8.2f}%"
              f"{100 * espeak_before:>14.2f}%{100 * espeak_after:>8.2f}%")
    real_before, real_after, espeak_after = (float(np.mean([row[column] for row in rows])) for column in (3, 4, 5))
    print(f"{'mean':<6}{'':>10}{'':>11}{100 * real_before:>16.2f}%{100 * real_after:>8.2f}%"
          f"{100 * espeak_before:>14.2f}%{100 * espeak_after:>8.2f}%")
    return real_after / real_before, espeak_after / espeak_before


def preprocessing_table(model, real, context: dict, args: argparse.Namespace) -> None:
    """EER on all the real voices (trials over every utterance) and the eSpeak list: the package with each
    preprocessing, and speakertrip's embed (which normalises the volume as the package's ``normalize_volume``)."""
    from speakertrip.data.manifest import read_manifest
    from speakertrip.data.split import make_trials, write_trials

    real_trials = write_trials(make_trials(real, seed=args.seed), args.workdir / "all_real_trials.txt")
    espeak = read_manifest(args.espeak_test)
    ours = {**context["initial_embeddings"], **embeddings_of(model, espeak)}
    trimmed = dict(zip([u.utt_id for u in real + espeak], model.embed_batch(real + espeak, trim_db=40)))
    systems = [("speakertrip embed (volume normalised)", ours), ("speakertrip embed, trim_db=40", trimmed)]
    for preprocessing in ("raw", "volume", "preprocess_wav"):
        embeddings = (context["package_embeddings"] if preprocessing == "volume"
                      else package_embeddings(real, preprocessing))
        systems.append((f"package, {preprocessing}", {**embeddings, **package_embeddings(espeak, preprocessing)}))
    print(f"\n{'Resemblyzer preprocessing':<40}{'real voices EER':>16}{'eSpeak EER':>12}")
    for name, embeddings in systems:
        print(f"{name:<40}{100 * eer_of(embeddings, real_trials):>15.2f}%"
              f"{100 * eer_of(embeddings, args.espeak_trials):>11.2f}%")
    cosines = [float(ours[key] @ context["package_embeddings"][key]) for key in context["package_embeddings"]]
    print(f"speakertrip vs package (volume) on {len(cosines)} real utterances: cosine min {min(cosines):.6f}\n",
          flush=True)


def main() -> None:
    args = parse_args()
    import speakertrip as st
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.data.manifest import read_manifest

    started = time.perf_counter()
    resemblyzer = is_resemblyzer(args.model)
    for path in (args.real, args.espeak_test, args.espeak_trials, *(() if resemblyzer else (args.model,))):
        if not path.exists():
            sys.exit(f"missing {path}")
    real = read_manifest(prepare_voxceleb(args.real, args.workdir / "real", progress=False)["utts"])
    by_speaker: dict[str, list] = {}
    for utterance in real:
        by_speaker.setdefault(utterance.spk_id, []).append(utterance)
    espeak = read_manifest(args.espeak_test)
    demo = st.load_model(RESEMBLYZER if resemblyzer else args.model)
    context = {"by_speaker": by_speaker, "espeak": espeak, "initial_embeddings": embeddings_of(demo, real),
               "espeak_before": evaluate(demo, espeak, args.espeak_trials)}
    if resemblyzer:
        context.update(package_embeddings=package_embeddings(real, "volume"), package_gaps=[])
        if not args.no_preprocessing_table:
            preprocessing_table(demo, real, context, args)
    seeds = list(range(args.seed, args.seed + args.splits))
    print(f"real voices: {len(by_speaker)} speakers, {len(real)} utterances, {args.folds} folds x {len(seeds)} "
          f"split(s); model {args.model}; eSpeak held-out EER before {100 * context['espeak_before']:.2f} %",
          flush=True)
    workdirs = {seed: args.workdir if len(seeds) == 1 else args.workdir / f"split{seed}" for seed in seeds}
    splits = {seed: run_split(seed, workdirs[seed], context, args) for seed in seeds}
    curve = speaker_curve(workdirs[args.seed], splits[args.seed], context, args)

    ratios = {seed: print_split(seed, rows, context["espeak_before"]) for seed, rows in splits.items()}
    print(f"\n{'fine-tuning speakers':<22}{'real EER (fold 1 voices)':>26}{'eSpeak EER':>12}")
    print(f"{0:<22}{100 * splits[args.seed][0][3]:>25.2f}%{100 * context['espeak_before']:>11.2f}%")
    for size, real_eer, espeak_eer in curve:
        print(f"{size:<22}{100 * real_eer:>25.2f}%{100 * espeak_eer:>11.2f}%")
    if len(seeds) > 1:
        print("\nper split (real, eSpeak ratio): " + ", ".join(
            f"{seed}: {real_ratio:.3f}, {espeak_ratio:.3f}" for seed, (real_ratio, espeak_ratio) in ratios.items()))
    real_ratio, espeak_ratio = (float(np.mean([pair[index] for pair in ratios.values()])) for index in (0, 1))
    scope = "" if len(seeds) == 1 else f", mean of {len(seeds)} splits"
    if len(seeds) > 1:
        spread = [(min(pair[index] for pair in ratios.values()), max(pair[index] for pair in ratios.values()))
                  for index in (0, 1)]
        print(f"spread over splits: real {spread[0][0]:.3f}-{spread[0][1]:.3f}, "
              f"eSpeak {spread[1][0]:.3f}-{spread[1][1]:.3f}")
    if resemblyzer:
        gap = max(context["package_gaps"])
        print(f"\nbefore = Resemblyzer's own EER (the package, same trials) on every fold: "
              f"{'yes' if gap < 5e-5 else 'NO'} (largest difference {100 * gap:.4f} points)")
    real_target, espeak_target = TARGETS.get(RESEMBLYZER if resemblyzer else "", DEFAULT_TARGETS)
    print(f"\nreal voices never fine-tuned on: EER ratio after/before {real_ratio:.3f} (target <= {real_target:.2f}: "
          f"{'met' if real_ratio <= real_target else 'NOT met'}{scope})")
    print(f"eSpeak held-out (forgetting):    EER ratio after/before {espeak_ratio:.3f} (target <= "
          f"{espeak_target:.2f}: {'met' if espeak_ratio <= espeak_target else 'NOT met'}{scope})")
    print(f"total time {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
