"""Fault injection for the promises the README makes: a kill during enrolment, a full disk during a save,
two processes enrolling and removing the same speaker at once."""

from __future__ import annotations

import errno
import io
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from speakertrip.errors import SpeakertripError
from speakertrip.verification.stores import open_store

REPO = Path(__file__).resolve().parents[1]
DIM = 8


def run_python(code: str, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


ENROL_FOREVER = """
    import sys, numpy as np
    from speakertrip.verification.stores import open_store
    store = open_store(sys.argv[1], model_identity="m", embedding_dim=8)
    rng = np.random.default_rng(0)
    for i in range(100000):
        count = 1 + i % 5
        store.add(f"s{i:05d}", rng.normal(size=(count, 8)), [f"u{i}_{j}.wav" for j in range(count)])
        print(i, flush=True)
"""


def check_consistent(path: Path) -> list[str]:
    """Every speaker holds exactly its utterances and their centroid; no orphan rows; returns the names."""
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM utterances WHERE speaker_id NOT IN (SELECT id FROM speakers)"
                      ).fetchone()[0] == 0
    db.close()
    with open_store(path, create=False) as store:
        names = [info.name for info in store.speakers()]
        for info in store.speakers():
            sources, embeddings = store.utterance_embeddings(info.name)
            assert len(sources) == info.num_utterances
            mean = embeddings.astype(np.float64).mean(axis=0)
            np.testing.assert_allclose(store.centroid(info.name), mean / np.linalg.norm(mean), rtol=1e-5, atol=1e-6)
    return names


@pytest.mark.parametrize("after", [1, 25, 80])
@pytest.mark.slow
def test_sigkill_during_enrolment_leaves_the_store_before_or_after(tmp_path, after):
    path = tmp_path / "s.db"
    process = run_python(ENROL_FOREVER, str(path))
    lines = [process.stdout.readline() for _ in range(after)]  # enrolling is under way: kill it now
    process.send_signal(signal.SIGKILL)
    rest = process.stdout.read()  # not communicate(): it would skip what readline() buffered
    process.wait()
    process.stderr.close()
    committed = len(lines) + len(rest.split())  # add() calls that returned before the kill
    names = check_consistent(path)
    # exactly the calls that returned, or one more (killed after COMMIT, before its print)
    assert names == [f"s{i:05d}" for i in range(len(names))]
    assert len(names) in (committed, committed + 1)
    with open_store(path, model_identity="m", embedding_dim=DIM) as store:  # and it stays writable
        store.add("after", np.ones((1, DIM)), ["x.wav"])


REMOVE_AND_ENROL = """
    import sys, numpy as np
    from speakertrip.errors import KeyNotFoundError
    from speakertrip.verification.stores import open_store
    store = open_store(sys.argv[1], model_identity="m", embedding_dim=8, timeout=30)
    rng = np.random.default_rng(int(sys.argv[2]))
    for i in range(150):
        if sys.argv[2] == "0":
            store.add("alice", rng.normal(size=(2, 8)), ["a.wav", "b.wav"], replace=i % 2 == 0)
        else:
            try:
                store.remove("alice")
            except KeyNotFoundError:
                pass
    print("done")
"""


@pytest.mark.slow
def test_enrol_and_remove_of_one_speaker_from_two_processes(tmp_path):
    path = tmp_path / "s.db"
    with open_store(path, model_identity="m", embedding_dim=DIM) as store:
        store.add("bob", np.ones((1, DIM)), ["bob.wav"])
    processes = [run_python(REMOVE_AND_ENROL, str(path), str(role)) for role in (0, 1)]
    for process in processes:
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, err
        assert out.strip() == "done"
    names = check_consistent(path)
    assert "bob" in names and set(names) <= {"alice", "bob"}
    assert not list(tmp_path.glob("s.db-*")), "WAL side files remain after the last connection closed"


class FullDisk(io.RawIOBase):
    """A file that takes ``room`` bytes, then fails as a full disk does."""

    def __init__(self, path, mode, **kwargs):
        self.inner, self.room = open(path, mode, **kwargs), 64

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.inner.write(data)

    def writable(self):
        return True

    def fileno(self):
        return self.inner.fileno()

    def close(self):
        self.inner.close()
        super().close()


def test_full_disk_during_checkpoint_save_keeps_the_previous_file(tmp_path, monkeypatch):
    from speakertrip.training.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(3)}, "step": 1}, path)
    before = path.read_bytes()
    monkeypatch.setattr("speakertrip.atomic.open", FullDisk, raising=False)
    with pytest.raises(SpeakertripError, match=rf"{path}: could not write the checkpoint \(No space left on device\)"):
        save_checkpoint({"model": {"w": torch.zeros(1000)}, "step": 2}, path)
    assert path.read_bytes() == before and load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"], "a partial temporary file was left"


def test_full_disk_during_artifact_save_keeps_both_previous_files(tmp_path, monkeypatch):
    from speakertrip.models import load_model
    from speakertrip.testing import tiny_model_artifact

    directory = tiny_model_artifact(tmp_path / "model", threshold=0.25)
    before = {p.name: p.read_bytes() for p in directory.iterdir()}
    other = load_model(tiny_model_artifact(tmp_path / "other", seed=1, threshold=0.75))
    monkeypatch.setattr("speakertrip.atomic.open", FullDisk, raising=False)
    with pytest.raises(SpeakertripError, match=rf"{directory}: could not write the model artifact \(No space left"):
        other.save(directory)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == before
    assert load_model(directory).threshold == 0.25
