"""`prepare voxceleb` at scale: cached headers (size + mtime), paths relative to the data root."""

from __future__ import annotations

import os
import shutil

import numpy as np
import soundfile as sf

import speakertrip.audio.headers as headers
from speakertrip.corpora.voxceleb import prepare_voxceleb
from speakertrip.data.datasets import CropDataset
from speakertrip.data.manifest import read_manifest
from speakertrip.testing import make_voxceleb_tree


def test_rerun_reads_only_new_or_changed_files_and_a_moved_root_still_works(tmp_path, monkeypatch):
    reads = []
    real = headers.audio_info
    monkeypatch.setattr(headers, "audio_info", lambda path: reads.append(os.path.basename(path)) or real(path))
    data_root = tmp_path / "data"
    tree = make_voxceleb_tree(data_root / "vox", num_speakers=4, sessions=2, utterances_per_session=2, seed=2)
    out = data_root / "prepared"
    first = prepare_voxceleb(tree, out, workers=2, progress=False)
    assert len(reads) == 16 and (out / "headers.tsv").is_file()
    utterances = read_manifest(first["utts"])
    rows = (out / "utts.jsonl").read_text()
    assert '"path": "../vox/' in rows and str(tmp_path) not in rows  # relative to the prepared folder

    reads.clear()
    prepare_voxceleb(tree, out, workers=2, progress=False)
    assert reads == []  # nothing changed: no header read
    changed = utterances[3]
    sf.write(changed.path, np.zeros(12345, np.int16), 16000, subtype="PCM_16")  # same name, new content
    added = tree / "wav" / "id10001" / "newvideo0001" / "00001.wav"
    added.parent.mkdir(parents=True)
    sf.write(added, np.zeros(8000, np.int16), 16000, subtype="PCM_16")
    reads.clear()
    prepare_voxceleb(tree, out, workers=2, progress=False)
    assert sorted(reads) == sorted([os.path.basename(changed.path), "00001.wav"])
    rerun = {u.utt_id: u for u in read_manifest(out / "utts.jsonl")}
    assert rerun[changed.utt_id].num_frames == 12345 and len(rerun) == 17

    moved = shutil.move(str(data_root), str(tmp_path / "mounted" / "elsewhere"))  # mv keeps sizes and mtimes
    moved_utts = read_manifest(os.path.join(moved, "prepared", "utts.jsonl"))
    assert all(u.path.startswith(moved) and os.path.isfile(u.path) for u in moved_utts)
    crop, _ = CropDataset(moved_utts, crop_seconds=0.2)[(0, 0)]
    assert len(crop) == 3200
    reads.clear()
    prepare_voxceleb(os.path.join(moved, "vox"), os.path.join(moved, "prepared"), workers=2, progress=False)
    assert reads == []  # the cache is keyed under the root: still valid after the move
