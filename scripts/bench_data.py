"""Benchmark the data path against the obvious alternatives, in one process on the same inputs.

1. 2 s crops of 8 s 16 kHz wav files: ``read_crop`` (partial int16 read) vs reading the whole
   file with soundfile and slicing (target: >= 3x).
2. Log-mel features of 128 x 3 s on CPU: the batched ``LogMelFrontend`` (kaldi mode, and the
   default mode) vs a loop of ``torchaudio.compliance.kaldi.fbank`` per utterance (target: >= 1x).
3. The training loader (PKSampler + CropDataset + collate, 2 workers) in crops/s, next to a
   voxceleb_trainer-style dataset (header read + whole float read + slice per item)
   (target: >= 300 crops/s).

Run: ``.venv/bin/python scripts/bench_data.py [--files 40] [--crops 400]``
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
from torch.utils.data import DataLoader, Dataset

from speakertrip.audio import read_crop
from speakertrip.data.datasets import CropDataset, collate_crops
from speakertrip.data.manifest import build_utterances
from speakertrip.data.sampler import PKSampler
from speakertrip.features import FeatureConfig, LogMelFrontend

RATE, CROP = 16000, 32000


def best_of(repeats: int, function) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return min(times), result


def write_files(folder: Path, count: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for number in range(count):
        path = folder / f"id{10001 + number % 20}" / f"v{number}" / "00001.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, (rng.standard_normal(8 * RATE) * 3000).astype(np.int16), RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def bench_crops(paths: list[Path], crops: int) -> None:
    rng = np.random.default_rng(1)
    picks = [(paths[i], int(s)) for i, s in zip(rng.integers(0, len(paths), crops), rng.integers(0, 6 * RATE, crops))]
    contenders = {
        "read_crop": lambda: [read_crop(path, start, CROP) for path, start in picks],
        "whole float64 + slice (voxceleb_trainer)": lambda: [sf.read(path)[0][start : start + CROP] for path, start in picks],
        "whole int16 + slice": lambda: [sf.read(path, dtype="int16")[0][start : start + CROP] for path, start in picks],
    }
    contenders["read_crop"]()  # warm the page cache
    timings = {name: best_of(3, function) for name, function in contenders.items()}
    ours, crops_ours = timings.pop("read_crop")
    print(f"crops: {crops} x 2 s from 8 s 16 kHz wav, read_crop {crops / ours:7.0f} crops/s")
    for name, (seconds, crops_peer) in timings.items():
        assert all(np.array_equal(a / 32768 if b.dtype.kind == "f" else a, b) for a, b in zip(crops_ours, crops_peer))
        print(f"  vs {name:<40} {crops / seconds:7.0f} crops/s | speed-up {seconds / ours:5.1f}x (target >= 3x) "
              "| crops identical")


def bench_frontend() -> None:
    waves = torch.randn(128, 3 * RATE) * 0.1
    for name, config in (("kaldi mode", FeatureConfig.kaldi()), ("default mode", FeatureConfig())):
        frontend = LogMelFrontend(config).eval()
        with torch.inference_mode():
            t_ours, (features, _) = best_of(3, lambda: frontend(waves))

            def loop():
                out = []
                for wave in waves:
                    fbank = kaldi.fbank(wave[None] * 32768, num_mel_bins=80, frame_length=25, frame_shift=10, dither=0.0,
                                        sample_frequency=RATE, window_type="hamming", use_energy=False)
                    out.append(fbank - fbank.mean(dim=0))
                return torch.stack(out)

            t_peer, reference = best_of(3, loop)
        agreement = ""
        if config.mode == "kaldi":  # float32 rounding shows most in the weakest (lowest) mel bins
            error = (features - reference).abs()
            assert error.max() < 1e-2, f"kaldi mode differs from kaldi.fbank by {error.max()}"
            agreement = f"| |diff| max {error.max():.1e} mean {error.mean():.1e}"
        print(f"frontend 128 x 3 s, {name:<12} | batched {t_ours * 1e3:7.1f} ms | kaldi.fbank loop {t_peer * 1e3:7.1f} ms"
              f" | speed-up {t_peer / t_ours:5.2f}x (target >= 1x) {agreement}")


class WholeFileCrops(Dataset):
    """voxceleb_trainer-style: read the header, read the whole file as float, slice a crop."""

    def __init__(self, utterances):
        self.utterances = utterances

    def __len__(self):
        return len(self.utterances)

    def __getitem__(self, item):
        index, seed = item
        path = self.utterances[index].path
        frames = sf.info(path).frames
        start = seed % max(1, frames - CROP + 1)
        return torch.from_numpy(sf.read(path, dtype="float32")[0][start : start + CROP]), 0


def bench_loader(paths: list[Path], batches: int) -> None:
    entries = [(str(p), p.parts[-3], p) for p in paths]
    utterances, _ = build_utterances(entries, progress=False)
    sampler = PKSampler([u.spk_id for u in utterances], p=8, k=2, batches_per_epoch=batches)
    rates = {}
    for name, dataset in (("speakertrip", CropDataset(utterances, CROP / RATE)), ("whole-file", WholeFileCrops(utterances))):
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_crops, num_workers=2, persistent_workers=False)
        start, count = time.perf_counter(), 0
        for batch in loader:
            count += len(batch.labels)
        rates[name] = count / (time.perf_counter() - start)
    print(f"loader P=8 x K=2, 2 workers, {batches} batches | speakertrip {rates['speakertrip']:7.0f} crops/s | "
          f"whole-file {rates['whole-file']:7.0f} crops/s | ratio {rates['speakertrip'] / rates['whole-file']:4.1f}x "
          f"(target >= 300 crops/s, worker start-up included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=40)
    parser.add_argument("--crops", type=int, default=400)
    parser.add_argument("--batches", type=int, default=60)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as folder:
        paths = write_files(Path(folder), args.files)
        bench_crops(paths, args.crops)
        bench_frontend()
        bench_loader(paths, args.batches)


if __name__ == "__main__":
    main()
