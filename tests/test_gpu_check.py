"""scripts/gpu_check.py and scripts/gpu_bundle.py on a machine without CUDA: the answer without a GPU, the
preflight lines, sections that fail or time out as one row each, the budget, the bundle's version check."""

import importlib.util
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA answer")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run"]
    assert not (tmp_path / "out").exists()


def test_missing_needs_names_the_distributions_without_importing():
    needs = {"json": ("stdlib", "0"), "speakertrip_no_such_module": ("no-such-dist", "1.0"),
             "no_such_package.sub": ("another-dist", "2.0")}
    assert gpu_check.missing_needs(needs) == ["no-such-dist", "another-dist"]
    assert gpu_check.missing_needs({"numpy": ("numpy", "2")}) == []


def test_compile_blocker_names_a_missing_compiler(monkeypatch):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(gpu_check.shutil, "which", lambda name: None)
    assert gpu_check.compile_blocker().startswith("no C compiler (cc, gcc or clang)")
    monkeypatch.setattr(gpu_check.sysconfig, "get_paths", lambda: {"include": "/nonexistent/include"})
    monkeypatch.setenv("CC", sys.executable)  # any existing program stands for a compiler
    assert gpu_check.compile_blocker() == "no /nonexistent/include/Python.h"


def test_a_failing_and_a_hanging_section_are_one_row_each(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gpu_check, "MINIMUM_SECONDS", 1)
    budget = gpu_check.Budget(60)
    failing = gpu_check.Section("broken", 20, [sys.executable, "-c", "print('compiling'); raise SystemExit(3)"],
                                parse=lambda out, log, code: {"printed": log.strip()}, describe=lambda r: r["printed"])
    marker = tmp_path / "grandchild_alive"
    grandchild = tmp_path / "grandchild.py"
    grandchild.write_text(f"import time\ntime.sleep(4)\nopen({str(marker)!r}, 'w')\n")
    # the child starts a grandchild (as DataLoader workers are) and hangs: both are killed at the cap
    hanging = gpu_check.Section("hangs", 2, [sys.executable, "-c", (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, {str(grandchild)!r}]); time.sleep(60)")])
    fine = gpu_check.Section("fine", 20, [sys.executable, "-c", "print('ok')"], describe=lambda r: "all good")
    started = time.monotonic()
    rows = [gpu_check.run_section(section, budget, tmp_path) for section in (failing, hanging, fine)]
    assert time.monotonic() - started < 20
    assert [row["status"] for row in rows] == ["FAILED (exit 3)", "TIMED OUT (2 s)", "ok"]
    assert rows[0]["printed"] == "compiling" and "last line: compiling" in rows[0]["row"]
    assert rows[2]["row"].split()[-2:] == ["all", "good"]
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["broken", "hangs", "fine"]  # each row as its section ends
    time.sleep(max(0.0, started + 5 - time.monotonic()))  # past the moment the grandchild would have written
    assert not marker.exists(), "the timed-out section's grandchild was left running"


def test_no_time_left_skips_with_a_row(tmp_path):
    section = gpu_check.Section("late", 100, [sys.executable, "-c", "raise SystemExit(1)"])
    row = gpu_check.run_section(section, gpu_check.Budget(2), tmp_path)
    assert row["status"] == "skipped" and "no time left in the budget" in row["row"]


@pytest.mark.parametrize("smoke", [False, True])
def test_the_sections_fit_the_default_budget(tmp_path, smoke):
    sections = [*gpu_check.bench_sections(tmp_path, smoke, True, 16), gpu_check.gpu_tests_section(tmp_path),
                gpu_check.corpus_section(tmp_path, smoke), gpu_check.train_section(tmp_path, smoke, True, 16)]
    assert sum(section.cap for section in sections) <= (gpu_check.SMOKE_BUDGET if smoke else gpu_check.BUDGET)
    names = [section.name for section in sections]
    assert names[0] == "bench loader" and names[-1] == "real train"  # the benchmarks first
    assert all(("+compile" in name) == ("compile" in name) for name in names)


def test_without_a_compiler_every_variant_runs_eagerly(tmp_path):
    names = [section.name for section in gpu_check.bench_sections(tmp_path, False, False, 16)]
    assert names == ["bench loader", "bench ecapa-512:bf16", "bench ecapa-1024:bf16"]
    train = gpu_check.train_section(tmp_path, False, False, 16)
    import json

    assert json.loads((tmp_path / "train.yaml").read_text())["train"]["compile"] is False and train.cap > 0


def test_the_install_command_uses_the_bundle_only():
    command = gpu_check.INSTALL_AND_RUN
    assert "--no-index" in command and f"{gpu_check.BUNDLE}/*.whl" in command and "scripts/gpu_check.py" in command
    assert all(version for _, version in gpu_check.NEEDS.values())  # every need has the version to fetch


def _wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    path = folder / f"{name}-{version}-py3-none-any.whl"
    metadata = "\n".join([f"Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}",
                          *(f"Requires-Dist: {line}" for line in requires)]) + "\n"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", metadata)
    return path


def test_the_bundle_is_checked_against_torch_2_11(tmp_path):
    gpu_bundle = load("gpu_bundle")
    good = [_wheel(tmp_path, "alpha", "1.0", ["torch>=1.9", "beta==2.0", "gamma; python_version < '3.10'",
                                              "delta; extra == 'docs'", "epsilon>=1"]),
            _wheel(tmp_path, "beta", "2.0", [])]
    assert gpu_bundle.check_against_torch(good) == ["epsilon"]  # not bundled: listed, not an error
    bad = [*good, _wheel(tmp_path, "zeta", "1.0", ["torch>=2.12", "beta<2"])]
    with pytest.raises(SystemExit, match=r"zeta needs torch>=2.12, the bundle has torch 2.11.0\n  "
                                         r"zeta needs beta<2, the bundle has beta 2.0"):
        gpu_bundle.check_against_torch(bad)
