import json
from pathlib import Path

import pytest
import soundfile as sf

from speakertrip.data.manifest import BadEntriesError, build_utterances, read_manifest, write_manifest
from speakertrip.errors import FormatError
from speakertrip.testing import make_voxceleb_tree, write_bad_audio


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_voxceleb_tree(tmp_path_factory.mktemp("vox"), num_speakers=2, sessions=1, trial_list=False)


def entries_of(root):
    return [(p.relative_to(root / "wav").as_posix(), p.relative_to(root / "wav").parts[0], p)
            for p in sorted((root / "wav").rglob("*.wav"))]


def test_build_write_read_round_trip(tree, tmp_path):
    utterances, problems = build_utterances(entries_of(tree), progress=False)
    assert problems == [] and len(utterances) == 4
    for utterance in utterances:
        info = sf.info(utterance.path)
        assert (utterance.num_frames, utterance.sample_rate) == (info.frames, info.samplerate)
        assert utterance.duration == pytest.approx(info.duration)
    path = write_manifest(utterances, tmp_path / "m" / "utts.jsonl")
    assert read_manifest(path) == utterances


def test_paths_relative_to_the_manifest_folder_read_back_as_the_files(tree, tmp_path):
    absolute, _ = build_utterances(entries_of(tree), progress=False)
    relative, _ = build_utterances(entries_of(tree), progress=False, relative_to=tmp_path / "m")
    assert all(not Path(u.path).is_absolute() and u.path.startswith("..") for u in relative)
    assert read_manifest(write_manifest(relative, tmp_path / "m" / "utts.jsonl")) == absolute


def test_written_rows_are_what_json_dumps_writes(tmp_path):
    """The hand-rolled row writer against json.dumps on random ids: quotes, escapes, control and non-ASCII text."""
    import numpy as np

    from speakertrip.data.manifest import Utterance

    rng = np.random.default_rng(0)
    alphabet = list('ab/"\\\n\t\x00\x1f\x7fé中\u2028\U0001f600 .-_') + ["id10001", "wav"]
    text = lambda: "".join(rng.choice(alphabet, rng.integers(1, 12)))  # noqa: E731
    utterances = [Utterance(text(), text(), text(), float(rng.uniform(1e-4, 1e4)), int(rng.integers(1, 96000)),
                            int(rng.integers(1, 2**40))) for _ in range(500)]
    path = write_manifest(utterances, tmp_path / "utts.jsonl")
    expected = "".join(json.dumps(vars(u), ensure_ascii=False) + "\n" for u in utterances)
    assert path.read_text(encoding="utf-8") == expected


def test_relative_paths_resolve_against_the_manifest_folder(tree, tmp_path):
    row = {"utt_id": "a", "spk_id": "s", "path": "wav/x.wav", "duration": 1.5, "sample_rate": 16000}
    (tmp_path / "utts.jsonl").write_text(json.dumps(row) + "\n\n")
    (utterance,) = read_manifest(tmp_path / "utts.jsonl")
    assert utterance.path == str(tmp_path / "wav" / "x.wav") and utterance.num_frames == 24000


def test_a_manifest_read_by_a_relative_path_and_rewritten_elsewhere_still_finds_its_files(tree, tmp_path,
                                                                                        monkeypatch):
    """The demo's fit/dev split: rows read through a path relative to the working folder, written into another."""
    utterances, _ = build_utterances(entries_of(tree), progress=False, relative_to=tmp_path / "out" / "data")
    write_manifest(utterances, tmp_path / "out" / "data" / "train.jsonl")
    monkeypatch.chdir(tmp_path)
    rows = read_manifest("out/data/train.jsonl")
    assert all(Path(u.path).is_absolute() and Path(u.path).is_file() for u in rows)
    split = read_manifest(write_manifest(rows[:2], tmp_path / "out" / "data" / "fit.jsonl"))
    assert [u.path for u in split] == [u.path for u in rows[:2]]


@pytest.mark.parametrize("line, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"utt_id": "a", "spk_id": "s", "path": "p"}', "missing keys: duration, sample_rate"),
    ('{"utt_id": "a", "spk_id": "s", "path": "p", "duration": 1, "sample_rate": 16000, "speaker": 1}',
     "unknown keys: speaker"),
    ('{"utt_id": "a", "spk_id": "s", "path": "p", "duration": "1", "sample_rate": 16000}', "duration must be a number"),
    ('{"utt_id": "a", "spk_id": "s", "path": "p", "duration": 1, "sample_rate": 16000.5}', "sample_rate must be int"),
    ('{"utt_id": "a", "spk_id": "s", "path": "p", "duration": -1, "sample_rate": 16000, "num_frames": 5}', "positive"),
])
def test_bad_rows_name_file_and_line(tmp_path, line, message):
    good = json.dumps({"utt_id": "z", "spk_id": "s", "path": "p", "duration": 1.0, "sample_rate": 16000})
    path = tmp_path / "utts.jsonl"
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(FormatError, match=message) as caught:
        read_manifest(path)
    assert str(caught.value).startswith(f"{path}:2: ")


def test_duplicate_ids_and_missing_manifest(tmp_path):
    row = json.dumps({"utt_id": "a", "spk_id": "s", "path": "p", "duration": 1.0, "sample_rate": 16000})
    (tmp_path / "utts.jsonl").write_text(f"{row}\n{row}\n")
    with pytest.raises(FormatError, match=r"utts.jsonl:2: duplicate utt_id 'a' \(first on line 1\)"):
        read_manifest(tmp_path / "utts.jsonl")
    with pytest.raises(FormatError, match="no such manifest file"):
        read_manifest(tmp_path / "nothing.jsonl")


def test_bad_files_listed_in_one_report_or_skipped(tree, tmp_path):
    bad = write_bad_audio(tmp_path / "bad")
    entries = entries_of(tree) + [(kind, "bad", path) for kind, path in bad.items()]
    entries.append((entries[0][0], "dup", entries[1][2]))
    with pytest.raises(BadEntriesError) as caught:
        build_utterances(entries, progress=False, deep=True, min_duration=0.1)
    report = str(caught.value)
    expected_bad = {"missing", "empty", "no_frames", "not_audio", "corrupt", "silent", "nan", "short", entries[0][0]}
    assert report.startswith(f"{len(expected_bad)} bad entries")
    assert {utt_id for utt_id, _ in caught.value.problems} == expected_bad
    assert "duplicate utt_id" in report and str(bad["corrupt"]) in report
    utterances, dropped = build_utterances(entries, skip_bad=True, progress=False, deep=True, min_duration=0.1)
    assert len(utterances) == 4 and len(dropped) == len(expected_bad)
    shallow, dropped = build_utterances(entries, skip_bad=True, progress=False)  # headers: silent passes; the
    assert {u.utt_id for u in shallow} >= {"silent", "short"}                    # float nan file is read anyway
    assert "nan" in {utt_id for utt_id, _ in dropped}
