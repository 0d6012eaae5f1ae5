"""Where speakertrip keeps its own code beside a library that does the same job, this shows why.

2 s crops of 8 s 16 kHz PCM-16 wav: ``read_crop`` (one seek + one read of the data chunk) vs
soundfile's partial read (``SoundFile.seek`` + ``read(dtype="int16")``), which ``read_crop`` falls
back to for every other file. (Silence trimming and AS-norm's top-n, measured the same way, lost to
``librosa.effects.trim`` and ``np.partition``, which speakertrip now uses.)

Contenders alternate round by round, so a busy machine slows both alike; the best round counts.

    python scripts/bench_crop_reads.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from speakertrip.audio import read_crop

RATE, CROP = 16000, 32000


def best_times(contenders: dict, rounds: int) -> dict[str, float]:
    times = {name: float("inf") for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            times[name] = min(times[name], time.perf_counter() - started)
    return times


def report(title: str, times: dict[str, float], ours: str, unit: str, count: int) -> None:
    print(title)
    for name, seconds in times.items():
        ratio = "" if name == ours else f"   ours is {seconds / times[ours]:.2f}x faster"
        print(f"  {name:<34} {count / seconds:>10.0f} {unit}/s{ratio}")


def crops(rounds: int) -> None:
    folder = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    paths = []
    for index in range(200):
        path = folder / f"{index}.wav"
        sf.write(path, rng.uniform(-0.5, 0.5, 8 * RATE).astype(np.float32), RATE, subtype="PCM_16")
        paths.append(path)
    picks = [(path, int(rng.integers(0, 6 * RATE))) for path in paths for _ in range(5)]

    def soundfile_partial():
        out = []
        for path, start in picks:
            with sf.SoundFile(path) as handle:
                handle.seek(start)
                out.append(handle.read(CROP, dtype="int16"))
        return out

    ours = [read_crop(path, start, CROP) for path, start in picks]
    assert all(np.array_equal(a, b) for a, b in zip(ours, soundfile_partial()))
    times = best_times({"read_crop": lambda: [read_crop(p, s, CROP) for p, s in picks],
                        "soundfile seek + read": soundfile_partial}, rounds)
    report(f"{len(picks)} crops of 2 s from 8 s PCM-16 wav (page cache warm)", times, "read_crop", "crops",
           len(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    rounds = parser.parse_args().rounds
    crops(rounds)


if __name__ == "__main__":
    main()
