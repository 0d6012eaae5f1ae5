"""One meaning of ``--data`` (speakertrip.data.items): a folder's keys are relative paths and its speakers the
first folders; a manifest's are utt_id and spk_id. embed, calibrate and finetune read it the same way."""

from __future__ import annotations

import shutil

import pytest

from speakertrip.data.items import read_items
from speakertrip.data.manifest import read_manifest, write_manifest
from speakertrip.errors import ConfigError, SpeakertripError
from speakertrip.testing import make_voxceleb_tree


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = make_voxceleb_tree(tmp_path_factory.mktemp("items"), num_speakers=4, sessions=2, utterances_per_session=1,
                              duration=(0.3, 0.5), trial_list=False)
    return root / "wav"


def test_a_folder_gives_relative_keys_and_first_folder_speakers(folder):
    found = read_items(folder)
    expected = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.wav"))
    assert found.keys == expected and len(found) == 8
    assert found.speakers == [key.split("/")[0] for key in expected]
    assert found.items == [folder / key for key in expected] and all(p.is_absolute() for p in found.items)
    utterances = found.utterances(workers=2)
    assert [(u.utt_id, u.spk_id, u.path) for u in utterances] == list(zip(expected, found.speakers,
                                                                          map(str, found.items)))
    assert all(u.duration > 0 and u.sample_rate == 16000 for u in utterances)


def test_a_manifest_gives_its_utt_ids_and_speakers(folder, tmp_path):
    rows = read_items(folder).utterances()
    renamed = [row.__class__(f"u{i}", f"spk{i % 2}", row.path, row.duration, row.sample_rate, row.num_frames)
               for i, row in enumerate(rows)]
    manifest = write_manifest(renamed, tmp_path / "m.jsonl")
    found = read_items(manifest)
    assert found.keys == [f"u{i}" for i in range(8)] and found.speakers == [f"spk{i % 2}" for i in range(8)]
    assert found.items == read_manifest(manifest) == found.utterances()


def test_finetune_reads_a_folder_as_embed_does(folder, tmp_path):
    """Fine-tuning's train and dev manifests hold the keys and speakers that embed and calibrate see."""
    from speakertrip.training.finetune import prepare_finetune_data
    from speakertrip.training.finetune_config import FinetuneConfig

    paths = prepare_finetune_data(folder, tmp_path / "ft", FinetuneConfig(dev_speakers=2))
    rows = read_manifest(paths["train"]) + read_manifest(paths["dev"])
    found = read_items(folder)
    assert sorted((u.utt_id, u.spk_id) for u in rows) == sorted(zip(found.keys, found.speakers))


def test_folders_without_speakers_are_clear_errors(folder, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(folder, one / "wav")  # the speakers one level too deep: one speaker, "wav"
    assert set(read_items(one).speakers) == {"wav"}
    with pytest.raises(ConfigError, match=r"one folder, 'wav', so it is one speaker; give the folder whose "
                                          r"subfolders are the speakers"):
        read_items(one).utterances()
    loose = tmp_path / "loose"
    shutil.copytree(folder, loose)
    shutil.copy(next(folder.rglob("*.wav")), loose / "alone.wav")
    assert read_items(loose).speakers[0] is None
    with pytest.raises(ConfigError, match=r"1 audio file\(s\) lie directly in the folder, e.g. 'alone.wav'"):
        read_items(loose).utterances()
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpeakertripError, match="no audio files"):
        read_items(tmp_path / "empty")
    with pytest.raises(SpeakertripError, match="no such folder or manifest"):
        read_items(tmp_path / "missing")
    (tmp_path / "blank.jsonl").write_text("")
    with pytest.raises(SpeakertripError, match="lists no utterances"):
        read_items(tmp_path / "blank.jsonl")
