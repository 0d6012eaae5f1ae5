"""One command that proves speakertrip's GPU paths on a bare GPU machine, in at most 8 minutes, unattended.

The machine needs torch (with CUDA) and nothing else of ours: no internet, no ``pip install -e`` (the check
puts this checkout on ``sys.path`` and ``PYTHONPATH`` itself). Here, ``python scripts/gpu_bundle.py`` writes
the wheels of every other package the check imports (for CPython 3.12, manylinux x86-64, resolved against
torch 2.11) to the git-ignored ``gpu_bundle/`` and prints this command; there, in the repository root:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_site gpu_bundle/*.whl && PYTHONPATH=/tmp/gpu_site python3 scripts/gpu_check.py --out gpu_check_out

It first prints two lines: which of its imports are missing (``needs``), and whether ``torch.compile`` can
build kernels (Triton compiles its launcher with a C compiler against ``Python.h``; without either, every
section runs eagerly and says so). Then each section runs in its own process, killed with its workers at
its time limit, and prints its row as it ends (failed and timed-out ones too):

1. ``bench_train``, one process per figure, at B = 64 x 4 crops of 2 s: the trainer's loader (augmented
   batches, every core), the trainer's step for ECAPA-512 bf16, ECAPA-512 bf16 + compile and ECAPA-1024
   bf16 + compile (ms/step, utt/s, speed-up over the fp32 SpeechBrain-style loop on the same weights);
2. the GPU tests of the suite (pytest ``-k gpu``: augmentation, frontend, a compiled bf16 training step
   with loader workers and pinned memory under ``torch.cuda.set_sync_debug_mode("error")``, step timing);
3. a real ``speakertrip train`` on a generated corpus with augmentation on: ECAPA-512, multi-positive
   hardest-k, compiled bf16, 300 steps; utt/s and data-wait fraction from its ``metrics.jsonl`` and the
   held-out EER of the final model.

Writes ``DIR/gpu_check.json`` after every section and ends with a table and the targets (ECAPA-512 >= 8k
utt/s in the real loop, data wait < 5 %, ECAPA-1024 >= 4k utt/s). Exit 0 when every section passed, 1
otherwise; without CUDA it exits 2 at once (``--smoke`` runs tiny versions of every section on the CPU, to
check the script itself). Not measured here: the overlap of DDP's all-reduce with the backward pass of a
compiled encoder (one GPU; it needs two).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # speakertrip from this checkout, installed or not

BUNDLE = "gpu_bundle"
BUDGET = 470.0  # seconds for every section together on the GPU machine: the check ends within 8 minutes
SMOKE_BUDGET = 640.0  # --smoke on a CPU: its compile variant alone runs inductor's C++ code generation (2-3 min)
INSTALL_AND_RUN = (f"python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/gpu_site {BUNDLE}/*.whl"
                   " && PYTHONPATH=/tmp/gpu_site python3 scripts/gpu_check.py --out gpu_check_out")
# Every module the sections import beyond torch and the standard library, with its distribution and version
# (those speakertrip is tested with; each works with torch 2.11: gpu_bundle.py resolves them against it).
# Found by running ``gpu_check.py --smoke`` with an import recorder (see gpu_bundle.py).
NEEDS: dict[str, tuple[str, str]] = {
    "numpy": ("numpy", "2.4.6"), "scipy": ("scipy", "1.17.1"), "yaml": ("PyYAML", "6.0.4"),
    "tqdm": ("tqdm", "4.70.1"), "safetensors": ("safetensors", "0.8.0"), "soundfile": ("soundfile", "0.14.0"),
    "_cffi_backend": ("cffi", "2.1.1"), "torchaudio": ("torchaudio", "2.11.0"),
    "speechbrain": ("speechbrain", "1.1.2"), "hyperpyyaml": ("HyperPyYAML", "1.2.3"),
    "ruamel.yaml": ("ruamel.yaml", "0.18.17"), "joblib": ("joblib", "1.6.0"), "packaging": ("packaging", "26.4"),
    "sentencepiece": ("sentencepiece", "0.2.3"), "matplotlib": ("matplotlib", "3.11.2"),
    "contourpy": ("contourpy", "1.3.3"), "cycler": ("cycler", "0.12.1"), "dateutil": ("python-dateutil", "4.0.0"),
    "fontTools": ("fonttools", "4.68.0"), "kiwisolver": ("kiwisolver", "1.5.1"), "PIL": ("pillow", "13.0.0"),
    "pyparsing": ("pyparsing", "3.3.3"), "pytest": ("pytest", "9.2.0"), "pluggy": ("pluggy", "1.7.0"),
    "iniconfig": ("iniconfig", "2.3.1"), "pygments": ("Pygments", "2.21.0"), "pytest_timeout": ("pytest-timeout", "2.4.0"),
}
MINIMUM_SECONDS = 5  # a section with less time left than this is skipped
TARGETS = {"ecapa512_loop_utt_per_s": 8000, "data_fraction": 0.05, "ecapa1024_utt_per_s": 4000}
GPU_TEST_FILES = ("tests/test_augment.py", "tests/test_features.py", "tests/test_host_syncs.py", "tests/test_step_timer.py")


def missing_needs(needs: dict[str, Any] = NEEDS) -> list[str]:
    """The distributions of ``needs`` whose module cannot be imported here (without importing anything)."""
    missing = []
    for module in needs:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(needs[module][0])
    return missing


def compile_blocker() -> str | None:
    """Why ``torch.compile`` cannot build kernels here, or None when it can: Triton (on a GPU) and inductor's
    CPU backend compile C with a compiler (``$CC``, cc, gcc or clang) against the interpreter's ``Python.h``."""
    missing = []
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        missing.append("no C compiler (cc, gcc or clang)")
    header = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not header.is_file():
        missing.append(f"no {header}")
    return ", ".join(missing) or None


