import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from speakertrip.cli import main
from speakertrip.models import EmbeddingModel, load_model
from speakertrip.data.items import read_items
from speakertrip.data.embedding_store import load_store
from speakertrip.features import FeatureConfig
from speakertrip.evaluation import DevCalibration
from speakertrip.testing import make_voxceleb_tree, write_bad_audio


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("cli")
    torch.manual_seed(0)
    EmbeddingModel(FeatureConfig(n_mels=24), "ecapa", {"channels": 32},
                   evaluation={"eer_threshold": 0.9}).eval().save(base / "model")
    root = make_voxceleb_tree(base / "vox", num_speakers=3, sessions=1, utterances_per_session=2,
                              duration=(0.5, 0.9), trial_list=False)
    files = sorted((root / "wav").rglob("*.wav"))
    return base, root / "wav", files


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_enroll_verify_identify_speakers(setup, capsys, tmp_path):
    base, _, files = setup
    model, store = base / "model", tmp_path / "s.db"
    status, out, _ = run(capsys, "enroll", "--model", model, "--store", store, "alice", files[0], files[1])
    assert status == 0 and "alice: 2 utterance(s) added, 2 enrolled; 1 speaker(s)" in out
    assert run(capsys, "enroll", "--model", model, "--store", store, "bob", files[2])[0] == 0
    status, out, _ = run(capsys, "verify", "--model", model, "--store", store, "alice", files[1])
    score = float(out.split("score=")[1].split()[0])
    assert status == 0 and out.startswith("accepted alice") and len(out.strip().splitlines()) == 1
    status, out, _ = run(capsys, "verify", "--model", model, "--store", store, "--threshold", "1.5", "alice", files[1])
    assert status == 1 and out.startswith("rejected alice") and f"score={score:.4f}" in out
    status, _, err = run(capsys, "verify", "--model", model, "--store", store, "carol", files[1])
    assert status == 2 and "'carol' is not enrolled" in err and "2 speakers enrolled" in err
    status, _, err = run(capsys, "verify", "--model", model, "--store", store, "alice", tmp_path / "nope.wav")
    assert status == 2 and "nope.wav" in err
    status, out, _ = run(capsys, "identify", "--model", model, "--store", store, files[1], "--top-k", "2")
    assert status == 0 and out.splitlines()[2].split()[-1] == "alice"
    status, out, _ = run(capsys, "identify", "--model", model, "--store", store, "--threshold", "1.5", files[1])
    assert status == 1 and out.startswith("unknown")
    status, out, _ = run(capsys, "speakers", "--store", store)
    assert status == 0 and [line.split()[:2] for line in out.splitlines()[2:]] == [["alice", "2"], ["bob", "1"]]


def test_enroll_errors_leave_store_alone(setup, capsys, tmp_path):
    base, _, files = setup
    model, store = base / "model", tmp_path / "s.db"
    assert run(capsys, "enroll", "--model", model, "--store", store, "alice", files[0])[0] == 0
    before = store.read_bytes() if not (tmp_path / "s.db-wal").exists() else None
    bad = write_bad_audio(tmp_path / "bad")
    status, _, err = run(capsys, "enroll", "--model", model, "--store", store, "alice", files[1], bad["empty"])
    assert status == 2 and "empty.wav" in err
    status, _, err = run(capsys, "enroll", "--model", model, "--store", store, "alice")
    assert status == 2 and "no audio files given for speaker 'alice'" in err
    status, out, _ = run(capsys, "speakers", "--store", store)
    assert out.splitlines()[2].split()[:2] == ["alice", "1"]
    if before is not None:
        assert store.read_bytes() == before
    other = tmp_path / "other"
    EmbeddingModel(FeatureConfig(n_mels=24), "ecapa", {"channels": 32}, evaluation={"eer_threshold": 0.5}).save(other)
    status, _, err = run(capsys, "verify", "--model", other, "--store", store, "alice", files[0])
    assert status == 2 and "enrolled with model" in err
    status, _, err = run(capsys, "speakers", "--store", tmp_path / "missing.db")
    assert status == 2 and "no enrolment store here" in err


def test_embed_folder_and_manifest(setup, capsys, tmp_path):
    base, wav, files = setup
    status, out, _ = run(capsys, "embed", "--model", base / "model", "--data", wav, "--out", tmp_path / "e.npz",
                         "--threads", "1", "--device", "cpu")
    assert status == 0 and "RTF" in out
    store = load_store(tmp_path / "e.npz")
    assert store.keys == [f.relative_to(wav).as_posix() for f in files]
    model = load_model(base / "model")
    np.testing.assert_allclose(store.embeddings, np.stack([model.embed(f) for f in files]), atol=1e-5)
    manifest = tmp_path / "utts.jsonl"
    manifest.write_text("".join(json.dumps({"utt_id": f"u{i}", "spk_id": f.parts[-3], "path": str(f),
                                            "duration": 0.7, "sample_rate": 16000, "num_frames": 11200}) + "\n"
                                for i, f in enumerate(files)))
    assert run(capsys, "embed", "--model", base / "model", "--data", manifest, "--out", tmp_path / "m")[0] == 0
    by_manifest = load_store(tmp_path / "m")
    assert by_manifest.keys == [f"u{i}" for i in range(len(files))]
    np.testing.assert_allclose(by_manifest.embeddings, store.embeddings, atol=1e-6)
    status, _, err = run(capsys, "embed", "--model", base / "model", "--data", tmp_path / "bad", "--out", tmp_path / "x.npz")
    assert status == 2 and "no such folder or manifest" in err
    (tmp_path / "empty").mkdir()
    with pytest.raises(Exception, match="no audio files"):
        read_items(tmp_path / "empty")


