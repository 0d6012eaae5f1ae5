"""Calibration and operating points of a model, checked on held-out speakers; several enrolment utterances compared.

1. A mixed-duration dev trial list, never touching the held-out speakers: the demo's 8 dev speakers plus
   64 fresh training-language speakers that the model never saw (``speakertrip prepare synth`` with
   another seed: new voices in the training languages). Every ordered pair of their utterances, the
   test side cut to one of 1, 2, 4 s or full (at random), half the non-target pairs kept; written as
   audio files and calibrated with ``speakertrip calibrate --model`` into a copy of the model (the
   original is left alone).
2. The held-out speakers scored over all ordered pairs, tests cut to 1, 2, 4 s and full (every cut):
   - the realised false-accept rate of ``Verifier(model, far=0.01)`` and ``far=0.001``;
   - actual Cllr of the calibrated LLRs against minCllr, plain and duration-aware;
   and, for reference, the same with the calibration fitted at the end of training (the model's
   own small dev list, full-length audio).
3. Enrolment with 1, 3 and 10 utterances per held-out speaker (20 random draws each): centroid, mean
   of per-utterance scores, max, mean of the top 3; EER and minDCF(0.01) over every other held-out
   utterance at every test duration.

Every figure is printed beside its target. Run (a few minutes on 2 CPU cores; the dev corpus is made once):
``PYTHONPATH=. .venv/bin/python scripts/bench_calibration.py [--demo DEMO | --model M --data DATA_DIR]``
with DATA_DIR holding ``dev.jsonl`` and ``test.jsonl``. Both default to a ``speakertrip demo`` run in DEMO
(default ``demo_out``, where ``make demo`` writes: ``exp/model`` and ``synth/data``); when it is missing,
``speakertrip demo --out DEMO`` makes it first (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf

import speakertrip as st
from speakertrip import scoring
from speakertrip.audio import load_audio
from speakertrip.cli import main as cli
from speakertrip.data.manifest import read_manifest
from speakertrip.evaluation.dev_calibration import DevCalibration
from speakertrip.scoring.enrolment import ENROLMENT_SCORINGS, speaker_scores

CUTS = (1.0, 2.0, 4.0, None)  # seconds kept from the start of a test utterance; None: all of it
DEV_SPEAKERS, DEV_SEED = 64, 7  # fresh synthetic speakers for the dev list: a seed other than the demo's (0)


def cut_name(seconds: float | None) -> str:
    return "full" if seconds is None else f"{seconds:g}s"


def write_cuts(manifest: Path, out: Path, rate: int) -> tuple[list[str], list[str], dict[str, float]]:
    """Write every utterance of ``manifest`` at every cut under ``out``; keys (relative paths) per
    (utterance, cut) in utterance-major order, speakers per utterance, seconds per key."""
    keys, speakers, seconds = [], [], {}
    for utterance in read_manifest(manifest):
        audio = load_audio(utterance.path, rate)
        speakers.append(utterance.spk_id)
        for cut in CUTS:
            piece = audio if cut is None else audio[:int(cut * rate)]
            key = f"{Path(utterance.utt_id).with_suffix('')}_{cut_name(cut)}.wav"
            (out / key).parent.mkdir(parents=True, exist_ok=True)
            sf.write(out / key, piece, rate, subtype="PCM_16")
            keys.append(key)
            seconds[key] = len(piece) / rate
    return keys, speakers, seconds


def all_pairs(speakers: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every ordered pair of distinct utterances (i, j): enrol i full, test j at every cut.

    Returns enrolment rows, test rows (into the utterance-major key list) and labels."""
    count, cuts = len(speakers), len(CUTS)
    enroll, test = np.meshgrid(np.arange(count), np.arange(count), indexing="ij")
    keep = enroll != test
    enroll, test = enroll[keep], test[keep]
    spk = np.asarray(speakers)
    labels = np.repeat(spk[enroll] == spk[test], cuts)
    enroll_rows = np.repeat(enroll * cuts + cuts - 1, cuts)
    test_rows = (test[:, None] * cuts + np.arange(cuts)).reshape(-1)
    return enroll_rows, test_rows, labels


def write_trials(path: Path, keys: list[str], enroll: np.ndarray, test: np.ndarray, labels: np.ndarray) -> None:
    names = np.array(["nontarget", "target"])[labels.astype(int)]
    path.write_text("".join(f"{keys[e]} {keys[t]} {n}\n" for e, t, n in zip(enroll, test, names)))


def check(value: float, low: float | None, high: float | None) -> str:
    ok = (low is None or value >= low) and (high is None or value <= high)
    return "PASS" if ok else "FAIL"


