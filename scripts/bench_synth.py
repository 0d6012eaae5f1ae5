"""Synthetic corpus: generation throughput, worker-count determinism and a non-learned baseline EER.

There is no peer corpus generator to race, so the script compares itself across worker counts
(same seed → byte-identical trees) and scores the held-out trial list with two non-learned
speaker representations (utterance-mean log-mel and MFCC mean+std, cosine), computed with
librosa, to show that the speakers are distinct but not trivially so.

    .venv/bin/python scripts/bench_synth.py [--speakers 50 --test-speakers 10 --utterances 16]
"""

from __future__ import annotations

import argparse
import filecmp
import tempfile
import time
from pathlib import Path

import librosa
import numpy as np
import soundfile as sf
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
    trials = [line.split() for line in (root / "veri_test2.txt").read_text().splitlines()]
    keys = sorted({key for _, a, b in trials for key in (a, b)})
    mel, mfcc = {}, {}
    for key in keys:
        audio, rate = sf.read(root / "wav" / key, dtype="float32")
        spectrum = librosa.feature.melspectrogram(y=audio, sr=rate, n_fft=400, hop_length=160, n_mels=80)
        log_mel = np.log(spectrum + 1e-6)
        mel[key] = log_mel.mean(axis=1)
        coefficients = librosa.feature.mfcc(S=librosa.power_to_db(spectrum), n_mfcc=20)
        mfcc[key] = np.concatenate([coefficients.mean(axis=1), coefficients.std(axis=1)])
    labels = np.array([int(label) for label, _, _ in trials])
    results = {}
    for name, table in (("mean log-mel, cosine", mel), ("MFCC mean+std, cosine", mfcc)):
        vectors = {k: v / np.linalg.norm(v) for k, v in table.items()}
        scores = np.array([vectors[a] @ vectors[b] for _, a, b in trials])
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