@pytest.mark.slow
def test_embed_sharded_over_torchrun_ranks(setup, tmp_path):
    base, wav, files = setup
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "speakertrip", "embed", "--model", str(base / "model"), "--data", str(wav),
               "--out", str(tmp_path / "e.npz"), "--threads", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    store = load_store(tmp_path / "e.npz")
    assert store.keys == [f.relative_to(wav).as_posix() for f in files]
    model = load_model(base / "model")
    np.testing.assert_allclose(store.embeddings, np.stack([model.embed(f) for f in files]), atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["e.npz"]


@pytest.fixture(scope="module")
def dev_tree(tmp_path_factory):
    """A labelled dev trial list (every pair of 24 utterances of 4 speakers) over an audio folder."""
    root = make_voxceleb_tree(tmp_path_factory.mktemp("dev"), num_speakers=4, sessions=2, utterances_per_session=3,
                              duration=(0.5, 1.5), seed=3, trial_list=False)
    keys = sorted(p.relative_to(root / "wav").as_posix() for p in (root / "wav").rglob("*.wav"))
    lines = [f"{int(a.split('/')[0] == b.split('/')[0])} {a} {b}" for i, a in enumerate(keys) for b in keys[i + 1:]]
    (root / "trials.txt").write_text("\n".join(lines) + "\n")
    return root


def test_calibrate_a_model_then_verify_at_a_false_accept_rate(setup, dev_tree, capsys, tmp_path):
    base, _, files = setup
    model, calibrated = base / "model", tmp_path / "calibrated"
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    status, out, _ = run(capsys, "calibrate", "--model", model, "--trials", dev_tree / "trials.txt",
                         "--data", dev_tree / "wav", "--out", calibrated)
    assert status == 0 and "dev trials      276 (60 targets, 216 non-targets)" in out
    assert "duration-aware: yes" in out and f"wrote {calibrated}" in out
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before  # the model is left unchanged
    original, copy = load_model(model), load_model(calibrated)
    assert copy.identity == original.identity and copy.evaluation["trials"] == 276
    assert copy.threshold != original.threshold  # the EER threshold of the calibration's dev trials, stored once
    dev = DevCalibration.of_model(copy.evaluation)
    assert dev.trials == 276 and dev.quality is not None and copy.evaluation["dev_trials"].endswith("trials.txt")

    store = tmp_path / "s.db"
    assert run(capsys, "enroll", "--model", model, "--store", store, "alice", files[0])[0] == 0  # old model's store
    status, out, _ = run(capsys, "verify", "--model", calibrated, "--store", store, "--far", "0.05", "alice", files[1])
    threshold = dev.scores.threshold_for_far(0.05)
    assert status in (0, 1) and f"threshold={threshold:.4f} (far=0.05, dev FAR" in out and " llr=" in out
    status, out, _ = run(capsys, "identify", "--model", calibrated, "--store", store, "--frr", "0.1", "--all", files[1])
    assert "operating point: threshold=" in out and "(frr=0.1" in out and out.splitlines()[2].split()[2] != "-"
    status, _, err = run(capsys, "verify", "--model", model, "--store", store, "--far", "0.05", "alice", files[1])
    assert status == 2 and "speakertrip calibrate --model" in err
    status, _, err = run(capsys, "verify", "--model", calibrated, "--store", store, "--far", "0", "alice", files[1])
    assert status == 2 and "far must be a rate strictly between 0 and 1" in err
    with pytest.raises(SystemExit) as exited:
        main(["verify", "--model", str(calibrated), "--store", str(store), "--far", "0.01", "--threshold", "0.5",
              "alice", str(files[1])])
    assert exited.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_calibrate_a_model_from_embeddings_and_bad_calls(setup, dev_tree, capsys, tmp_path):
    base, _, _ = setup
    model = base / "model"
    assert run(capsys, "embed", "--model", model, "--data", dev_tree / "wav", "--out", tmp_path / "e.npz")[0] == 0
    status, out, _ = run(capsys, "calibrate", "--model", model, "--trials", dev_tree / "trials.txt",
                         "--embeddings", tmp_path / "e.npz", "--out", tmp_path / "m")
    assert status == 0 and "duration-aware: no (no durations)" in out
    assert DevCalibration.of_model(load_model(tmp_path / "m").evaluation).quality is None
    status, _, err = run(capsys, "calibrate", "--model", model, "--trials", dev_tree / "trials.txt",
                         "--data", dev_tree / "wav", "--out", model)
    assert status == 2 and "is the model itself" in err
    status, _, err = run(capsys, "calibrate", "--model", model, "--trials", dev_tree / "trials.txt", "--out", tmp_path / "x")
    assert status == 2 and "exactly one of --data" in err
    status, _, err = run(capsys, "calibrate", "--trials", dev_tree / "trials.txt", "--out", tmp_path / "x")
    assert status == 2 and "give a labelled score file" in err