def enrolment_table(embeddings: np.ndarray, speakers: list[str], draws: int, dev: DevCalibration,
                    seed: int = 0) -> list[tuple]:
    """Rows (n, method, EER, minDCF, Cllr of ``dev``'s plain LLRs, trials) for n in 1, 3, 10 enrolment utterances."""
    cuts = len(CUTS)
    full = embeddings[cuts - 1::cuts]
    spk = np.asarray(speakers)
    names = sorted(set(speakers))
    rng = np.random.default_rng(seed)
    rows = []
    fewest = min(int(np.count_nonzero(spk == name)) for name in names)
    for n in (n for n in (1, 3, 10) if n < fewest):
        scores: dict[str, list] = {method: [] for method in ENROLMENT_SCORINGS}
        labels = []
        for _ in range(draws):
            chosen = np.concatenate([rng.choice(np.flatnonzero(spk == name), n, replace=False) for name in names])
            owner = np.repeat(np.arange(len(names)), n)
            tests = np.setdiff1d(np.arange(len(speakers)), chosen)  # utterances enrolled by nobody
            test_rows = (tests[:, None] * cuts + np.arange(cuts)).reshape(-1)
            truth = spk[tests].repeat(cuts)[:, None] == np.asarray(names)[None]
            for method in ENROLMENT_SCORINGS:
                scores[method].append(speaker_scores(full[chosen], owner, embeddings[test_rows], method,
                                                     len(names)).reshape(-1))
            labels.append(truth.reshape(-1))
        labels = np.concatenate(labels)
        for method in ENROLMENT_SCORINGS:
            values = np.concatenate(scores[method])
            rows.append((n, method, scoring.eer(values, labels), scoring.min_dcf(values, labels, 0.01),
                         scoring.cllr(dev.llr(values), labels), len(values)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=Path("demo_out"),
                        help="a `speakertrip demo` output folder, made there when needed and missing")
    parser.add_argument("--model", type=Path, help="default DEMO/exp/model")
    parser.add_argument("--data", type=Path, help="holds dev.jsonl and test.jsonl (default DEMO/synth/data)")
    parser.add_argument("--draws", type=int, default=20, help="random enrolment draws per size")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    if args.model is None or args.data is None:
        args.model, args.data = args.model or args.demo / "exp" / "model", args.data or args.demo / "synth" / "data"
        if not (args.model.exists() and (args.data / "test.jsonl").exists()):
            print(f"no demo run in {args.demo}: running `speakertrip demo --out {args.demo}` (minutes on a CPU)",
                  flush=True)
            subprocess.run([sys.executable, "-m", "speakertrip", "demo", "--out", str(args.demo)], check=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_calibration_"))
    model = st.load_model(args.model)
    rate = model.sample_rate

    # 1. a mixed-duration dev list from unseen training-language speakers, calibrated through the CLI
    extra = work / "dev_synth"
    if not (extra / "data" / "train.jsonl").is_file():
        assert cli(["prepare", "synth", "--out", str(extra), "--speakers", str(DEV_SPEAKERS + 2),
                    "--test-speakers", "2", "--seed", str(DEV_SEED)]) == 0
    dev_keys, dev_speakers = [], []
    for name, manifest in (("demo_dev", args.data / "dev.jsonl"), ("synth_dev", extra / "data" / "train.jsonl")):
        keys, speakers, _ = write_cuts(manifest, work / "dev" / name, rate)
        dev_keys += [f"{name}/{key}" for key in keys]
        dev_speakers += [f"{name}/{speaker}" for speaker in speakers]
    enroll, test, labels = all_pairs(dev_speakers)
    rng = np.random.default_rng(0)
    pairs = len(labels) // len(CUTS)
    pick = np.arange(pairs) * len(CUTS) + rng.integers(len(CUTS), size=pairs)  # one random cut per pair
    pick = pick[labels[pick] | (rng.random(pairs) < 0.5)]
    enroll, test, labels = enroll[pick], test[pick], labels[pick]
    write_trials(work / "dev_trials.txt", dev_keys, enroll, test, labels)
    print(f"dev list: {len(set(dev_speakers))} speakers (8 demo dev + {DEV_SPEAKERS} unseen, training languages), "
          f"{len(labels)} trials ({labels.sum()} targets), tests cut to {', '.join(cut_name(c) for c in CUTS)}")
    calibrated = work / "model_calibrated"
    status = cli(["calibrate", "--model", str(args.model), "--trials", str(work / "dev_trials.txt"),
                  "--data", str(work / "dev"), "--out", str(calibrated)])
    assert status == 0, "speakertrip calibrate --model failed"

    # 2. held-out speakers, all ordered pairs, tests at every cut
    test_keys, test_speakers, seconds = write_cuts(args.data / "test.jsonl", work / "test", rate)
    embeddings = model.embed_batch([work / "test" / key for key in test_keys])
    enroll, test, labels = all_pairs(test_speakers)
    scores = np.einsum("nd,nd->n", embeddings[enroll], embeddings[test]).astype(np.float64)
    enroll_seconds = np.array([seconds[test_keys[i]] for i in enroll])
    test_seconds = np.array([seconds[test_keys[i]] for i in test])
    nontargets = scores[~labels]
    print(f"held-out: {len(set(test_speakers))} speakers, {len(labels)} trials ({labels.sum()} targets, "
          f"{(~labels).sum()} non-targets), EER {100 * scoring.eer(scores, labels):.2f} %\n")

    dev = DevCalibration.of_model(st.load_model(calibrated).evaluation)
    store = work / "speakers.db"
    print(f"{'operating point':<34} {'realised FAR':>12}  {'target':<16} {'FRR':>7}  result")
    for far, low, high in ((0.01, 0.005, 0.02), (0.001, 0.0003, 0.003)):
        threshold = st.Verifier(calibrated, store=store, far=far).threshold
        realised = float(np.mean(nontargets >= threshold))
        frr = float(np.mean(scores[labels] < threshold))
        print(f"{'far=' + format(far, 'g') + f' (threshold {threshold:.4f})':<34} {100 * realised:>11.3f}%  "
              f"[{100 * low:g} %, {100 * high:g} %]{'':<3} {100 * frr:>6.2f}%  {check(realised, low, high)}")
    original = DevCalibration.of_model(model.evaluation)
    if original is not None:
        threshold = original.scores.threshold_for_far(0.01)
        print(f"  reference, the calibration fitted in training ({original.trials} dev trials of 8 speakers, full "
              f"length): far=0.01 realises {100 * np.mean(nontargets >= threshold):.3f} %, actual Cllr "
              f"{scoring.cllr(original.llr(scores), labels) / scoring.min_cllr(scores, labels):.3f} x minCllr")

    min_cllr = scoring.min_cllr(scores, labels)
    plain = scoring.cllr(dev.llr(scores), labels)
    quality = scoring.cllr(dev.llr(scores, enroll_seconds, test_seconds), labels)
    test_only = scoring.cllr(dev.llr(scores, test_seconds, test_seconds), labels)
    print(f"\n{'calibration (fitted on the dev list)':<44} {'Cllr':>7} {'/ minCllr':>9}  target")
    print(f"{'minCllr of the held-out cosine scores':<44} {min_cllr:>7.4f}")
    print(f"{'plain: llr = a*s + b':<44} {plain:>7.4f} {plain / min_cllr:>9.3f}  <= 1.15  {check(plain / min_cllr, None, 1.15)}")
    print(f"{'duration-aware (both sides)':<44} {quality:>7.4f} {quality / min_cllr:>9.3f}  <= 1.15  "
          f"{check(quality / min_cllr, None, 1.15)}")
    print(f"{'duration-aware (test side only, as Verifier)':<44} {test_only:>7.4f} {test_only / min_cllr:>9.3f}")
    print(f"{'duration-aware beats plain':<44} {plain - quality:>+7.4f} bits{'':<6}> 0   {check(plain - quality, 1e-9, None)}")
    print(f"\n{'by test duration':<12} {'trials':>7} {'EER %':>6} {'minCllr':>8} {'Cllr plain':>10} {'Cllr dur.':>9}")
    cut_of_row = np.tile(np.arange(len(CUTS)), len(test) // len(CUTS))
    for index, cut in enumerate(CUTS):
        rows = cut_of_row == index
        s, l = scores[rows], labels[rows]
        print(f"{cut_name(cut):<12} {rows.sum():>7} {100 * scoring.eer(s, l):>6.2f} {scoring.min_cllr(s, l):>8.4f} "
              f"{scoring.cllr(dev.llr(s), l):>10.4f} "
              f"{scoring.cllr(dev.llr(s, enroll_seconds[rows], test_seconds[rows]), l):>9.4f}")

    print(f"\nenrolment with several utterances: held-out speakers, {args.draws} random draws per size, tests = every "
          "utterance nobody enrolled, at every cut")
    print(f"{'utterances':>10}  {'method':<9} {'EER %':>6} {'minDCF(0.01)':>12} {'Cllr (dev cal.)':>15} {'trials':>8}")
    table = enrolment_table(embeddings, test_speakers, args.draws, dev)
    for n, method, eer, dcf, cllr, count in table:
        print(f"{n:>10}  {method:<9} {100 * eer:>6.2f} {dcf:>12.4f} {cllr:>15.4f} {count:>8}")
    for n in (3, 10):
        best = min((row for row in table if row[0] == n), key=lambda row: row[2])
        print(f"best at {n} utterances by EER: {best[1]}")


if __name__ == "__main__":
    main()
