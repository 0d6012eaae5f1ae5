"""The trainer end to end on tiny trees: smoke runs, overfitting, exact resume after SIGKILL, DDP, averaging."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from speakertrip.errors import ConfigError
from speakertrip.models import EmbeddingModel, load_model
from speakertrip.models import build_encoder, initialise
from speakertrip.evaluation import DevCalibration
from speakertrip.training.averaging import list_snapshots
from speakertrip.training.checkpoint import load_checkpoint
from speakertrip.training.config import load_config, save_config
from speakertrip.training.trainer import ActivityWatch, TrainingModule, train

ENCODERS = {"ecapa": {"channels": 32, "attention_channels": 16, "se_channels": 16, "embedding_dim": 32},
            "tdnn": {"channels": 32, "stats_channels": 64, "embedding_dim": 32}}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.testing import make_musan_tree, make_voxceleb_tree

    root = tmp_path_factory.mktemp("corpus")
    tree = make_voxceleb_tree(root / "vox", num_speakers=8, sessions=2, utterances_per_session=3,
                              duration=(0.6, 1.2), seed=3)
    paths = prepare_voxceleb(tree, root / "data", workers=2, progress=False)
    return {"train": paths["train"], "dev": paths["test"], "trials": paths["veri_test2"],
            "musan": make_musan_tree(root / "musan", files=1, duration=0.6)}


def overrides(data, exp_dir, encoder="ecapa", **extra) -> list[str]:
    values = {"data.train": data["train"], "data.crop_seconds": 0.5, "data.workers": 0, "data.batches_per_epoch": 3,
              "features.n_mels": 24, "model.encoder": encoder, "model.options": ENCODERS[encoder],
              "loss.p": 4, "loss.k": 2, "loss.options": {"margin": 0.3, "hardest_negatives": 2},
              "optim.lr": 0.003, "train.exp_dir": exp_dir, "train.epochs": 2, "train.log_every": 1,
              "train.average_last": 2, "train.progress": False, **extra}
    return [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
            if not isinstance(value, Path) else f"--{key}={value}" for key, value in values.items()]


def read_records(exp: Path) -> list[dict]:
    return [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("encoder", [pytest.param("ecapa", marks=pytest.mark.slow), "tdnn"])
def test_smoke_run_and_averaged_artifact(data, tmp_path, encoder):
    exp = train(load_config(None, overrides(data, tmp_path / "exp", encoder)))
    assert sorted(p.name for p in exp.iterdir()) == ["checkpoints", "config.yaml", "curves.png", "metrics.jsonl",
                                                     "model", "summary.txt"]
    assert "dev EER" not in (exp / "summary.txt").read_text() and "final loss" in (exp / "summary.txt").read_text()
    assert load_config(exp / "config.yaml").model.encoder == encoder  # the resolved config reloads
    records = read_records(exp)
    steps = [r for r in records if r["kind"] == "step"]
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(r["loss"]) and 0 <= r["active_fraction"] <= 1 and r["lr"] > 0 for r in steps)
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [1, 2]
    snapshots = list_snapshots(exp / "checkpoints")
    assert [p.name for p in snapshots] == ["snapshot_00000003.pt", "snapshot_00000006.pt"]
    # the artifact is the element-wise mean of the two epoch snapshots (brute force here)
    states = [load_checkpoint(p)["model"] for p in snapshots]
    reference = EmbeddingModel({"n_mels": 24}, encoder, ENCODERS[encoder])
    reference.load_state_dict({key: (states[0][key].double() + states[1][key].double()).div(2).to(value.dtype)
                               if value.is_floating_point() else states[1][key]
                               for key, value in states[1].items()})
    model = load_model(exp / "model")
    assert model.evaluation == {"averaged_steps": [3, 6]}
    waves = torch.randn(3, 8000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(waves), reference.eval()(waves), rtol=0, atol=1e-6)


@pytest.mark.parametrize("encoder", ["ecapa", "tdnn"])
def test_loss_falls_on_a_batch_it_overfits(data, encoder):
    from speakertrip.data.datasets import CropDataset, collate_crops
    from speakertrip.data.manifest import read_manifest
    from speakertrip.losses import build_loss

    torch.manual_seed(0)
    dataset = CropDataset(read_manifest(data["train"]), crop_seconds=0.5)
    batch = collate_crops([dataset[(index, 0)] for index in range(0, len(dataset), 2)])  # 4 speakers x 3
    model = EmbeddingModel({"n_mels": 24}, encoder, ENCODERS[encoder])
    module = TrainingModule(model, build_loss("multi_positive", margin=0.5, hardest_negatives=3))
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = module(batch.waveforms, batch.lengths, batch.labels, amp_dtype=None)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses


def _run_cli(arguments: list[str], **options) -> subprocess.Popen:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "speakertrip", *arguments], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **options)


@pytest.mark.slow
def test_resume_after_sigkill_reaches_the_same_weights(data, tmp_path):
    # dropout, SpecAugment (torch RNG) and noise augmentation (numpy RNG) all have to resume exactly
    # 40 steps: enough that the watcher below kills the run mid-way even when steps are fast
    extra = {"data.batches_per_epoch": 4, "train.epochs": 10, "train.checkpoint_every": 1,
             "model.options": {**ENCODERS["ecapa"], "dropout": 0.1},
             "features.spec_time_masks": 1, "features.spec_freq_masks": 1,
             "augment.musan": str(data["musan"]), "augment.weights": {"none": 1.0, "noise": 1.0}}
    killed = _run_cli(["train", str(save_config(load_config(None, overrides(data, tmp_path / "killed", **extra)),
                                                tmp_path / "killed.yaml"))])
    last = tmp_path / "killed" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and killed.poll() is None:
        if last.exists() and load_checkpoint(last)["step"] >= 5:  # mid-epoch 1
            killed.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    killed.wait()
    stopped_at = load_checkpoint(last)["step"]
    assert killed.returncode == -signal.SIGKILL and 5 <= stopped_at < 40, (killed.returncode, stopped_at)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        resumed = _run_cli(["train", str(tmp_path / "killed.yaml"), "--resume"])
        reference = train(load_config(None, overrides(data, tmp_path / "reference", **extra)))
    finally:
        torch.set_num_threads(threads)
    output, _ = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, output
    final = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    expected = load_checkpoint(reference / "checkpoints" / "last.pt")
    assert final["step"] == expected["step"] == 40
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
    losses = lambda exp: [r["loss"] for r in read_records(exp) if r["kind"] == "step"]  # noqa: E731
    assert losses(tmp_path / "killed") == losses(reference)


def test_validation_best_checkpoint_and_recorded_thresholds(data, tmp_path):
    exp = train(load_config(None, overrides(data, tmp_path / "exp", **{
        "data.dev": str(data["dev"]), "data.dev_trials": str(data["trials"]), "train.validate_every": 2})))
    records = read_records(exp)
    checks = [r for r in records if r["kind"] == "validation"]
    assert [r["step"] for r in checks] == [2, 4, 6]  # every 2 steps, none twice at the epoch end
    assert all(0 <= r["eer"] <= 1 and 0 <= r["min_dcf_0.01"] for r in checks)
    best = load_checkpoint(exp / "checkpoints" / "best.pt")
    assert best["best"]["eer"] == min(r["eer"] for r in checks)
    model = load_model(exp / "model")
    for key in ("eer", "eer_threshold", "min_dcf_0.01", "min_dcf_0.01_threshold", "min_dcf_0.05"):
        assert isinstance(model.evaluation[key], float), key
    assert model.threshold == model.evaluation["eer_threshold"]
    dev = DevCalibration.of_model(model.evaluation)  # fitted at the end of training on the same dev trials
    assert dev.trials == model.evaluation["trials"] and dev.quality is not None
    assert "eer_threshold" not in model.evaluation["calibration"]  # the threshold is stored once


def test_average_command_matches_single_snapshot(data, tmp_path):
    from speakertrip.cli import main

    exp = train(load_config(None, overrides(data, tmp_path / "exp", **{"train.epochs": 1})))
    assert main(["average", str(exp), "--last", "1", "--out", str(tmp_path / "one"), "--no-validate"]) == 0
    snapshot = load_checkpoint(list_snapshots(exp / "checkpoints")[-1])["model"]
    model = load_model(tmp_path / "one")
    for key, value in model.state_dict().items():
        assert torch.equal(value, snapshot[key]), key
    assert main(["average", str(tmp_path / "nowhere")]) == 2  # a clear error, not a traceback


def test_run_errors_are_clear(data, tmp_path):
    with pytest.raises(ConfigError, match=r"--resume: no checkpoint .*last.pt to resume from"):
        train(load_config(None, overrides(data, tmp_path / "new")), resume=True)
    (tmp_path / "old" / "checkpoints").mkdir(parents=True)
    (tmp_path / "old" / "checkpoints" / "last.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"already holds a run .*pass --resume"):
        train(load_config(None, overrides(data, tmp_path / "old")))
    with pytest.raises(ConfigError, match=r"data.dev and data.dev_trials go together"):
        train(load_config(None, overrides(data, tmp_path / "x", **{"data.dev": str(data["dev"])})))
    with pytest.raises(ConfigError, match=r"unknown option 'margn'"):
        train(load_config(None, overrides(data, tmp_path / "y", **{"loss.options": {"margn": 0.2}})))


def test_init_from_artifact_and_speechbrain_checkpoint(tmp_path):
    source = EmbeddingModel({"n_mels": 24}, "ecapa", ENCODERS["ecapa"])
    source.save(tmp_path / "pretrained")
    fresh = EmbeddingModel({"n_mels": 24}, "ecapa", ENCODERS["ecapa"])
    initialise(fresh, tmp_path / "pretrained")
    assert fresh.identity == source.identity
    encoder = build_encoder("ecapa", 24, ENCODERS["ecapa"])
    torch.save(encoder.state_dict(), tmp_path / "embedding_model.ckpt")  # SpeechBrain's checkpoint format
    initialise(fresh, tmp_path / "embedding_model.ckpt")
    for key, value in encoder.state_dict().items():
        assert torch.equal(fresh.encoder.state_dict()[key], value)
    with pytest.raises(ConfigError, match=r"neither a model directory nor a checkpoint file"):
        initialise(fresh, tmp_path / "missing")


def test_activity_watch_warns_once_after_patience():
    watch = ActivityWatch(warmup=10, patience=20)
    assert not any(watch.update(step, 0.0) for step in range(0, 11))  # warmup
    assert [watch.update(step, f) for step, f in [(20, 0.0), (30, 0.5), (40, 0.0), (59, 0.0), (60, 0.0),
                                                  (80, 0.0)]] == [False, False, False, False, True, False]


@pytest.mark.slow
def test_ddp_two_cpu_processes(data, tmp_path):
    config = save_config(load_config(None, overrides(data, tmp_path / "ddp", **{"loss.p": 2, "train.epochs": 1})),
                         tmp_path / "ddp.yaml")
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "speakertrip", "train", str(config)], cwd=REPO, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    records = read_records(tmp_path / "ddp")
    assert [r for r in records if r["kind"] == "epoch"] == [{"kind": "epoch", "step": 3, "epoch": 1,
                                                             "world_size": 2, "batch": 8}]
    assert len([r for r in records if r["kind"] == "step"]) == 3  # rank 0 logs once per step
    assert load_model(tmp_path / "ddp" / "model").embedding_dim == 32
