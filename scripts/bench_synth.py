"""Synthetic corpus: generation throughput, worker-count determinism and a non-learned baseline EER.

There is no peer corpus generator to race, so the script compares itself across worker counts
(same seed → byte-identical trees) and scores the held-out trial list with representations
computed with librosa and scikit-learn: utterance-mean log-mel and standardised MFCC statistics
(cosine), and an LDA of those statistics fitted on the training speakers. The first should sit
far from 0 % (same-speaker files are not trivially alike), the LDA far below it (speakers are
learnably distinct, and the learning carries over to held-out languages and variants).

    .venv/bin/python scripts/bench_synth.py [--speakers 50 --test-speakers 10 --utterances 16]
"""

from __future__ import annotations

import argparse
import filecmp
import json
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.metrics import roc_curve

from speakertrip.corpora.synth import generate_corpus


def same_tree(a: Path, b: Path) -> bool:
    files_a = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    return files_a == files_b and all(filecmp.cmp(a / f, b / f, shallow=False) for f in files_a)


def equal_error_rate(scores: np.ndarray, labels: np.ndarray) -> float:
    false_accepts, true_accepts, _ = roc_curve(labels, scores)
    misses = 1 - true_accepts
    index = int(np.argmin(np.abs(misses - false_accepts)))
    return float((misses[index] + false_accepts[index]) / 2)


def baseline_eers(root: Path) -> dict[str, float]:
    """EERs on the held-out trial list of three representations that no neural network learnt."""
    held_out = set(json.loads((root / "synth.json").read_text())["test_speakers"])
    keys = sorted(p.relative_to(root / "wav").as_posix() for p in (root / "wav").rglob("*.wav"))
    mel, stats = [], []
    for key in keys:
        audio, rate = sf.read(root / "wav" / key, dtype="float32")
        spectrum = librosa.feature.melspectrogram(y=audio, sr=rate, n_fft=400, hop_length=160, n_mels=80)
        mel.append(np.log(spectrum + 1e-6).mean(axis=1))
        mfcc = librosa.feature.mfcc(S=librosa.power_to_db(spectrum), n_mfcc=30)
        stats.append(np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1), librosa.feature.delta(mfcc).std(axis=1)]))
    speakers = np.array([key.split("/")[0] for key in keys])
    train = ~np.isin(speakers, sorted(held_out))
    stats = np.array(stats)
    stats = (stats - stats[train].mean(axis=0)) / stats[train].std(axis=0)
    lda = LinearDiscriminantAnalysis().fit(stats[train], speakers[train])
    projected = lda.transform(stats)
    tables = {"mean log-mel, cosine": np.array(mel), "MFCC stats standardised, cosine": stats,
              "LDA of MFCC stats fitted on training speakers, cosine": projected - projected[train].mean(axis=0)}
    trials = [line.split() for line in (root / "veri_test2.txt").read_text().splitlines()]
    labels = np.array([int(label) for label, _, _ in trials])
    row = {key: index for index, key in enumerate(keys)}
    results = {}
    for name, vectors in tables.items():
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
        scores = np.array([vectors[row[a]] @ vectors[row[b]] for _, a, b in trials])
        results[name] = equal_error_rate(scores, labels)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speakers", type=int, default=50)
    parser.add_argument("--test-speakers", type=int, default=10)
    parser.add_argument("--utterances", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=4)
    args = parser.parse_args()
    sizes = dict(num_speakers=args.speakers, num_test_speakers=args.test_speakers,
                 utterances_per_speaker=args.utterances, sessions_per_speaker=args.sessions)
    utterances = args.speakers * args.utterances
    with tempfile.TemporaryDirectory() as scratch:
        roots, rows = {}, []
        for workers in (1, 2):
            started = time.perf_counter()
            roots[workers] = generate_corpus(Path(scratch) / f"w{workers}", workers=workers, **sizes)
            seconds = time.perf_counter() - started
            audio = sum(sf.info(p).duration for p in (roots[workers] / "wav").rglob("*.wav"))
            rows.append((workers, seconds, utterances / seconds, audio / seconds, audio / utterances))
        identical = same_tree(roots[1], roots[2])
        eers = baseline_eers(roots[1])
        trials = len((roots[1] / "veri_test2.txt").read_text().splitlines())
    print(f"corpus: {args.speakers} speakers ({args.test_speakers} held out) x {args.utterances} utterances, "
          f"{args.sessions} sessions; {trials} trials")
    print(f"{'workers':>7} {'seconds':>8} {'utt/s':>7} {'x real time':>11} {'mean utt s':>10}")
    for workers, seconds, rate, realtime, mean in rows:
        print(f"{workers:>7} {seconds:>8.2f} {rate:>7.1f} {realtime:>11.0f} {mean:>10.2f}")
    print(f"speed-up 2 workers / 1 worker: {rows[0][1] / rows[1][1]:.2f}x")
    print(f"byte-identical across worker counts: {identical}")
    for name, eer in eers.items():
        print(f"baseline EER ({name}): {100 * eer:.1f} %")
    if not identical:
        raise SystemExit("worker counts gave different files")


if __name__ == "__main__":
    main()