class Budget:
    """Seconds left of the whole check; each section gets at most its cap and never runs past the end."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def allow(self, cap: float) -> float:
        return max(0.0, min(cap, self.deadline - time.monotonic()))


@dataclass
class Section:
    """One process of the check: ``command`` for at most ``cap`` seconds; ``parse(out, log, returncode)`` turns
    what it left into result fields (it may raise: the row then says so) and ``describe`` them into the row."""

    name: str
    cap: float
    command: list[str]
    parse: Callable[[Path, str, int | None], dict] = lambda out, log, code: {}
    describe: Callable[[dict], str] = lambda result: ""
    result: dict = field(default_factory=dict)


def run_process(command: list[str], seconds: float, log: Path) -> int | None:
    """Run ``command`` with its output in ``log``, in its own process group: at ``seconds`` the whole group
    (DataLoader workers, compiler workers) is killed. Returns the exit code, None when it was killed."""
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                   "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as handle:
        process = subprocess.Popen(command, cwd=REPO, env=environment, stdout=handle, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            return process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            return None


def run_section(section: Section, budget: Budget, out: Path) -> dict:
    """Run one section and print its row, whatever happens; returns its result (``status`` ok/failed/...)."""
    seconds = budget.allow(section.cap)
    log = out / f"{section.name}.log"
    started = time.monotonic()
    if seconds < MINIMUM_SECONDS:
        code, text, status = None, "", "skipped"
        log.write_text("skipped: no time left in the budget\n")
    else:
        code = run_process(section.command, seconds, log)
        text = log.read_text(errors="replace")
        status = "ok" if code == 0 else f"TIMED OUT ({seconds:.0f} s)" if code is None else f"FAILED (exit {code})"
    result: dict = {"status": status, "returncode": code, "seconds": round(time.monotonic() - started, 1)}
    try:
        result.update(section.parse(out, text, code))
        detail = section.describe(result)
    except Exception as error:  # noqa: BLE001 - a section that left nothing readable is still a row
        detail = f"nothing to read ({type(error).__name__}: {error})"
    if status == "skipped":
        detail = "no time left in the budget"
    elif status != "ok":
        tail = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
        result["tail"] = text.splitlines()[-15:]
        detail = f"{detail}  last line: {tail[0].strip()[:160]}".strip()
    result["row"] = f"{section.name:<30} {status:<18} {result['seconds']:>5.0f} s  {detail}"
    print(result["row"], flush=True)
    section.result = result
    return result


# ---------------------------------------------------------------------------------------------- sections
def bench_sections(out: Path, smoke: bool, compiled: bool, cores: int) -> list[Section]:
    sizes = ["--p", "4", "--k", "2", "--crop", "0.5", "--steps", "2"] if smoke else \
        ["--p", "64", "--k", "4", "--crop", "2.0", "--steps", "10"]
    common = [sys.executable, "scripts/bench_train.py", *sizes, "--no-syncs"]
    sections = [Section("bench loader", 25, [*common, "--variants", "--loader-formats", "wav", "--workers",
                                             str(max(1, cores - 2)), "--json", str(out / "bench_loader.json")],
                        parse=lambda o, log, code: {"crops_per_s": _json(o / "bench_loader.json")["loader"]["wav"]},
                        describe=lambda r: f"{r['crops_per_s']:,.0f} crops/s (trainer's loader, augmented, "
                                           f"{max(1, cores - 2)} workers)")]
    # the smoke's compile runs inductor's C++ code generation on a CPU: about 2 minutes on 2 idle cores
    variants = [("ecapa-64:bf16", 60), ("ecapa-64:bf16+compile", 300)] if smoke else \
        [("ecapa-512:bf16", 35), ("ecapa-512:bf16+compile", 85), ("ecapa-1024:bf16+compile", 75)]
    for variant, cap in variants:
        if not compiled:
            variant = variant.replace("+compile", "")
            if any(section.name == f"bench {variant}" for section in sections):
                continue
        target = out / f"bench_{variant.replace(':', '_').replace('+', '_')}.json"
        sections.append(Section(f"bench {variant}", cap, [*common, "--variants", variant, "--loader-formats",
                                                           "--json", str(target)],
                                parse=lambda o, log, code, target=target: _json(target)["steps"][0],
                                describe=_describe_step))
    return sections


def _describe_step(row: dict) -> str:
    if "failed" in row:
        return row["failed"][:200]
    return (f"{row['ms']:.1f} ms/step, {row['utt_per_s']:,.0f} utt/s, {row['speed_up']:.2f}x the fp32 loop"
            f"{'' if row['losses_agree'] else ', LOSSES DISAGREE'}")


def gpu_tests_section(out: Path) -> Section:
    def parse(o: Path, log: str, code: int | None) -> dict:
        summary = next((line for line in reversed(log.splitlines()) if any(
            word in line for word in (" passed", " failed", " skipped", " error", "no tests ran"))), "no summary")
        return {"summary": summary.strip("= ")}

    return Section("gpu tests", 75, [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", "-k", "gpu",
                                     *GPU_TEST_FILES], parse=parse, describe=lambda r: r["summary"])


def corpus_section(out: Path, smoke: bool) -> Section:
    return Section("train corpus", 35, [sys.executable, "scripts/gpu_check.py", "--prepare-corpus", str(out / "corpus"),
                                        *(["--smoke"] if smoke else [])],
                   parse=lambda o, log, code: {"utterances": len((o / "corpus" / "data" / "train.jsonl").read_text()
                                                                 .splitlines())},
                   describe=lambda r: f"{r['utterances']} training utterances (generated speakers, MUSAN/RIR trees)")


def prepare_corpus(folder: Path, smoke: bool) -> None:
    """The real train's data: a generated VoxCeleb-layout corpus (a train/test speaker split with a trial list)
    and MUSAN / RIRS_NOISES-layout trees for augmentation."""
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.testing import make_musan_tree, make_rir_tree, make_voxceleb_tree

    tree = make_voxceleb_tree(folder / "tree", num_speakers=10 if smoke else 200, sessions=2,
                              utterances_per_session=2 if smoke else 6, duration=(1.0, 2.0) if smoke else (2.5, 4.0))
    prepare_voxceleb(tree, folder / "data", progress=False)
    make_musan_tree(folder / "musan", files=3 if smoke else 12, duration=2.0 if smoke else 8.0)
    make_rir_tree(folder / "rirs", rooms=3 if smoke else 8)


def train_section(out: Path, smoke: bool, compiled: bool, cores: int) -> Section:
    corpus, exp = out / "corpus", out / "train_exp"
    model = {"channels": 32, "attention_channels": 16, "se_channels": 16} if smoke else {"channels": 512}
    config = {"data": {"train": str(corpus / "data" / "train.jsonl"), "dev": str(corpus / "data" / "test.jsonl"),
                       "dev_trials": str(corpus / "data" / "trials" / "veri_test2.txt"),
                       "crop_seconds": 0.5 if smoke else 2.0, "workers": max(1, cores - 2),
                       "batches_per_epoch": 3 if smoke else 150},
              "features": {"n_mels": 80},
              "model": {"encoder": "ecapa", "options": model},
              "loss": {"kind": "multi_positive", "p": 4 if smoke else 64, "k": 2 if smoke else 4,
                       "options": {"margin": 0.3, "hardest_negatives": 4}},
              "augment": {"musan": str(corpus / "musan"), "rirs": str(corpus / "rirs")},
              "optim": {"lr": 0.002},
              "train": {"exp_dir": str(exp), "steps": 6 if smoke else 300, "log_every": 2 if smoke else 25,
                        "compile": compiled and not smoke, "amp": "auto", "progress": False, "average_last": 1}}
    (out / "train.yaml").write_text(json.dumps(config))  # JSON is YAML
    shutil.rmtree(exp, ignore_errors=True)  # a rerun into the same --out starts afresh
    return Section("real train", 140, [sys.executable, "-m", "speakertrip", "train", str(out / "train.yaml")],
                   parse=lambda o, log, code: read_train(exp), describe=_describe_train)


def read_train(exp: Path) -> dict:
    """utt/s, data-wait fraction, ms/step and memory (medians over the logged windows after the first, which
    holds compilation) and the held-out EER of the final model, from what the run left in ``exp``."""
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    timed = steps[1:] or steps
    result: dict = {"steps": steps[-1]["step"] if steps else 0}
    if timed:
        result.update(utt_per_s=statistics.median(r["utt_per_s"] for r in timed),
                      data_fraction=statistics.median(r["data_fraction"] for r in timed),
                      step_ms=statistics.median(r["step_ms"] for r in timed),
                      gpu_mem_peak_gib=max((r.get("gpu_mem_peak_gib", 0.0) for r in timed), default=0.0))
    model_config = exp / "model" / "config.yaml"
    if model_config.is_file():
        import yaml

        result["held_out_eer"] = (yaml.safe_load(model_config.read_text()).get("evaluation") or {}).get("eer")
    checks = [r for r in records if r["kind"] == "validation"]
    if result.get("held_out_eer") is None and checks:
        result["held_out_eer"] = checks[-1]["eer"]
    return result


def _describe_train(r: dict) -> str:
    text = f"{r.get('steps', 0)} steps"
    if "utt_per_s" in r:
        text += (f", {r['utt_per_s']:,.0f} utt/s, data wait {100 * r['data_fraction']:.1f} %, {r['step_ms']:.1f} ms "
                 f"compute/step, GPU memory peak {r['gpu_mem_peak_gib']:.1f} GiB")
    return text + (f", held-out EER {100 * r['held_out_eer']:.2f} %" if r.get("held_out_eer") is not None
                   else ", no EER")


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


# ---------------------------------------------------------------------------------------------- report
def targets(results: dict) -> dict:
    verdicts = {}
    train = results.get("sections", {}).get("real train", {})
    if "utt_per_s" in train:
        verdicts["ECAPA-512 real loop >= 8k utt/s"] = f"{train['utt_per_s']:,.0f} " + \
            ("met" if train["utt_per_s"] >= TARGETS["ecapa512_loop_utt_per_s"] else "MISSED")
        verdicts["data wait < 5 %"] = f"{100 * train['data_fraction']:.1f} % " + \
            ("met" if train["data_fraction"] < TARGETS["data_fraction"] else "MISSED")
    for name, row in results.get("sections", {}).items():
        if name.startswith("bench ecapa-1024") and "utt_per_s" in row:
            verdicts[f"ECAPA-1024 >= 4k utt/s ({name[6:]})"] = f"{row['utt_per_s']:,.0f} " + \
                ("met" if row["utt_per_s"] >= TARGETS["ecapa1024_utt_per_s"] else "MISSED")
    return verdicts


def table(results: dict) -> str:
    lines = [f"gpu_check on {results['device']} (torch {results['torch']}, {results['cores']} cores, "
             f"{results['seconds']:.0f} s of {results['budget']:.0f})", f"  {results['needs']}", f"  {results['compile']}"]
    lines += [f"  {row['row']}" for row in results["sections"].values()]
    lines += [f"  target {name}: {verdict}" for name, verdict in results.get("targets", {}).items()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="folder for gpu_check.json, logs and the run")
    parser.add_argument("--budget", type=float, default=None,
                        help=f"seconds for all sections together (default {BUDGET:.0f}: the check ends within 8 "
                             f"minutes; with --smoke {SMOKE_BUDGET:.0f}: inductor compiles C++ on a CPU)")
    parser.add_argument("--smoke", action="store_true", help="tiny sections, CPU allowed: checks this script")
    parser.add_argument("--prepare-corpus", type=Path, help=argparse.SUPPRESS)  # the corpus section's own process
    args = parser.parse_args()
    args.budget = args.budget or (SMOKE_BUDGET if args.smoke else BUDGET)
    if args.prepare_corpus:
        prepare_corpus(args.prepare_corpus, args.smoke)
        return 0
    if args.out is None:
        parser.error("--out is required")
    started = time.monotonic()
    missing = missing_needs()
    needs = (f"needs: all {len(NEEDS)} imports present" if not missing else
             f"needs: MISSING {', '.join(missing)} (install the bundle: {INSTALL_AND_RUN})")
    if "torch" in missing_needs({"torch": ("torch", None)}):
        print("gpu_check: torch is not installed; nothing was run", file=sys.stderr)
        return 2
    import torch

    if not torch.cuda.is_available() and not args.smoke:
        print("gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run", file=sys.stderr)
        return 2
    print(needs, flush=True)
    blocker = compile_blocker()
    compile_line = "compile: yes (C compiler and Python.h found)" if blocker is None else \
        f"compile: NO ({blocker}): Triton cannot build its launcher, so every section runs eagerly"
    print(compile_line, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    results: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu (smoke)",
                     "torch": torch.__version__, "cores": cores, "budget": args.budget, "needs": needs,
                     "compile": compile_line, "sections": {}}
    budget = Budget(args.budget)
    sections = [*bench_sections(args.out, args.smoke, blocker is None, cores), gpu_tests_section(args.out),
                corpus_section(args.out, args.smoke)]
    for section in sections + [None]:
        if section is None:  # the train section's config names the corpus the section before made
            section = train_section(args.out, args.smoke, blocker is None, cores)
        results["sections"][section.name] = run_section(section, budget, args.out)
        results["seconds"] = time.monotonic() - started
        results["targets"] = targets(results)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0 if all(row["status"] == "ok" for row in results["sections"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
