"""Resuming: each rank's own generator states, checkpoints from jobs with more GPUs, another world size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from speakertrip.errors import ConfigError
from speakertrip.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from speakertrip.training.config import load_config, save_config
from speakertrip.training.trainer import train

REPO = Path(__file__).resolve().parents[1]
ENCODER = {"channels": 32, "attention_channels": 16, "se_channels": 16, "embedding_dim": 32, "dropout": 0.2}


@pytest.fixture(scope="module")
def data(prepare_tiny_corpus):
    return prepare_tiny_corpus(num_speakers=8, seed=5)


def arguments(train_manifest, exp_dir, **extra) -> list[str]:
    values = {"data.train": str(train_manifest), "data.crop_seconds": 0.5, "data.workers": 0,
              "data.batches_per_epoch": 2, "features.n_mels": 24, "features.spec_time_masks": 1,
              "model.options": ENCODER, "loss.p": 2, "loss.k": 2,
              "loss.options": {"margin": 0.3, "hardest_negatives": 2}, "schedule.kind": "constant",
              "schedule.warmup_steps": 0, "train.exp_dir": str(exp_dir), "train.epochs": 1,
              "train.progress": False, **extra}
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            for key, value in values.items()]


class FakeCuda:
    """Records what restore_rng_state hands to torch.cuda."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[int, torch.device]] = []
        monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: self.calls.append((int(state[0]), device)))


def test_a_checkpoint_with_more_gpu_states_than_gpus_restores(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    saved = {"torch": torch.get_rng_state(), "cuda": [torch.full((8,), index, dtype=torch.uint8) for index in range(8)]}
    restore_rng_state(saved, torch.device("cuda", 0))  # one GPU now, eight saved by an earlier version
    restore_rng_state(saved, torch.device("cuda", 3))
    restore_rng_state(saved, torch.device("cuda", 11))  # no saved state for this GPU: left as it is
    restore_rng_state({"torch": torch.get_rng_state(), "cuda": torch.full((8,), 5, dtype=torch.uint8)},
                      torch.device("cuda", 1))  # today's format: this rank's own GPU
    assert cuda.calls == [(0, torch.device("cuda", 0)), (3, torch.device("cuda", 3)), (5, torch.device("cuda", 1))]
    restore_rng_state(saved, torch.device("cpu"))  # a CPU run ignores GPU states
    assert len(cuda.calls) == 3 and set(rng_state(torch.device("cpu"))) == {"torch"}


def test_resume_from_an_eight_gpu_checkpoint_and_refuse_another_world_size(data, tmp_path):
    exp = train(load_config(None, arguments(data, tmp_path / "exp")))
    last = exp / "checkpoints" / "last.pt"
    checkpoint = load_checkpoint(last)
    assert checkpoint["world_size"] == 1 and len(checkpoint["rng"]["ranks"]) == 1
    torch.manual_seed(123)
    expected = torch.rand(3)  # what the CPU generator gives after a restore of this state
    checkpoint["rng"] = {"torch": torch.manual_seed(123).get_state(),
                         "cuda": [torch.zeros(16, dtype=torch.uint8)] * 8}  # the earlier format, 8 GPUs
    save_checkpoint(checkpoint, last)
    restore_rng_state(checkpoint["rng"], torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)
    with pytest.warns(UserWarning, match="changed config: train.epochs"):
        resumed = train(load_config(None, arguments(data, exp, **{"train.epochs": 2})), resume=True)
    assert load_checkpoint(resumed / "checkpoints" / "last.pt")["step"] == 4

    checkpoint = load_checkpoint(last)
    checkpoint["world_size"] = 2
    save_checkpoint(checkpoint, last)
    with pytest.raises(ConfigError, match=r"written by a run of 2 processes, this one has 1: .*--nproc_per_node 2"):
        train(load_config(None, arguments(data, exp, **{"train.epochs": 3})), resume=True)


def torchrun(config: Path, *extra: str) -> None:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "speakertrip", "train", str(config), *extra], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.slow
def test_ddp_resume_restores_every_ranks_generators(data, tmp_path):
    """Two gloo ranks with dropout and SpecAugment: stopping after epoch 1 and resuming ends on the weights of
    an uninterrupted run only if rank 1's generators continue too (DDP averages both ranks' gradients)."""
    straight = save_config(load_config(None, arguments(data, tmp_path / "straight", **{"train.epochs": 2})),
                           tmp_path / "straight.yaml")
    stopped = save_config(load_config(None, arguments(data, tmp_path / "stopped")), tmp_path / "stopped.yaml")
    torchrun(straight)
    torchrun(stopped)
    checkpoint = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    ranks = checkpoint["rng"]["ranks"]
    assert checkpoint["world_size"] == 2 and len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    torchrun(stopped, "--resume", "--train.epochs=2")
    final = load_checkpoint(tmp_path / "stopped" / "checkpoints" / "last.pt")
    expected = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    assert final["step"] == expected["step"] == 4
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
