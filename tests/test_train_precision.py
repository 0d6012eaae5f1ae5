"""train.compile and bf16 autocast, run on the CPU: a few steps equal the eager fp32 run, same checkpoint keys, resume."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from speakertrip.training.checkpoint import load_checkpoint
from speakertrip.training.config import load_config
from speakertrip.training.trainer import train

pytestmark = pytest.mark.slow  # compiles graphs (inductor: C++ code generation)

ENCODERS = {"ecapa": {"channels": 16, "attention_channels": 8, "se_channels": 8, "embedding_dim": 16},
            "tdnn": {"channels": 16, "stats_channels": 32, "embedding_dim": 16}}


@pytest.fixture(scope="module")
def data(prepare_tiny_corpus):
    return prepare_tiny_corpus(num_speakers=6, seed=7)


def config(data, exp_dir, encoder="ecapa", **extra):
    values = {"data.train": str(data), "data.crop_seconds": 0.5, "data.workers": 0, "data.batches_per_epoch": 3,
              "features.n_mels": 24, "model.encoder": encoder, "model.options": ENCODERS[encoder],
              "loss.p": 3, "loss.k": 2, "loss.options": {"margin": 0.3, "hardest_negatives": 2},
              "schedule.kind": "constant", "schedule.warmup_steps": 0, "train.exp_dir": str(exp_dir),
              "train.epochs": 1, "train.log_every": 1, "train.progress": False, **extra}
    return load_config(None, [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                              for key, value in values.items()])


@pytest.fixture(scope="module")
def eager(data, tmp_path_factory):
    """The eager fp32 run of each encoder, trained once for both tests."""
    runs = {}

    def run(encoder):
        if encoder not in runs:
            runs[encoder] = train(config(data, tmp_path_factory.mktemp("eager") / "exp", encoder))
        return runs[encoder]

    return run


def losses(exp) -> list[float]:
    return [json.loads(line)["loss"] for line in (exp / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "step"]


@pytest.fixture
def aot_eager(monkeypatch):
    """Graph capture without code generation (docs/measurements.md: inductor's first CPU compile takes minutes)."""
    compiled = []
    original = torch.nn.Module.compile

    def compile_with_aot_eager(module, *args, **kwargs):
        compiled.append(type(module).__name__)
        return original(module, *args, **{**kwargs, "backend": "aot_eager"})

    monkeypatch.setattr(torch.nn.Module, "compile", compile_with_aot_eager)
    torch._dynamo.reset()
    yield compiled
    torch._dynamo.reset()


@pytest.mark.parametrize("encoder", ["ecapa", "tdnn"])
def test_compiled_training_equals_eager_and_resumes(data, tmp_path, eager, aot_eager, encoder):
    from torch._dynamo.utils import counters

    eager = eager(encoder)
    counters.clear()
    compiled = train(config(data, tmp_path / "compiled", encoder, **{"train.compile": True}))
    assert aot_eager == ["EcapaEncoder" if encoder == "ecapa" else "TdnnEncoder"]
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"], dict(counters["graph_break"])
    torch.testing.assert_close(losses(compiled), losses(eager), rtol=1e-4, atol=1e-5)
    expected = load_checkpoint(eager / "checkpoints" / "last.pt")["model"]
    state = load_checkpoint(compiled / "checkpoints" / "last.pt")["model"]
    assert list(state) == list(expected)  # no _orig_mod. in the keys: snapshots and artifacts load as before
    torch.testing.assert_close(state, expected, rtol=1e-3, atol=1e-4)
    with pytest.warns(UserWarning, match="changed config: train.epochs"):
        train(config(data, compiled, encoder, **{"train.compile": True, "train.epochs": 2}), resume=True)
    assert load_checkpoint(compiled / "checkpoints" / "last.pt")["step"] == 6


def test_inductor_compiled_training_equals_eager_and_resumes(data, tmp_path, eager):
    """``train.compile=true`` as a GPU run does it: inductor, here with its CPU backend (C++ through gcc).

    The TDNN only: its graph compiles in about 40 s on 2 cores; ECAPA's takes minutes (aot_eager above
    checks that its graph captures whole).
    """
    torch._dynamo.reset()
    reference = eager("tdnn")
    compiled = train(config(data, tmp_path / "inductor", "tdnn", **{"train.compile": True}))
    torch.testing.assert_close(losses(compiled), losses(reference), rtol=1e-4, atol=1e-5)
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")["model"]
    state = load_checkpoint(compiled / "checkpoints" / "last.pt")["model"]
    assert list(state) == list(expected)
    torch.testing.assert_close(state, expected, rtol=1e-3, atol=1e-4)
    with pytest.warns(UserWarning, match="changed config: train.epochs"):
        train(config(data, compiled, "tdnn", **{"train.compile": True, "train.epochs": 2}), resume=True)
    assert load_checkpoint(compiled / "checkpoints" / "last.pt")["step"] == 6
    torch._dynamo.reset()

@pytest.mark.parametrize("encoder", ["ecapa", "tdnn"])
def test_bf16_autocast_training_follows_fp32_and_resumes(data, tmp_path, eager, encoder):
    full = eager(encoder)  # train.amp auto: fp32 on the CPU
    half = train(config(data, tmp_path / "bf16", encoder, **{"train.amp": "bf16"}))
    assert losses(half)[0] == pytest.approx(losses(full)[0], rel=5e-2)  # same weights, bf16 encoder
    assert all(abs(a - b) <= 0.1 * max(1.0, abs(b)) for a, b in zip(losses(half), losses(full)))
    expected = load_checkpoint(full / "checkpoints" / "last.pt")["model"]
    state = load_checkpoint(half / "checkpoints" / "last.pt")["model"]
    assert list(state) == list(expected) and all(value.dtype == expected[key].dtype for key, value in state.items())
    with pytest.warns(UserWarning, match="changed config: train.epochs"):
        train(config(data, half, encoder, **{"train.amp": "bf16", "train.epochs": 2}), resume=True)
    assert load_checkpoint(half / "checkpoints" / "last.pt")["step"] == 6 and all(
        torch.isfinite(torch.tensor(losses(half))))


def test_compile_auto_is_eager_on_the_cpu(data, tmp_path, eager, aot_eager):
    """The recipes' ``compile: auto``: compiled on CUDA only, so a CPU run is the eager run, step for step."""
    run = train(config(data, tmp_path / "auto", "tdnn", **{"train.compile": "auto"}))
    assert aot_eager == [] and losses(run) == losses(eager("tdnn"))
    with pytest.raises(Exception, match="train.compile' must be bool or 'auto', got str 'gpu'"):
        config(data, tmp_path / "bad", "tdnn", **{"train.compile": "gpu"})
