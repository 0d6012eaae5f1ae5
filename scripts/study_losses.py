#!/usr/bin/env python3
"""Which loss trains the best speaker embeddings? Seven losses, several seeds, everything else held fixed.

Held fixed: the data (the demo's eSpeak corpus and its training speakers), the encoder (the demo's ECAPA), the
batch shape, the optimiser, schedule and number of steps. Only the loss varies:

- multi-positive triplet, literal (mean over all negatives) and hardest-k (mean of the k closest negatives);
- one-positive triplet with batch-hard, batch-all and semi-hard mining;
- AAM-softmax;
- the hybrid ``multi_positive+aam``: AAM-softmax + weight x multi-positive hardest-k.

Every model is scored on two lists: the demo's held-out eSpeak speakers (other languages and voice variants
than training) and a corpus of real voices (the realvoices_dev corpus builder, passed with
``--realvoices-builder``, or a built copy with ``--realvoices``). EER and minDCF(0.01) are reported two ways:
mean ± std over seeds, and a 95 % interval from a speaker-level bootstrap (speakers drawn with replacement,
seeds drawn with replacement, the same draws for every loss so that differences are paired). A loss differs
significantly from the best one on a list when the 95 % interval of the difference excludes 0.

    flock /tmp/heavy.lock .venv/bin/python scripts/study_losses.py --out study_out \\
        --realvoices-builder PATH/TO/realvoices_dev.py
    .venv/bin/python scripts/study_losses.py --quick --out /tmp/study_quick     # seconds: for tests

Runs already finished in ``--out`` (their scores are saved) are not trained again, so an interrupted study
resumes. Writes ``OUT/study.json`` and ``OUT/study.md`` (the tables of docs/loss_study.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# name → (loss kind, options); margins as the demo's: 0.3 on squared distances of unit vectors, AAM m=0.2, s=30
LOSSES: dict[str, tuple[str, dict[str, Any]]] = {
    "multi-positive, all negatives": ("multi_positive", {"margin": 0.3}),
    "multi-positive, hardest-4": ("multi_positive", {"margin": 0.3, "hardest_negatives": 4}),
    "batch-hard": ("triplet", {"margin": 0.3, "miner": "batch_hard"}),
    "batch-all": ("triplet", {"margin": 0.3, "miner": "batch_all", "reduction": "mean_nonzero"}),
    "semi-hard": ("triplet", {"margin": 0.3, "miner": "semi_hard"}),
    "AAM-softmax": ("aam", {"margin": 0.2, "scale": 30.0}),
    "hybrid AAM + multi-positive": ("multi_positive+aam", {"aam_weight": 1.0,
                                                           "metric": {"margin": 0.3, "hardest_negatives": 4},
                                                           "aam": {"margin": 0.2, "scale": 30.0}}),
}
P_TARGET = 0.01


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("study_out"))
    parser.add_argument("--realvoices", type=Path, help="a built real-voices corpus: wav/ and trials.txt")
    parser.add_argument("--realvoices-builder", type=Path, help="the realvoices_dev corpus builder script; builds "
                        "the corpus into OUT/realvoices unless --realvoices is given")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--steps", type=int, help="training steps of every run (default 150; --quick 4)")
    parser.add_argument("--channels", type=int, help="ECAPA width of every run (default 64, the size the published "
                        "table was run at; --quick: the quick demo's)")
    parser.add_argument("--speakers", type=int, help="eSpeak speakers in the corpus, the 40 held out included (default "
                        "220, the size the published table was run at; --quick: the quick demo's)")
    parser.add_argument("--losses", nargs="*", choices=sorted(LOSSES), metavar="NAME",
                        help=f"a subset of: {', '.join(LOSSES)}")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates")
    parser.add_argument("--quick", action="store_true", help="the demo's quick corpus and a few steps (tests)")
    parser.add_argument("--finished-only", action="store_true", help="train nothing: the tables of the runs "
                        "already finished in OUT (an interrupted study)")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.bootstrap < 2:
        parser.error("need --seeds >= 1 and --bootstrap >= 2")
    args.losses = args.losses or list(LOSSES)
    args.steps = args.steps or (4 if args.quick else 150)
    return args


def real_voices(args: argparse.Namespace) -> Path | None:
    """The real-voices corpus folder, built with the builder script when only that is given."""
    if args.realvoices is not None:
        root = args.realvoices
    elif args.realvoices_builder is not None:
        root = args.out / "realvoices"
        if not (root / "trials.txt").is_file():
            subprocess.run([sys.executable, str(args.realvoices_builder), str(root)], check=True)
    else:
        return None
    if not (root / "trials.txt").is_file() or not (root / "wav").is_dir():
        sys.exit(f"{root}: expected a real-voices corpus (wav/ and trials.txt, as the realvoices_dev builder writes)")
    return root


def trial_lists(args: argparse.Namespace, espeak: Any) -> dict[str, tuple[Any, dict[str, str]]]:
    """Each list's name → (trials, key → audio path)."""
    from speakertrip.data.manifest import read_manifest
    from speakertrip.scoring import read_trials

    lists = {"eSpeak held-out": (read_trials(espeak.test_trials),
                                 {u.utt_id: u.path for u in read_manifest(espeak.test)})}
    root = real_voices(args)
    if root is not None:
        trials = read_trials(root / "trials.txt")
        lists["real voices"] = (trials, {key: str(root / "wav" / key) for key in {*trials.enroll, *trials.test}})
    return lists


