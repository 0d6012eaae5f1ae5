"""Benchmark: speakertrip's resampling (SciPy polyphase, bounded ratio) against torchaudio's, side by side.

For each source rate, the same signals (speech-like, ``--seconds`` long, or ``--corpus`` files of real voices
taken to that rate with soxr's very-high-quality resampler so that neither side is favoured) go to 16 kHz
through ``torchaudio.functional.resample`` (what speakertrip used before) and
``speakertrip.audio.resample``. Printed per rate: the reduced ratio, the largest sample difference and the
relative RMS difference (the answers must agree within 0.5 %; measured below 0.2 %), the time of each
(median of ``--repeats``, the filter built on every call as a request does) and their ratio, and how far
an embedding moves: the cosine distance between the two paths' embeddings under a fixed randomly
initialised ECAPA (``speakertrip.testing.tiny_model``) or the trained ``--model``, next to the distance
between two of the signals (other speakers).

Co-prime rates (44101, 8001) are timed for speakertrip only unless ``--coprime-peer`` is given:
torchaudio then builds a table of about 16000 x rate values (44101 Hz: about 100 s on 2 cores).

    .venv/bin/python scripts/bench_resample.py
    .venv/bin/python scripts/bench_resample.py --corpus REALVOICES/wav --files 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import speakertrip as st
from speakertrip.audio import load_audio, resample
from speakertrip.audio.io import resampling_ratio
from speakertrip.testing import speech_like, tiny_model

COMMON = (8000, 11025, 22050, 32000, 44100, 48000, 96000)
COPRIME = (44101, 8001)


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def sources(args: argparse.Namespace) -> list[np.ndarray]:
    """16 kHz signals: real voices from ``--corpus`` (one file per speaker folder first), or speech-like ones."""
    if args.corpus:
        paths = sorted(Path(args.corpus).rglob("*.wav"))
        by_speaker: dict[str, list[Path]] = {}
        for path in paths:
            by_speaker.setdefault(path.relative_to(args.corpus).parts[0], []).append(path)
        chosen = [path for group in zip(*by_speaker.values()) for path in group][:args.files]
        return [load_audio(path, 16000)[:int(args.seconds * 16000)] for path in chosen]
    return [speech_like(n % 5, args.seconds, 16000, seed=n) for n in range(args.files)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--corpus", help="a VoxCeleb-layout folder of 16 kHz real voices (e.g. realvoices_dev's wav/)")
    parser.add_argument("--coprime-peer", action="store_true", help="also time torchaudio on co-prime rates")
    parser.add_argument("--model", help="a trained model for the embedding distances (default: a random tiny ECAPA)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import soxr
    import torchaudio.functional

    signals = sources(args)
    model = st.load_model(args.model) if args.model else tiny_model(seed=0).eval()
    embed = lambda wave: model.embed(wave, sample_rate=16000)  # noqa: E731
    apart = [1 - float(embed(a) @ embed(b)) for a, b in zip(signals[::2], signals[1::2])]
    kind = "real voices, one per speaker" if args.corpus else "speech-like"
    print(f"{len(signals)} signals of {args.seconds:g} s ({kind}), {args.threads} thread(s); cosine distance between the embeddings of two of them (other speakers): "
          f"median {np.median(apart):.4f}")
    print(f"{'rate':>6} {'up/down':>11} {'max |diff|':>10} {'rel RMS':>8} {'torchaudio':>11} {'speakertrip':>11} "
          f"{'ratio':>6} {'emb dist':>9}")
    for rate in COMMON + COPRIME:
        inputs = [soxr.resample(signal, 16000, rate, quality="VHQ").astype(np.float32) for signal in signals]
        ours = [resample(x, rate, 16000) for x in inputs]
        mine = median_seconds(lambda: [resample(x, rate, 16000) for x in inputs], args.repeats) / len(inputs)
        up, down = resampling_ratio(rate, 16000)
        if rate in COPRIME and not args.coprime_peer:
            print(f"{rate:>6} {f'{up}/{down}':>11} {'':>10} {'':>8} {'(skipped)':>11} {1000 * mine:>9.2f}ms")
            continue
        peer = [torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy() for x in inputs]
        theirs = median_seconds(lambda: [torchaudio.functional.resample(torch.from_numpy(x), rate, 16000)
                                         for x in inputs], 1 if rate in COPRIME else args.repeats) / len(inputs)
        assert all(len(a) == len(b) for a, b in zip(ours, peer)), "output lengths differ"
        diff = max(float(np.abs(a - b).max()) for a, b in zip(ours, peer))
        rel = float(np.sqrt(sum(np.sum((a - b) ** 2) for a, b in zip(ours, peer)) / sum(np.sum(b ** 2) for b in peer)))
        assert rel < 0.005, f"{rate} Hz: relative RMS difference {rel:.4f} over 0.5 %"
        moved = max(1 - float(embed(a) @ embed(b)) for a, b in zip(ours, peer))
        print(f"{rate:>6} {f'{up}/{down}':>11} {diff:>10.5f} {100 * rel:>7.3f}% {1000 * theirs:>9.2f}ms "
              f"{1000 * mine:>9.2f}ms {theirs / mine:>5.1f}x {moved:>9.2e}")


if __name__ == "__main__":
    main()
