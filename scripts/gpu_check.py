"""One command that proves speakertrip's GPU paths on a GPU, in about 8 minutes, unattended.

    pip install -e '.[dev]'          # the project's own install (pytest for section 1)
    python scripts/gpu_check.py --out gpu_check_out

Sections, each in its own process with its own time limit (whatever finishes is kept):

1. the GPU tests of the suite (pytest ``-k gpu``: augmentation, frontend, a training step with no
   host syncs in fp32 and bf16, CUDA-event step timing);
2. a real ``speakertrip train`` of about 3 minutes on a generated eSpeak corpus
   (``speakertrip prepare synth``; a generated noise-speech tree if eSpeak is missing):
   ECAPA-512, multi-positive hardest-k, compiled bf16; utt/s and data-wait fraction from its
   ``metrics.jsonl`` and the held-out EER of the averaged model;
3. ``bench_train`` at B = 64 x 4 crops of 2 s: ECAPA-512 fp32 / TF32 / bf16 / bf16 + compile,
   ECAPA-1024 bf16 + compile, TDNN bf16 (ms/step, utt/s, speed-up over the fp32
   SpeechBrain-style loop on the same weights), and the crop loader with every core, WAV and FLAC.

Writes ``DIR/gpu_check.json`` (after every section) and prints a table with the targets
(ECAPA-512 >= 8k utt/s in the real loop, data wait < 5 %, ECAPA-1024 >= 4k utt/s). Without
CUDA it exits 2 at once (``--smoke`` runs tiny versions of every section on the CPU, to check
the script itself).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"ecapa512_loop_utt_per_s": 8000, "data_fraction": 0.05, "ecapa1024_utt_per_s": 4000}


class Budget:
    """Seconds left of the whole check; each section gets at most its cap and never runs past the end."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def allow(self, cap: float) -> float:
        return max(0.0, min(cap, self.deadline - time.monotonic()))


def run(command: list[str], seconds: float, log: Path) -> tuple[int | None, str]:
    """Run ``command`` (output to ``log``) for at most ``seconds``; return code (None: timed out) and the output."""
    environment = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                   "PYTHONUNBUFFERED": "1"}
    if seconds < 5:
        log.write_text("skipped: no time left\n")
        return None, ""
    with open(log, "w") as handle:
        try:
            code = subprocess.run(command, cwd=REPO, env=environment, stdout=handle, stderr=subprocess.STDOUT,
                                  timeout=seconds).returncode
        except subprocess.TimeoutExpired:
            code = None
    return code, log.read_text()


GPU_TEST_FILES = ("tests/test_augment.py", "tests/test_features.py", "tests/test_host_syncs.py", "tests/test_step_timer.py")


def gpu_tests(out: Path, budget: Budget, smoke: bool) -> dict:
    code, output = run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "gpu",
                        *GPU_TEST_FILES], budget.allow(90), out / "gpu_tests.log")
    summary = next((line for line in reversed(output.splitlines()) if " passed" in line or " failed" in line
                    or " skipped" in line or "error" in line), "no summary")
    return {"passed": code == 0, "returncode": code, "summary": summary.strip("= ")}


def bench(out: Path, budget: Budget, smoke: bool) -> dict:
    variants = ["ecapa-64:fp32"] if smoke else ["ecapa-512:fp32", "ecapa-512:tf32", "ecapa-512:bf16",
                                                "ecapa-512:bf16+compile", "ecapa-1024:bf16+compile", "tdnn-512:bf16"]
    sizes = ["--p", "2", "--steps", "1"] if smoke else ["--p", "64", "--k", "4", "--steps", "10"]
    code, output = run([sys.executable, "scripts/bench_train.py", *sizes, "--variants", *variants, "--no-syncs",
                        "--workers", str(os.cpu_count() or 1), "--loader-formats", "wav", "flac",
                        "--json", str(out / "bench_train.json")], budget.allow(220), out / "bench_train.log")
    result = json.loads((out / "bench_train.json").read_text()) if (out / "bench_train.json").is_file() else {}
    result.update(returncode=code, tail=output.splitlines()[-3:])
    return result


def make_corpus(out: Path, budget: Budget, smoke: bool) -> tuple[Path, str]:
    """A prepared corpus: eSpeak voices when eSpeak NG loads, else a generated noise-speech tree."""
    data = out / "synth" / "data"
    speakers = ["--speakers", "8", "--test-speakers", "4", "--utterances", "4"] if smoke else \
        ["--speakers", "240", "--test-speakers", "40", "--utterances", "12"]
    code, _ = run([sys.executable, "-m", "speakertrip", "prepare", "synth", "--out", str(out / "synth"), *speakers],
                  budget.allow(90), out / "prepare_synth.log")
    if code == 0 and (data / "train.jsonl").is_file():
        return data, "eSpeak synth"
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.testing import make_voxceleb_tree

    tree = make_voxceleb_tree(out / "tree", num_speakers=8 if smoke else 200, sessions=2,
                              utterances_per_session=2 if smoke else 6, duration=(2.5, 4.0))
    prepare_voxceleb(tree, out / "tree_data", progress=False)
    return out / "tree_data", "generated noise speech (eSpeak unavailable: see prepare_synth.log)"