def run_one(name: str, seed: int, settings: Any, data: Any, lists: dict, out: Path,
            train_missing: bool = True) -> dict[str, np.ndarray] | None:
    """Train one loss with one seed (unless its scores are saved) → each list's scores (N,); None when not
    saved and not ``train_missing``."""
    from speakertrip.data.embedding_store import EmbeddingStore
    from speakertrip.demo import training_config
    from speakertrip.models import load_model
    from speakertrip.scoring import score_trials
    from speakertrip.training.trainer import train

    run_dir = out / "runs" / name.replace(" ", "_").replace(",", "").replace("+", "plus") / f"seed{seed}"
    saved = run_dir / "scores.npz"
    if saved.is_file():
        with np.load(saved) as scores:
            if set(scores.files) == set(lists):
                return {key: scores[key] for key in scores.files}
    if not train_missing:
        return None
    started = time.perf_counter()
    config = training_config(settings, data, run_dir / "exp", seed, loss=LOSSES[name], validate=False)
    config.train.progress = False
    interrupted = (run_dir / "exp" / "checkpoints" / "last.pt").is_file()  # a run cut off before its scores
    model = load_model(train(config, resume=interrupted) / "model")
    trained = time.perf_counter() - started
    scores = {}
    for list_name, (trials, paths) in lists.items():
        keys = sorted(paths)
        store = EmbeddingStore(keys, model.embed_batch([paths[key] for key in keys]))
        scores[list_name] = score_trials(trials, store)
    np.savez(saved, **scores)
    (run_dir / "seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    print(f"  {name}, seed {seed}: trained in {trained:.0f} s, embedded and scored in "
          f"{time.perf_counter() - started - trained:.0f} s", flush=True)
    return scores


def summarise(scores: dict[str, list[np.ndarray]], trials: Any, resamples: int, seed: int = 0) -> dict[str, dict]:
    """Per loss: point metrics by seed, mean ± std, bootstrap intervals, and the difference from the best loss.

    ``scores`` maps each loss to its seeds' scores of ``trials``. One set of speaker draws serves every loss, and
    per replicate each loss's seeds are drawn with replacement, so an interval holds both speaker and seed
    variation and differences are paired by speaker.
    """
    from speakertrip.scoring import compute_metrics, voxceleb_speaker
    from speakertrip.scoring.bootstrap import speaker_replicates, weighted_metrics

    labels = trials.labels.astype(bool)
    weights = speaker_replicates([voxceleb_speaker(k) for k in trials.enroll],
                                 [voxceleb_speaker(k) for k in trials.test], resamples, seed)
    rng = np.random.default_rng(seed + 1)
    table, replicates = {}, {}
    for name, runs in scores.items():
        points = [compute_metrics(s, labels, p_targets=(P_TARGET,)) for s in runs]
        eer = np.array([m.eer for m in points])
        dcf = np.array([m.min_dcf[P_TARGET] for m in points])
        boot = [weighted_metrics(s, labels, weights, P_TARGET) for s in runs]  # per seed: (R,), (R,)
        draws = rng.integers(len(runs), size=(resamples, len(runs)))  # seeds drawn with replacement
        rows = np.arange(resamples)[:, None]
        replicates[name] = {metric: np.stack([b[i] for b in boot], axis=1)[rows, draws].mean(axis=1)
                            for i, metric in enumerate(("eer", "min_dcf"))}
        table[name] = {"eer": eer.tolist(), "min_dcf": dcf.tolist(),
                       "eer_mean": float(eer.mean()), "eer_std": float(eer.std(ddof=1)) if len(eer) > 1 else 0.0,
                       "min_dcf_mean": float(dcf.mean()),
                       "min_dcf_std": float(dcf.std(ddof=1)) if len(dcf) > 1 else 0.0,
                       "eer_ci": _interval(replicates[name]["eer"]),
                       "min_dcf_ci": _interval(replicates[name]["min_dcf"])}
    for metric in ("eer", "min_dcf"):
        best = min(table, key=lambda name: table[name][f"{metric}_mean"])
        for name in table:
            low, high = _interval(replicates[name][metric] - replicates[best][metric])
            table[name][f"{metric}_vs_best"] = {"best": best, "difference_ci": (low, high),
                                                "significant": name != best and low > 0}
    return table


