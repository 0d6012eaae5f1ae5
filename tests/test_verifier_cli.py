import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from speakertrip.cli import main
from speakertrip.extraction import find_items
from speakertrip.extraction.store import load_store
from speakertrip.features import FeatureConfig
from speakertrip.extraction import EmbeddingModel, load_model
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
        find_items(tmp_path / "empty")


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
