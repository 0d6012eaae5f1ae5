"""Calibration and operating points of a model, checked on held-out speakers and across a domain shift; several
enrolment utterances compared.

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
4. With ``--real DIR`` (the output of the realvoices_dev corpus builder: 39 real people's voices, 4 sessions of 6
   utterances, gain and noise per session), the eSpeak -> real-voice shift. Every real speaker enrols its first
   session in a store; impostor trials are every enrolled speaker against the other sessions of every other
   speaker. ``Verifier(calibrated, far=...)`` with and without ``adapt=True`` (the store's speakers against each
   other as in-domain impostors, no labels). Once with all 39 enrolled, once with 20 enrolled and the other 19
   as impostors who never enrolled.
5. Also with ``--real``: ``speakertrip calibrate --model M --data DIR`` (trial list generated over the folder) on
   10 real speakers drawn at random (``--draws-10`` draws), realised FAR on the other 29 (every pair of their
   utterances), and whether it falls inside the calibration's own interval of the rate on new speakers; with
   ``--espeak-domain DIR`` the same on other eSpeak speakers through other channels. Ten draws say little about
   a share, so the same is then simulated in numpy over ``--simulated`` draws (the trial list ``calibrate``
   generates, the threshold ``calibrate`` records, no bootstrap) with 10 and 20 calibration speakers, beside
   the threshold set on every speaker of the domain (what the test speakers' own spread allows).

``--calibrated WORK/model_calibrated --parts shift ten`` reruns parts of an earlier run without part 1.

Realised false-accept rates carry 95 % speaker-bootstrap intervals (speakers resampled, both sides of a
non-target pair: :func:`speakertrip.evaluation.confidence.far_interval`). Every figure is printed beside its
target. Run (a few minutes on 2 CPU cores; the dev corpus is made once):
``PYTHONPATH=. .venv/bin/python scripts/bench_calibration.py [--demo DEMO | --model M --data DATA_DIR] [--real DIR]``
with DATA_DIR holding ``dev.jsonl`` and ``test.jsonl``. Both default to a ``speakertrip demo`` run in DEMO
(default ``demo_out``, where ``make demo`` writes: ``exp/model`` and ``synth/data``); when it is missing,
``speakertrip demo --out DEMO`` makes it first (minutes on a CPU).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import soundfile as sf

import speakertrip as st
from speakertrip import scoring
from speakertrip.audio import load_audio
from speakertrip.cli import main as cli
from speakertrip.data.items import read_items
from speakertrip.data.manifest import read_manifest
from speakertrip.data.split import make_trials
from speakertrip.data.trials import read_trials
from speakertrip.evaluation.confidence import far_interval
from speakertrip.evaluation.dev_calibration import DevCalibration
from speakertrip.evaluation.dev_scores import MAX_GENERATED_TRIALS
from speakertrip.evaluation.score_summary import OperatingPointSummary
from speakertrip.scoring.enrolment import ENROLMENT_SCORINGS, speaker_scores

CUTS = (1.0, 2.0, 4.0, None)  # seconds kept from the start of a test utterance; None: all of it
DEV_SPEAKERS, DEV_SEED = 64, 7  # fresh synthetic speakers for the dev list: a seed other than the demo's (0)
TARGETS = {0.01: (0.005, 0.02), 0.001: (0.0005, 0.002)}  # realised FAR within 2x of the asked rate
IN_DOMAIN = {0.01: (0.005, 0.02), 0.001: (0.0003, 0.003)}  # held-out speakers of the training domain
PARTS = ("in-domain", "shift", "ten", "none")


def cut_name(seconds: float | None) -> str:
    return "full" if seconds is None else f"{seconds:g}s"


def write_cuts(manifest: Path, out: Path, rate: int, prefix: str = "") -> tuple[list[str], list[str], dict[str, float]]:
    """Write every utterance of ``manifest`` at every cut under ``out``; keys (relative paths, VoxCeleb layout, the
    speaker folder named ``prefix + speaker``) per (utterance, cut) in utterance-major order, speakers per
    utterance, seconds per key."""
    keys, speakers, seconds = [], [], {}
    for utterance in read_manifest(manifest):
        audio = load_audio(utterance.path, rate)
        speakers.append(prefix + utterance.spk_id)
        for cut in CUTS:
            piece = audio if cut is None else audio[:int(cut * rate)]
            key = f"{prefix}{Path(utterance.utt_id).with_suffix('')}_{cut_name(cut)}.wav"
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


FAR_HEADER = (f"{'setting':<54} {'asked':>6} {'threshold':>9} {'realised FAR':>12} {'95 % interval':>17}  "
              f"{'target':<14} result")


def far_rows(setting: str, nontargets: np.ndarray, enroll_speakers: np.ndarray, test_speakers: np.ndarray,
             thresholds: dict[float, float], targets: dict[float, tuple[float, float]] | None = TARGETS
             ) -> list[tuple[float, float, float]]:
    """Print the realised FAR of each asked rate's threshold on ``nontargets``, with its speaker-bootstrap interval;
    returns ``(far, low, high)`` per asked rate."""
    found = far_interval(nontargets, enroll_speakers, test_speakers, list(thresholds.values()))
    for (asked, threshold), (far, low, high) in zip(thresholds.items(), found):
        bounds = (targets or {}).get(asked)
        target = "" if bounds is None else f"[{100 * bounds[0]:g}, {100 * bounds[1]:g}] %"
        result = "" if bounds is None else check(far, *bounds)
        print(f"{setting:<54} {asked:>6g} {threshold:>9.4f} {100 * far:>11.3f}% "
              f"{f'{100 * low:.2f} .. {100 * high:.2f} %':>17}  {target:<14} {result}")
    return found


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
    parser.add_argument("--real", type=Path, help="real-voice dev corpus (the realvoices_dev corpus builder's output, "
                        "holding wav/): the domain-shift parts run only with it")
    parser.add_argument("--draws", type=int, default=20, help="random enrolment draws per size")
    parser.add_argument("--draws-10", type=int, default=5, help="random draws of the 10 real calibration speakers")
    parser.add_argument("--simulated", type=int, default=200, help="simulated draws of calibration speakers (part 5)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--espeak-domain", type=Path, help="part 5 also on this VoxCeleb-layout folder: other eSpeak "
                        "speakers through other channels (`speakertrip prepare synth --seed 11 --speakers 42 "
                        "--test-speakers 40`, its corpus/wav)")
    parser.add_argument("--calibrated", type=Path, help="the calibrated copy of an earlier run (WORK/model_calibrated): "
                        "part 1 is not run again")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="which parts after the calibration (1) to run: in-domain (2, 3), shift (4), ten (5); "
                             "none: only the calibration (default: all)")
    args = parser.parse_args()
    if args.model is None or args.data is None:
        args.model, args.data = args.model or args.demo / "exp" / "model", args.data or args.demo / "synth" / "data"
        if not (args.model.exists() and (args.data / "test.jsonl").exists()):
            print(f"no demo run in {args.demo}: running `speakertrip demo --out {args.demo}` (minutes on a CPU)",
                  flush=True)
            subprocess.run([sys.executable, "-m", "speakertrip", "demo", "--out", str(args.demo)], check=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_calibration_"))
    model = st.load_model(args.model)
    calibrated = args.calibrated or calibrate_on_synthetic_speakers(args, model, work)
    if "in-domain" in args.parts:
        in_domain(args, model, calibrated, work)
    if args.real is None:
        print("\nno --real: the eSpeak -> real-voice shift and the 10-speaker calibration are not measured")
        return
    if "shift" in args.parts:
        real_voice_shift(args.real, model, calibrated, work)
    if "ten" in args.parts:
        calibrate_on_ten(args.real / "wav", "real", args.model, model, work, args.draws_10, args.simulated)
        if args.espeak_domain is not None:
            calibrate_on_ten(args.espeak_domain, "other-channel eSpeak", args.model, model, work, args.draws_10,
                             args.simulated)


def in_domain(args: argparse.Namespace, model: st.EmbeddingModel, calibrated: Path, work: Path) -> None:
    """2 and 3: held-out speakers of the training domain, then several enrolment utterances."""
    embeddings, test_speakers = held_out(args, model, calibrated, work)
    dev = DevCalibration.of_model(st.load_model(calibrated).evaluation)
    print(f"\nenrolment with several utterances: held-out speakers, {args.draws} random draws per size, tests = every "
          "utterance nobody enrolled, at every cut")
    print(f"{'utterances':>10}  {'method':<9} {'EER %':>6} {'minDCF(0.01)':>12} {'Cllr (dev cal.)':>15} {'trials':>8}")
    table = enrolment_table(embeddings, test_speakers, args.draws, dev)
    for n, method, eer, dcf, cllr, count in table:
        print(f"{n:>10}  {method:<9} {100 * eer:>6.2f} {dcf:>12.4f} {cllr:>15.4f} {count:>8}")
    for n in (3, 10):
        best = min((row for row in table if row[0] == n), key=lambda row: row[2])
        print(f"best at {n} utterances by EER: {best[1]}")


def calibrate_on_synthetic_speakers(args: argparse.Namespace, model: st.EmbeddingModel, work: Path) -> Path:
    """1. A mixed-duration dev list from unseen training-language speakers, calibrated through the CLI."""
    extra = work / "dev_synth"
    if not (extra / "data" / "train.jsonl").is_file():
        # a process of its own: each per-speaker worker re-imports the calling script's __main__, and this
        # one imports torch (seconds per speaker); `python -m speakertrip` imports little
        subprocess.run([sys.executable, "-m", "speakertrip", "prepare", "synth", "--out", str(extra), "--speakers",
                        str(DEV_SPEAKERS + 2), "--test-speakers", "2", "--seed", str(DEV_SEED)], check=True)
    dev_keys, dev_speakers = [], []
    for name, manifest in (("demo_dev", args.data / "dev.jsonl"), ("synth_dev", extra / "data" / "train.jsonl")):
        keys, speakers, _ = write_cuts(manifest, work / "dev", model.sample_rate, prefix=f"{name}-")
        dev_keys += keys
        dev_speakers += speakers
    enroll, test, labels = all_pairs(dev_speakers)
    rng = np.random.default_rng(0)
    pairs = len(labels) // len(CUTS)
    pick = np.arange(pairs) * len(CUTS) + rng.integers(len(CUTS), size=pairs)  # one random cut per pair
    pick = pick[labels[pick] | (rng.random(pairs) < 0.5)]
    enroll, test, labels = enroll[pick], test[pick], labels[pick]
    write_trials(work / "dev_trials.txt", dev_keys, enroll, test, labels)
    demo_dev = len({speaker for speaker in dev_speakers if speaker.startswith("demo_dev-")})
    print(f"dev list: {len(set(dev_speakers))} speakers ({demo_dev} demo dev + {DEV_SPEAKERS} unseen, training "
          f"languages), {len(labels)} trials ({labels.sum()} targets), tests cut to "
          f"{', '.join(cut_name(c) for c in CUTS)}")
    calibrated = work / "model_calibrated"
    shutil.rmtree(calibrated, ignore_errors=True)  # calibrate writes only into a new folder
    status = cli(["calibrate", "--model", str(args.model), "--trials", str(work / "dev_trials.txt"),
                  "--data", str(work / "dev"), "--out", str(calibrated)])
    assert status == 0, "speakertrip calibrate --model failed"
    return calibrated


def held_out(args: argparse.Namespace, model: st.EmbeddingModel, calibrated: Path,
             work: Path) -> tuple[np.ndarray, list[str]]:
    """2. Held-out speakers, all ordered pairs, tests at every cut: realised FAR in-domain, Cllr by duration.
    Returns the held-out embeddings (utterance-major, every cut) and the speaker of each utterance."""
    test_keys, test_speakers, seconds = write_cuts(args.data / "test.jsonl", work / "test", model.sample_rate)
    embeddings = model.embed_batch([work / "test" / key for key in test_keys])
    enroll, test, labels = all_pairs(test_speakers)
    scores = np.einsum("nd,nd->n", embeddings[enroll], embeddings[test]).astype(np.float64)
    enroll_seconds = np.array([seconds[test_keys[i]] for i in enroll])
    test_seconds = np.array([seconds[test_keys[i]] for i in test])
    spk = np.asarray(test_speakers)
    enroll_spk, test_spk = spk[enroll // len(CUTS)], spk[test // len(CUTS)]
    print(f"held-out: {len(set(test_speakers))} speakers, {len(labels)} trials ({labels.sum()} targets, "
          f"{(~labels).sum()} non-targets), EER {100 * scoring.eer(scores, labels):.2f} %\n")

    dev = DevCalibration.of_model(st.load_model(calibrated).evaluation)
    store = work / "speakers.db"
    thresholds = {far: st.Verifier(calibrated, store=store, far=far).threshold for far in TARGETS}
    print(FAR_HEADER)
    far_rows("in-domain: held-out eSpeak speakers, every cut", scores[~labels], enroll_spk[~labels],
             test_spk[~labels], thresholds, IN_DOMAIN)
    for far, threshold in thresholds.items():
        print(f"  far={far:g}: FRR {100 * np.mean(scores[labels] < threshold):.2f} %; the calibration's own "
              f"interval {describe(dev, far)}")
    original = DevCalibration.of_model(model.evaluation)
    if original is not None:
        demo_list = read_trials(args.data / "trials" / "veri_test2.txt", dedupe=True)
        keys = sorted(set(demo_list.enroll) | set(demo_list.test))
        paths = {utterance.utt_id: utterance.path for utterance in read_manifest(args.data / "test.jsonl")}
        listed = dict(zip(keys, model.embed_batch([paths[key] for key in keys])))
        demo_scores = np.array([float(listed[e] @ listed[t]) for e, t in zip(demo_list.enroll, demo_list.test)])
        non = ~demo_list.labels.astype(bool)
        first = np.array([key.partition("/")[0] for key in demo_list.enroll])
        second = np.array([key.partition("/")[0] for key in demo_list.test])
        speakers = original.confidence.speakers if original.confidence is not None else "?"
        print(f"the demo's own operating points (training's calibration: {original.trials} dev trials, {speakers} "
              f"speakers), its held-out list ({len(demo_list.labels)} trials):")
        far_rows("  demo calibration, demo held-out list", demo_scores[non], first[non], second[non],
                 {far: original.scores.threshold_for_far(far) for far in TARGETS
                  if far * original.scores.nontargets.count >= 1})
        far_rows("  demo calibration, held-out every cut", scores[~labels], enroll_spk[~labels], test_spk[~labels],
                 {far: original.scores.threshold_for_far(far) for far in TARGETS
                  if far * original.scores.nontargets.count >= 1})
        print(f"  actual Cllr of the demo calibration on every cut: "
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
    return embeddings, test_speakers


def describe(calibration: DevCalibration, far: float) -> str:
    """The recorded speaker-bootstrap interval of the realised FAR at ``far``, and its speaker counts."""
    point = None if calibration.confidence is None else calibration.confidence.point("far", far)
    if point is None:
        return "not recorded"
    low, high = point.expected_interval
    return (f"{100 * low:.2f} .. {100 * high:.2f} % on new speakers (the bootstrap rate interval alone: "
            f"{100 * point.rate_interval[0]:.2f} .. {100 * point.rate_interval[1]:.2f} %) "
            f"({calibration.confidence.speakers} dev speakers; {point.errors} dev false accepts from "
            f"{point.error_pairs} speaker pairs)")


def real_voice_shift(real: Path, model: st.EmbeddingModel, calibrated: Path, work: Path) -> None:
    """4. Calibrated on eSpeak, verified on real voices: first session enrolled, the others tested."""
    found = read_items(real / "wav")
    sessions = np.array([key.split("/")[1] for key in found.keys])
    speakers = np.asarray(found.speakers)
    first = sessions == sorted(set(sessions))[0]
    tests = np.flatnonzero(~first)
    test_embeddings = model.embed_batch([found.items[i] for i in tests])
    names = sorted(set(found.speakers))
    print(f"\neSpeak -> real voices: {len(names)} real speakers, first session enrolled ({first.sum()} utterances), "
          f"{len(tests)} test utterances of the other sessions; model calibrated on the eSpeak dev list above")
    print(FAR_HEADER)
    rng = np.random.default_rng(0)
    for label, enrolled in (("all enrolled", names), ("half enrolled", sorted(rng.choice(names, len(names) // 2,
                                                                                      replace=False).tolist()))):
        store = work / f"real_{len(enrolled)}.db"
        verifier = st.Verifier(calibrated, store=store)
        for name in enrolled:
            verifier.enroll(name, [found.items[i] for i in np.flatnonzero(first & (speakers == name))], replace=True)
        stored, centroids = verifier.store.centroids()
        scores = test_embeddings @ centroids.T  # (tests, enrolled)
        impostor = speakers[tests][:, None] != np.asarray(stored)[None, :]
        if label == "half enrolled":  # impostors who never enrolled
            impostor &= ~np.isin(speakers[tests], stored)[:, None]
        claimed = np.broadcast_to(np.asarray(stored)[None, :], scores.shape)[impostor]
        speaker_of_test = np.broadcast_to(speakers[tests][:, None], scores.shape)[impostor]
        for adapt in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                thresholds = {far: st.Verifier(calibrated, store=store, far=far, adapt=adapt).threshold
                              for far in TARGETS}
            impostors = "never-enrolled impostors" if label == "half enrolled" else "enrolled impostors"
            far_rows(f"{len(enrolled)} enrolled, {impostors}, {'adapted' if adapt else 'not adapted'}",
                     scores[impostor], claimed, speaker_of_test, thresholds, TARGETS if adapt else None)


def calibrate_on_ten(wav: Path, domain: str, model_dir: Path, model: st.EmbeddingModel, work: Path, draws: int,
                     simulated: int, count: int = 10) -> None:
    """5. `speakertrip calibrate` on ``count`` speakers of the VoxCeleb-layout folder ``wav`` (trial list generated
    over them), realised FAR on its other speakers (every pair of their utterances); then ``simulated`` draws."""
    found = read_items(wav)
    speakers = np.asarray(found.speakers)
    names = sorted(set(found.speakers))
    embeddings = model.embed_batch(found.items)
    print(f"\n`speakertrip calibrate --model M --data DIR` on {count} {domain} speakers (no --trials: generated over "
          f"DIR), realised FAR on the other {len(names) - count} (every pair of their utterances)")
    print(FAR_HEADER)
    rng = np.random.default_rng(1)
    realised, inside_own = [], {far: [0, 0] for far in TARGETS}  # draws inside: new-speaker interval, rate interval
    for draw in range(draws):
        chosen = sorted(rng.choice(names, count, replace=False).tolist())
        folder = work / f"{domain.replace(' ', '_')}_cal_{draw}"
        for i in np.flatnonzero(np.isin(speakers, chosen)):
            link = folder / found.keys[i]
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(found.items[i], link)
        out = work / f"model_{domain.replace(' ', '_')}_{draw}"
        shutil.rmtree(out, ignore_errors=True)  # calibrate writes only into a new folder
        assert cli(["calibrate", "--model", str(model_dir), "--data", str(folder), "--out", str(out)]) == 0
        calibration = DevCalibration.of_model(st.load_model(out).evaluation)
        others = np.flatnonzero(~np.isin(speakers, chosen))
        enroll, test = np.triu_indices(len(others), 1)
        enroll, test = others[enroll], others[test]
        non = speakers[enroll] != speakers[test]
        scores = np.einsum("nd,nd->n", embeddings[enroll[non]], embeddings[test[non]]).astype(np.float64)
        rates = far_rows(f"calibrated on {count} {domain} speakers, draw {draw + 1}", scores, speakers[enroll[non]],
                         speakers[test[non]], {far: calibration.scores.threshold_for_far(far) for far in TARGETS
                                                if far * calibration.scores.nontargets.count >= 1}, {0.01: TARGETS[0.01]})
        realised.append(rates[0][0])
        print(f"  draw {draw + 1} calibrated on {', '.join(chosen)}")
        for far, (rate, _, _) in zip(TARGETS, rates):
            print(f"  far={far:g}: the calibration's own interval {describe(calibration, far)}")
            point = None if calibration.confidence is None else calibration.confidence.point("far", far)
            if point is not None:
                inside_own[far][0] += point.expected_interval[0] <= rate <= point.expected_interval[1]
                inside_own[far][1] += point.rate_interval[0] <= rate <= point.rate_interval[1]
    low, high = TARGETS[0.01]
    inside = sum(low <= far <= high for far in realised)
    print(f"far=0.01 after calibrating on {count} {domain} speakers: median realised {100 * np.median(realised):.3f} %, "
          f"{inside} of {draws} draws within [{100 * low:g}, {100 * high:g}] %")
    for far, (new, rate) in inside_own.items():
        print(f"far={far:g}: the realised FAR lies inside the calibration's own 95 % interval on new speakers in {new} "
              f"of {draws} draws (inside the bootstrap rate interval alone: {rate})")
    simulate_calibrations(embeddings, found.keys, speakers, domain, simulated)


def simulate_calibrations(embeddings: np.ndarray, keys: list[str], speakers: np.ndarray, domain: str, draws: int,
                          seed: int = 2) -> None:
    """Part 5 in numpy: ``draws`` random sets of 10 and of 20 calibration speakers; for each the trial list
    ``calibrate --data`` generates over them and the threshold it records (the dev summary's, as the Verifier reads
    it), realised on every pair of the other speakers. Also the threshold set on every speaker of the domain."""
    names = sorted(set(speakers.tolist()))
    row = {key: i for i, key in enumerate(keys)}
    scores = embeddings @ embeddings.T

    def nontargets(chosen: np.ndarray) -> np.ndarray:
        rows = np.flatnonzero(chosen)
        first, second = np.triu_indices(len(rows), 1)
        first, second = rows[first], rows[second]
        return scores[first, second][speakers[first] != speakers[second]].astype(np.float64)

    def thresholds(chosen: np.ndarray) -> dict[float, float]:
        trials = make_trials({keys[i]: speakers[i] for i in np.flatnonzero(chosen)}, MAX_GENERATED_TRIALS, 0,
                             cross_session=True)
        labels, first, second = (np.array(column) for column in zip(*trials))
        first, second = (np.array([row[key] for key in column]) for column in (first, second))
        summary = OperatingPointSummary.from_scores(scores[first, second].astype(np.float64), labels.astype(bool))
        return {far: summary.threshold_for_far(far) for far in TARGETS}

    everyone = thresholds(np.ones(len(keys), bool))
    print(f"simulated: {draws} random draws of {domain} calibration speakers (the trial list and threshold of "
          f"`calibrate --data`), realised FAR on every pair of the other speakers")
    print(f"{'calibration speakers':<40} {'asked':>6} {'median':>8} {'10-90 % of draws':>18}  within 2x of asked")
    rng = np.random.default_rng(seed)
    for count in (10, 20):
        found = {far: [] for far in TARGETS}
        reference = {far: [] for far in TARGETS}
        for _ in range(draws):
            chosen = np.isin(speakers, rng.choice(names, count, replace=False))
            others = np.sort(nontargets(~chosen))
            drawn = thresholds(chosen)
            for far in TARGETS:
                for out, where in ((found, drawn[far]), (reference, everyone[far])):
                    out[far].append(1 - np.searchsorted(others, where, side="left") / len(others))
        for far, (low, high) in TARGETS.items():
            for label, values in ((f"{count} drawn", found[far]),
                                  (f"oracle: all {len(names)}, tests among them", reference[far])):
                values = np.asarray(values)
                share = np.mean((values >= low) & (values <= high))
                print(f"{label:<40} {far:>6g} {100 * np.median(values):>7.3f}% "
                      f"{f'{100 * np.quantile(values, 0.1):.3f} .. {100 * np.quantile(values, 0.9):.3f} %':>18}  "
                      f"{100 * share:.0f} %")


if __name__ == "__main__":
    main()
