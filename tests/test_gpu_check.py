"""scripts/gpu_check.py on a machine without CUDA: one line, exit 2, nothing run."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine-without-CUDA answer")
def test_without_cuda_it_exits_2_with_one_line(tmp_path):
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", str(tmp_path / "out")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "gpu_check: needs a CUDA GPU (torch.cuda.is_available() is False); nothing was run"]
    assert not (tmp_path / "out").exists()
