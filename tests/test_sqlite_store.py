"""What only the SQLite store has to get right: its write-ahead log (a deleted speaker must never come back)
and a damaged file (every read is a CorruptStoreError, the CLI prints one line)."""

import gc
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakertrip.cli import main
from speakertrip.errors import CorruptStoreError
from speakertrip.testing import speech_like, tiny_model_artifact
from speakertrip.verification import open_store

REPO = Path(__file__).resolve().parents[1]


def enrolled_then_bob_removed(path: Path):
    """A store with alice, where bob was enrolled and then removed by another thread's connection."""
    store = open_store(path, "m", 4)
    store.add("alice", np.eye(4, dtype=np.float32)[:1], ["a.wav"])
    store.add("bob", np.eye(4, dtype=np.float32)[1:2], ["b.wav"])
    worker = threading.Thread(target=store.remove, args=("bob",))
    worker.start(), worker.join()
    return store


def test_close_folds_every_connections_log_into_the_file(tmp_path):
    store = enrolled_then_bob_removed(tmp_path / "s.db")
    assert Path(f"{tmp_path / 's.db'}-wal").stat().st_size > 0  # the removal lives in the log until then
    store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]
    (tmp_path / "copy").mkdir()
    shutil.copy(tmp_path / "s.db", tmp_path / "copy" / "s.db")  # the file alone, as a backup or a copy takes it
    with open_store(tmp_path / "copy" / "s.db") as copy:
        assert [s.name for s in copy.speakers()] == ["alice"]


def test_an_idle_store_folds_its_log_into_the_file_without_being_closed(tmp_path):
    store = open_store(tmp_path / "s.db", "m", 4, idle_checkpoint=0.2)
    other = open_store(tmp_path / "s.db", "m", 4)  # a connection stays open: SQLite alone would keep the log
    store.add("alice", np.eye(4, dtype=np.float32)[:1], ["a.wav"])
    store.add("bob", np.eye(4, dtype=np.float32)[1:2], ["b.wav"])
    store.remove("bob")
    deadline = time.monotonic() + 30
    while True:  # a copy of the file alone, as a backup or a killed service leaves it
        shutil.copy(tmp_path / "s.db", tmp_path / "copy.db")
        with sqlite3.connect(tmp_path / "copy.db") as db:
            try:
                names = [name for (name,) in db.execute("SELECT name FROM speakers")]
            except sqlite3.OperationalError:  # not even the tables are in the file yet
                names = None
        if names == ["alice"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert names == ["alice"]
    store.close(), other.close()


def test_a_store_let_go_after_its_idle_checkpoint_closes_without_the_garbage_collector(tmp_path):
    """The idle timer holds the store only until it has checkpointed: then dropping the last reference frees
    the store and its connection at once, as for any SQLite connection (no cycle left for the collector)."""
    store = open_store(tmp_path / "s.db", "m", 4, idle_checkpoint=0.05)
    store.add("alice", np.eye(4, dtype=np.float32)[:1], ["a.wav"])
    gone = weakref.ref(store)
    collecting = gc.isenabled()
    gc.disable()
    try:
        deadline = time.monotonic() + 30
        while store._timer is not None and time.monotonic() < deadline:  # the checkpoint has run
            time.sleep(0.02)
        del store
        assert gone() is None
    finally:
        if collecting:
            gc.enable()


def read_only_mount(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` is a read-only bind mount (root needs one: permissions do not
    stop root), or None where mount namespaces are not allowed."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return []
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-m", "sh", "-c", f"mount --bind -o ro {folder} {folder}"], capture_output=True).returncode:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {folder} {folder} && exec "$@"', "sh"]


READ = """
import sys
from speakertrip.errors import StoreError
from speakertrip.verification import open_store
try:
    print(",".join(s.name for s in open_store(sys.argv[1]).speakers()))
except StoreError as error:
    print("refused:", error)
"""


@pytest.mark.slow  # a Python process in a mount namespace for each case
@pytest.mark.parametrize("files, expected", [
    (["s.db"], "alice"),                                  # checkpointed: the file holds everything
    (["s.db", "s.db-wal", "s.db-shm"], "alice"),          # a log SQLite can read read-only
    (["s.db", "s.db-wal"], "refused: .*s.db: its write-ahead log s.db-wal holds changes not yet in the file"),
])
def test_a_read_only_copy_never_shows_a_removed_speaker(tmp_path, files, expected):
    store = enrolled_then_bob_removed(tmp_path / "s.db")
    folder = tmp_path / "ro"
    folder.mkdir()
    if files == ["s.db"]:
        store.close()
    for name in files:
        shutil.copy(tmp_path / name, folder / name)
    prefix = read_only_mount(folder)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", READ, str(folder / "s.db")], capture_output=True,
                              text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    finally:
        folder.chmod(0o755)
        store.close()
    assert done.returncode == 0, done.stderr
    assert re.match(expected, done.stdout), done.stdout
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)  # nothing written beside it


def test_a_damaged_store_fails_every_read_in_one_line(tmp_path, capsys):
    model = tiny_model_artifact(tmp_path / "model")
    from speakertrip.models import load_model

    identity = load_model(model).identity
    path = tmp_path / "s.db"
    rng = np.random.default_rng(0)
    with open_store(path, identity, 192) as store:
        store.add_many([(f"speaker{i:03d}", rng.normal(size=(2, 192)), ["a.wav", "b.wav"]) for i in range(300)])
    data = bytearray(path.read_bytes())
    data[8192:] = b"\xa5" * (len(data) - 8192)  # every page after the meta table's is garbage
    path.write_bytes(bytes(data))
    store = open_store(path, identity, 192)
    for read in (store.speakers, store.centroids, len, lambda s: s.search(np.ones(192), 3), store.check,
                 lambda s: s.centroid("speaker001"), lambda s: s.utterance_embeddings("speaker001"),
                 lambda s: s.add("new", np.ones((1, 192)), ["n.wav"]), lambda s: "speaker001" in s):
        with pytest.raises(CorruptStoreError, match=rf"{path}: not a readable enrolment store \(SQLite: .*malformed"):
            read(store) if read not in (store.speakers, store.centroids, store.check) else read()
    store.close()
    wav = tmp_path / "t.wav"
    sf.write(wav, speech_like(1, 1.5, seed=1), 16000)
    for argv in (["speakers", "--store", str(path)],
                 ["identify", "--model", str(model), "--store", str(path), str(wav)]):
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert err.count("\n") == 1 and "not a readable enrolment store" in err and not out
