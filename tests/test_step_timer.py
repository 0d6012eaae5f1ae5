"""Data wait against compute: a slow loader shows up in metrics.jsonl, the progress fields and the summary."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml

from speakertrip.training.step_timer import StepTimer
from speakertrip.training.config import load_config
from speakertrip.training.trainer import train


def test_timer_splits_waiting_from_computing():
    timer = StepTimer(torch.device("cpu"))
    for wait, work in ((0.05, 0.01), (0.02, 0.03)):
        time.sleep(wait)
        timer.batch_ready()
        time.sleep(work)
        timer.step_done()
    window = timer.window()
    assert window.steps == 2
    assert 0.07 <= window.data_seconds < 0.07 + 0.05 and 0.04 <= window.compute_seconds < 0.04 + 0.05
    timer.batch_ready(), timer.step_done()
    assert timer.window().steps == 1  # a window starts where the last one ended
    time.sleep(0.05)
    timer.restart()  # validation or a checkpoint: not data wait
    timer.batch_ready(), timer.step_done()
    assert timer.window().data_seconds < 0.04


@pytest.fixture(scope="module")
def data(prepare_tiny_corpus):
    return prepare_tiny_corpus(num_speakers=6, seed=6)


def run(data, exp_dir) -> list[dict]:
    values = {"data.train": str(data), "data.crop_seconds": 0.5, "data.workers": 0, "data.batches_per_epoch": 4,
              "features.n_mels": 24, "model.options": {"channels": 16, "attention_channels": 8, "se_channels": 8,
                                                       "embedding_dim": 16},
              "loss.p": 2, "loss.k": 2, "loss.options": {"margin": 0.3, "hardest_negatives": 2},
              "train.exp_dir": str(exp_dir), "train.epochs": 1, "train.log_every": 2, "train.progress": False}
    train(load_config(None, [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                             for key, value in values.items()]))
    return [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()
            if json.loads(line)["kind"] == "step"]


@pytest.mark.slow
def test_a_slow_loader_is_data_wait(data, tmp_path, monkeypatch, capsys, one_thread):
    from speakertrip.data.datasets import TrainingBatches

    fast = run(data, tmp_path / "fast")
    read = TrainingBatches.__getitem__
    monkeypatch.setattr(TrainingBatches, "__getitem__", lambda self, items: time.sleep(0.4) or read(self, items))
    slow = run(data, tmp_path / "slow")
    assert [r["step"] for r in slow] == [2, 4]
    for record in slow:
        assert record["data_ms"] >= 400 and record["step_ms"] > 0 and 0 < record["data_fraction"] <= 1
        assert record["utt_per_s"] == pytest.approx(4 * 1000 / (record["data_ms"] + record["step_ms"]), rel=1e-6)
    assert max(r["data_ms"] for r in fast) < 200 and min(r["data_fraction"] for r in slow) > max(
        r["data_fraction"] for r in fast)
    assert "gpu_mem_peak_gib" not in slow[0]  # CUDA only
    summary = (tmp_path / "slow" / "summary.txt").read_text()
    assert "data wait" in summary and "% of step time" in summary and "utt/s" in summary


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_gpu_timer_uses_events_on_the_device_timeline():
    device = torch.device("cuda")
    timer = StepTimer(device)
    x = torch.randn(2048, 2048, device=device)
    torch.cuda.synchronize()
    time.sleep(0.1)  # the GPU idles: the batch is late
    timer.batch_ready()
    for _ in range(20):
        x = (x @ x).tanh()
    timer.step_done()
    window = timer.window()
    assert window.steps == 1 and window.data_seconds >= 0.09 and window.compute_seconds > 0