def _interval(values: np.ndarray) -> tuple[float, float]:
    low, high = np.nanquantile(values, [0.025, 0.975])
    return float(low), float(high)


def markdown(results: dict[str, dict[str, dict]], header: str) -> str:
    """The study's tables in Markdown: one per list, rates in %."""
    lines = [header]
    for list_name, table in results.items():
        lines += ["", f"**{list_name}**", "",
                  "| loss | seeds | EER % mean ± std | EER % 95 % CI | vs best EER | minDCF(0.01) mean ± std | "
                  "minDCF 95 % CI | vs best minDCF |", "|---|---|---|---|---|---|---|---|"]
        for name, row in sorted(table.items(), key=lambda item: item[1]["eer_mean"]):
            lines.append(
                f"| {name} | {len(row['eer'])} | {100 * row['eer_mean']:.2f} ± {100 * row['eer_std']:.2f} | "
                f"{100 * row['eer_ci'][0]:.2f}–{100 * row['eer_ci'][1]:.2f} | {_versus(row['eer_vs_best'], name, 100)} | "
                f"{row['min_dcf_mean']:.3f} ± {row['min_dcf_std']:.3f} | "
                f"{row['min_dcf_ci'][0]:.3f}–{row['min_dcf_ci'][1]:.3f} | {_versus(row['min_dcf_vs_best'], name, 1)} |")
    return "\n".join(lines) + "\n"


def _versus(comparison: dict, name: str, scale: float) -> str:
    if comparison["best"] == name:
        return "best"
    low, high = (scale * v for v in comparison["difference_ci"])
    digits = 2 if scale == 100 else 3
    return f"{'worse' if comparison['significant'] else 'n.s.'} (+{low:.{digits}f}…+{high:.{digits}f})".replace(
        "+-", "−")


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict]]:
    args = parse_args(argv)
    from speakertrip.demo import FULL, QUICK, prepare_data

    demo = QUICK if args.quick else FULL
    channels = args.channels or (demo.channels if args.quick else 64)
    speakers = args.speakers or (demo.speakers if args.quick else 220)
    held_out = {} if args.quick else {"dev_speakers": 20, "test_speakers": 20}  # the published table's split
    settings = dataclasses.replace(demo, steps=args.steps, channels=channels, speakers=speakers, **held_out)
    args.out.mkdir(parents=True, exist_ok=True)
    espeak = prepare_data(settings, args.out / "synth", seed=0, progress=False)
    lists = trial_lists(args, espeak)
    print(f"{len(args.losses)} losses x {args.seeds} seeds, {settings.steps} steps of {settings.p} x {settings.k} "
          f"crops of {settings.crop_seconds} s, ECAPA C={settings.channels}; lists: "
          + ", ".join(f"{name} ({len(trials)} trials)" for name, (trials, _) in lists.items()), flush=True)
    scores: dict[str, dict[str, list[np.ndarray]]] = {list_name: {} for list_name in lists}
    for seed in range(args.seeds):  # seed by seed: an interrupted study has every loss at a seed or two
        for name in args.losses:
            run = run_one(name, seed, settings, espeak, lists, args.out, train_missing=not args.finished_only)
            for list_name in lists if run else ():
                scores[list_name].setdefault(name, []).append(run[list_name])
    results = {list_name: summarise(scores[list_name], lists[list_name][0], args.bootstrap) for list_name in lists}
    minutes = sum(float(path.read_text()) for path in (args.out / "runs").rglob("seconds.txt")) / 60
    seeds = sorted({len(runs) for runs in scores[next(iter(lists))].values()})
    header = (f"{len(scores[next(iter(lists))])} losses × {'/'.join(map(str, seeds))} seeds, {settings.steps} steps, "
              f"{settings.p}×{settings.k} batches, ECAPA C={settings.channels}; {args.bootstrap} bootstrap "
              f"replicates; {minutes:.0f} min of training and scoring")
    table = markdown(results, header)
    (args.out / "study.md").write_text(table)
    (args.out / "study.json").write_text(json.dumps({"settings": dataclasses.asdict(settings), "seeds": args.seeds,
                                                     "losses": {n: LOSSES[n] for n in args.losses},
                                                     "results": results}, indent=1) + "\n")
    print(table)
    return results


if __name__ == "__main__":
    main()