def real_train(out: Path, budget: Budget, smoke: bool) -> dict:
    data, corpus = make_corpus(out, budget, smoke)
    exp = out / "train_exp"
    model = {"channels": 32, "attention_channels": 16, "se_channels": 16} if smoke else {"channels": 512}
    config = {"data": {"train": str(data / "train.jsonl"), "dev": str(data / "test.jsonl"),
                       "dev_trials": str(data / "trials" / "veri_test2.txt"), "crop_seconds": 0.5 if smoke else 2.0,
                       "workers": max(1, (os.cpu_count() or 2) - 2), "batches_per_epoch": 4 if smoke else 500},
              "features": {"n_mels": 80},
              "model": {"encoder": "ecapa", "options": model},
              "loss": {"kind": "multi_positive", "p": 2 if smoke else 64, "k": 4,
                       "options": {"margin": 0.3, "hardest_negatives": 4}},
              "optim": {"lr": 0.002},
              "train": {"exp_dir": str(exp), "steps": 6 if smoke else 2500, "log_every": 2 if smoke else 50,
                        "compile": not smoke, "amp": "auto", "progress": False, "average_last": 1}}
    (out / "train.yaml").write_text(json.dumps(config))  # JSON is YAML
    started = time.monotonic()
    code, output = run([sys.executable, "-m", "speakertrip", "train", str(out / "train.yaml")],
                       budget.allow(200), out / "train.log")
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()] \
        if (exp / "metrics.jsonl").is_file() else []
    steps = [r for r in records if r["kind"] == "step"][1:]  # the first window holds compilation
    result = {"corpus": corpus, "returncode": code, "seconds": time.monotonic() - started,
              "steps": steps[-1]["step"] if steps else 0}
    if steps:
        result.update(utt_per_s=statistics.median(r["utt_per_s"] for r in steps),
                      data_fraction=statistics.median(r["data_fraction"] for r in steps),
                      step_ms=statistics.median(r["step_ms"] for r in steps),
                      gpu_mem_peak_gib=max((r.get("gpu_mem_peak_gib", 0.0) for r in steps), default=0.0))
    model_config = exp / "model" / "config.yaml"
    if model_config.is_file():
        import yaml

        evaluation = yaml.safe_load(model_config.read_text()).get("evaluation", {})
        result["held_out_eer"] = evaluation.get("eer")
    checks = [r for r in records if r["kind"] == "validation"]
    if checks and "held_out_eer" not in result:
        result["held_out_eer"] = checks[-1]["eer"]
    result["tail"] = output.splitlines()[-12:]
    return result


def table(results: dict) -> str:
    lines = [f"gpu_check on {results['device']} ({results['seconds']:.0f} s)"]
    tests = results.get("gpu_tests", {})
    lines.append(f"  GPU tests: {'PASS' if tests.get('passed') else 'FAIL'} ({tests.get('summary', 'not run')})")
    bench_result = results.get("bench", {})
    for row in bench_result.get("steps", []):
        lines.append(f"  {row['variant']:<26} {row['ms']:>7.1f} ms {row['utt_per_s']:>8,.0f} utt/s "
                     f"{row['speed_up']:>6.2f}x over fp32 loop{'' if row['losses_agree'] else '  LOSSES DISAGREE'}")
    for audio_format, rate in bench_result.get("loader", {}).items():
        lines.append(f"  crop loader {audio_format:<5} {rate:>10,.0f} crops/s ({os.cpu_count()} workers)")
    train = results.get("train", {})
    if train:
        lines.append(f"  real train ({train.get('corpus')}): {train.get('steps')} steps, "
                     f"{train.get('utt_per_s', 0):,.0f} utt/s, data wait {100 * train.get('data_fraction', 0):.1f} %, "
                     f"{train.get('step_ms', 0):.1f} ms/step, GPU memory peak {train.get('gpu_mem_peak_gib', 0):.1f} GiB, "
                     f"held-out EER {100 * train['held_out_eer']:.2f} %" if train.get("held_out_eer") is not None
                     else f"  real train: {train.get('steps')} steps, no EER (return code {train.get('returncode')})")
    for name, verdict in results.get("targets", {}).items():
        lines.append(f"  target {name}: {verdict}")
    return "\n".join(lines)


def targets(results: dict) -> dict:
    verdicts = {}
    train = results.get("train", {})
    if "utt_per_s" in train:
        verdicts["ECAPA-512 real loop >= 8k utt/s"] = f"{train['utt_per_s']:,.0f} " + \
            ("met" if train["utt_per_s"] >= TARGETS["ecapa512_loop_utt_per_s"] else "MISSED")
        verdicts["data wait < 5 %"] = f"{100 * train['data_fraction']:.1f} % " + \
            ("met" if train["data_fraction"] < TARGETS["data_fraction"] else "MISSED")
    for row in results.get("bench", {}).get("steps", []):
        if row["variant"].startswith("ecapa-1024 bf16"):
            verdicts["ECAPA-1024 >= 4k utt/s"] = f"{row['utt_per_s']:,.0f} " + \
                ("met" if row["utt_per_s"] >= TARGETS["ecapa1024_utt_per_s"] else "MISSED")
    return verdicts


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, logs and the run")
    parser.add_argument("--budget", type=float, default=470.0, help="seconds for the whole check (default 470)")
    parser.add_argument("--smoke", action="store_true", help="tiny sections, CPU allowed: checks this script")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    budget, started = Budget(args.budget), time.monotonic()
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)",
                     "torch": torch.__version__, "cores": os.cpu_count()}
    for name, section in (("gpu_tests", gpu_tests), ("train", real_train), ("bench", bench)):
        try:
            results[name] = section(args.out, budget, args.smoke)
        except Exception as error:  # noqa: BLE001 - one broken section must not lose the others
            results[name] = {"error": f"{type(error).__name__}: {error}"}
        results["seconds"] = time.monotonic() - started
        results["targets"] = targets(results)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0 if results["gpu_tests"].get("passed") and results["train"].get("returncode") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
