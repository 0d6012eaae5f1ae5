"""Benchmark: how long users wait for the CLI, beside ``python -c "import torch"``.

Each command runs ``--repeats`` times as a fresh process (the console script ``speakertrip`` next to this
interpreter, else ``python -m speakertrip``); the table shows the median and the best wall time and the
median CPU time (user + system of the child). Commands:

- ``speakertrip metrics --help`` (target <= 0.6 s wall);
- ``speakertrip score`` of ``--trials`` trials (VoxCeleb-style labelled list over ``--utterances`` keys) from an
  ``.npz`` store of 192-d embeddings, the score file written (target <= 2 s wall, start-up included); its
  scores are checked against numpy cosines of the same rows (1e-5);
- ``speakertrip metrics`` on that score file;
- the peer: ``python -c "import torch"``, what every command paid before torch became lazy.

It also checks, in one more fresh interpreter, that the score, metrics and prepare commands leave
``torch`` out of ``sys.modules`` (tests/test_imports.py keeps it so).

    .venv/bin/python scripts/bench_startup.py
    .venv/bin/python scripts/bench_startup.py --trials 1000000 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NO_TORCH = """
import sys
from speakertrip.cli import main
for argv in ({score!r}, {metrics!r}):
    assert main(argv) == 0
import speakertrip.commands.prepare, speakertrip.corpora.voxceleb  # noqa: E401 - what `prepare` runs
print("torch imported:", "torch" in sys.modules)
"""


def cli() -> list[str]:
    script = Path(sys.executable).with_name("speakertrip")
    return [str(script)] if script.exists() else [sys.executable, "-m", "speakertrip"]


def timed(command: list[str]) -> tuple[float, float]:
    """Wall and CPU seconds (user + system) of one fresh child process; it must succeed."""
    before = os.times()
    started = time.perf_counter()
    done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - started
    after = os.times()
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def write_inputs(folder: Path, utterances: int, trials: int, seed: int = 0) -> tuple[Path, Path, np.ndarray]:
    """An .npz store of ``utterances`` unit 192-d rows and a labelled list of ``trials`` distinct pairs."""
    rng = np.random.default_rng(seed)
    keys = [f"id{i // 20:05d}/video{i % 4}/{i:05d}.wav" for i in range(utterances)]
    embeddings = rng.standard_normal((utterances, 192)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    store = folder / "embeddings.npz"
    np.savez(store, keys=np.array(keys), embeddings=embeddings)
    pairs = rng.integers(0, utterances, size=(trials, 2))
    labels = (pairs[:, 0] // 20 == pairs[:, 1] // 20).astype(int)
    trial_list = folder / "trials.txt"
    trial_list.write_text("".join(f"{label} {keys[a]} {keys[b]}\n" for label, (a, b) in zip(labels, pairs)))
    return store, trial_list, np.einsum("nd,nd->n", embeddings[pairs[:, 0]], embeddings[pairs[:, 1]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100_000)
    parser.add_argument("--utterances", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    speakertrip = cli()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store, trial_list, expected = write_inputs(folder, args.utterances, args.trials)
        scores = folder / "scores.txt"
        score = ["score", "--trials", str(trial_list), "--embeddings", str(store), "--out", str(scores)]
        metrics = ["metrics", str(scores)]
        commands = {
            "speakertrip metrics --help": ([*speakertrip, "metrics", "--help"], 0.6),
            f"speakertrip score ({args.trials} trials, .npz store)": ([*speakertrip, *score], 2.0),
            f"speakertrip metrics ({args.trials} scores)": ([*speakertrip, *metrics], None),
            'peer: python -c "import torch"': ([sys.executable, "-c", "import torch"], None),
        }
        timed(commands['peer: python -c "import torch"'][0])  # warm the page cache for every side
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
        for _ in range(args.repeats):  # interleaved, so load changes on a shared machine hit all alike
            for name, (command, _) in commands.items():
                runs[name].append(timed(command))
        written = np.array([float(line.split()[2]) for line in scores.read_text().splitlines()])  # ENROLL TEST SCORE LABEL
        agree = len(written) == args.trials and np.abs(written - expected).max() <= 1e-5
        check = subprocess.run([sys.executable, "-c", NO_TORCH.format(score=score, metrics=metrics)],
                               capture_output=True, text=True, cwd=ROOT)
    torch_line = (check.stdout.strip().splitlines() or ["torch check failed: " + check.stderr[-300:]])[-1]
    print(f"start-up: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.repeats} fresh processes "
          f"each, interleaved ({' '.join(speakertrip)})")
    print(f"{'command':<46} {'median s':>9} {'best s':>7} {'CPU s':>6} {'target':>7}")
    for name, (_, target) in commands.items():
        walls = [wall for wall, _ in runs[name]]
        cpu = statistics.median(c for _, c in runs[name])
        verdict = "" if target is None else (f"<= {target:g} s " + ("met" if statistics.median(walls) <= target
                                                                       else "MISSED"))
        print(f"{name:<46} {statistics.median(walls):>9.2f} {min(walls):>7.2f} {cpu:>6.2f} {verdict:>7}")
    print(f"score file: {len(written)} scores, {'equal to' if agree else 'DIFFERENT FROM'} numpy cosines (1e-5); "
          f"score, metrics and prepare: {torch_line}")


if __name__ == "__main__":
    main()
