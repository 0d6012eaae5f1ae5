"""`speakertrip prepare voxceleb` on a generated tree of many short files: first run, re-run, memory.

The first run reads every header (as every run did before the header cache); a re-run stats the
files and reads only new or changed ones. Each run is a fresh process, so its peak resident
memory is its own. The tree goes to a temporary folder (``--tmp``) and is deleted afterwards.
The first run is timed twice: with the files just written (headers in the page cache, the
most favourable case for reading them) and after evicting the files' pages
(``posix_fadvise(DONTNEED)`` on each file: a corpus not in memory, as after a reboot or on
network storage). The re-run follows the cold first run.

    .venv/bin/python scripts/bench_prepare.py                  # 100k files
    .venv/bin/python scripts/bench_prepare.py --files 20000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = """
import json, resource, sys, time
from speakertrip.corpora.voxceleb import prepare_voxceleb
start = time.perf_counter()
paths = prepare_voxceleb(sys.argv[1], sys.argv[2], workers=int(sys.argv[3]), progress=False)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "max_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "utterances": sum(1 for _ in open(paths["utts"]))}))
"""


def wav_bytes(samples: int, seed: int) -> bytes:
    """A 16 kHz mono 16-bit PCM wav of ``samples`` samples (a cheap deterministic pattern)."""
    data = bytes((seed + i) % 251 for i in range(2 * samples))
    header = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16) + b"data" + struct.pack("<I", len(data))
    return header + data


def make_tree(root: Path, files: int, utterances_per_video: int = 10, videos: int = 10) -> int:
    per_speaker = utterances_per_video * videos
    written = 0
    for speaker in range(-(-files // per_speaker)):
        for video in range(videos):
            folder = root / f"id{10000 + speaker:05d}" / f"video{video:05d}"
            folder.mkdir(parents=True)
            for utterance in range(utterances_per_video):
                if written == files:
                    return written
                (folder / f"{utterance:05d}.wav").write_bytes(wav_bytes(800 + (written % 7) * 160, written))
                written += 1
    return written


def evict(root: Path) -> None:
    """Drop the tree's file pages from the page cache (this tree's files only)."""
    for directory, _, files in os.walk(root):
        for name in files:
            descriptor = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(descriptor)
                os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(descriptor)


def run(root: Path, out: Path, workers: int) -> dict:
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    result = subprocess.run([sys.executable, "-c", CHILD, str(root), str(out), str(workers)], env=environment,
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=8, help="header-reading threads (prepare's default)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench_prepare_", dir=args.tmp))
    try:
        start = time.perf_counter()
        count = make_tree(folder / "vox" / "wav", args.files)
        print(f"generated {count:,} wav files (0.05-0.11 s each) in {time.perf_counter() - start:.1f} s under {folder}")
        warm = run(folder / "vox", folder / "warm", args.workers)
        evict(folder / "vox")
        first = run(folder / "vox", folder / "prepared", args.workers)
        again = run(folder / "vox", folder / "prepared", args.workers)
        cache = (folder / "prepared" / "headers.tsv").stat().st_size / 2**20
        assert warm["utterances"] == first["utterances"] == again["utterances"] == count, (first, again)
        print(f"{'run':<40}{'seconds':>9}{'files/s':>11}{'peak RSS MiB':>14}")
        for name, result in (("first, files in the page cache", warm), ("first, files not in memory", first),
                             ("re-run (header cache)", again)):
            print(f"{name:<40}{result['seconds']:>9.2f}{count / result['seconds']:>11,.0f}{result['max_rss_mib']:>14.0f}")
        print(f"re-run speed-up: {first['seconds'] / again['seconds']:.1f}x over a first run from disk "
              f"(target >= 10x), {warm['seconds'] / again['seconds']:.1f}x over one from the page cache; "
              f"cache file {cache:.1f} MiB; {args.workers} threads, {os.cpu_count()} cores")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
