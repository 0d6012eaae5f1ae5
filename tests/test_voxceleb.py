import shutil

import pytest
import soundfile as sf

from speakertrip.cli import main
from speakertrip.corpora.voxceleb import prepare_voxceleb
from speakertrip.data.trials import read_trials
from speakertrip.data.manifest import BadEntriesError, read_manifest
from speakertrip.errors import FormatError, SpeakertripError
from speakertrip.testing import make_voxceleb_tree


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_voxceleb_tree(tmp_path_factory.mktemp("vox"), num_speakers=4, sessions=2, utterances_per_session=2,
                              duration=(0.3, 0.5))


def copy_tree(tree, tmp_path, wav_parent):
    destination = tmp_path / "corpus"
    shutil.copytree(tree / "wav", destination / wav_parent if wav_parent else destination)
    shutil.copy(tree / "veri_test2.txt", destination / "veri_test2.txt")
    return destination


def keys_under(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.wav"))


def test_prepare_writes_manifest_trials_and_speaker_split(tree, tmp_path):
    paths = prepare_voxceleb(tree, tmp_path / "out", progress=False)
    assert set(paths) == {"utts", "train", "test", "veri_test2"}
    utterances = read_manifest(paths["utts"])
    assert [u.utt_id for u in utterances] == keys_under(tree / "wav")
    for utterance in utterances:
        assert utterance.spk_id == utterance.utt_id.split("/")[0]
        assert sf.info(utterance.path).frames == utterance.num_frames
    assert paths["veri_test2"].read_text() == (tree / "veri_test2.txt").read_text()
    train, test = read_manifest(paths["train"]), read_manifest(paths["test"])
    assert {u.spk_id for u in train} == {"id10001", "id10002"}
    assert {u.spk_id for u in test} == {"id10003", "id10004"}
    trials = read_trials(paths["veri_test2"], "voxceleb")
    trial_keys = set(trials.enroll) | set(trials.test)
    assert trial_keys <= {u.utt_id for u in test}


@pytest.mark.parametrize("wav_parent", ["wav", "", "dev/aac"])
def test_layouts_give_the_same_keys(tree, tmp_path, wav_parent):
    root = copy_tree(tree, tmp_path, wav_parent)
    paths = prepare_voxceleb(root, tmp_path / "out", progress=False)
    assert [u.utt_id for u in read_manifest(paths["utts"])] == keys_under(tree / "wav")
    assert "test" in paths


def test_cli_runs_and_rerun_gives_the_same_files(tree, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["prepare", "voxceleb", "--root", str(tree), "--out", str(out), "--workers", "2"]) == 0
    table = capsys.readouterr().out
    assert "train" in table and "veri_test2" in table and "speakers" in table
    first = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["prepare", "voxceleb", "--root", str(tree), "--out", str(out)]) == 0
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == first


def test_given_lists_and_vox1_e_lists(tree, tmp_path):
    trials = (tree / "veri_test2.txt").read_text().splitlines()
    whole = tmp_path / "list_test_all2.txt"
    whole.write_text("\n".join(trials[:3]) + "\n1 id10001/" + keys_under(tree / "wav")[0].split("/", 1)[1]
                     + " " + keys_under(tree / "wav")[1] + "\n")
    root = copy_tree(tree, tmp_path, "wav")
    (root / "veri_test2.txt").unlink()
    paths = prepare_voxceleb(root, tmp_path / "out", trials=[whole], progress=False)
    assert set(paths) == {"utts", "list_test_all2"}  # Vox1-E spans all speakers: no split
    renamed = tmp_path / "my_trials.txt"
    shutil.copy(tree / "veri_test2.txt", renamed)
    paths = prepare_voxceleb(root, tmp_path / "out2", trials=[renamed], progress=False)
    assert {"train", "test", "my_trials"} <= set(paths)


def test_bad_trial_lists_name_file_and_line(tree, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 id10001/a/00001.wav id10002/b/00001.wav\n2 x y\n")
    with pytest.raises(FormatError, match=r"bad.txt:2: expected label 1 or 0 first \(VoxCeleb trial list\), got '2'"):
        prepare_voxceleb(tree, tmp_path / "out", trials=[bad], progress=False)
    bad.write_text("1 id10001/a/00001.wav id10002/b/00001.wav\n")
    with pytest.raises(FormatError, match="trial key 'id10001/a/00001.wav' is not among the 16 utterances"):
        prepare_voxceleb(tree, tmp_path / "out", trials=[bad], progress=False)


def test_skip_bad_drops_files_and_their_trials(tree, tmp_path):
    root = copy_tree(tree, tmp_path, "wav")
    broken = keys_under(root / "wav")[-1]
    (root / "wav" / broken).write_bytes(b"RIFF....garbage")
    with pytest.raises(BadEntriesError, match=broken):
        prepare_voxceleb(root, tmp_path / "out", progress=False)
    paths = prepare_voxceleb(root, tmp_path / "out", skip_bad=True, progress=False)
    assert len(read_manifest(paths["utts"])) == 15
    listed, kept = (_rows(read_trials(path, "voxceleb")) for path in (root / "veri_test2.txt", paths["veri_test2"]))
    assert kept == [trial for trial in listed if broken not in trial[1:]] and len(kept) < len(listed)


def test_flac_trees_and_unconverted_m4a(tree, tmp_path):
    root = tmp_path / "flac"
    for key in keys_under(tree / "wav"):
        target = root / "wav" / key.replace(".wav", ".flac")
        target.parent.mkdir(parents=True, exist_ok=True)
        data, rate = sf.read(tree / "wav" / key, dtype="int16")
        sf.write(target, data, rate, subtype="PCM_16")
    paths = prepare_voxceleb(root, tmp_path / "out", trials=[tree / "veri_test2.txt"], progress=False)
    assert read_trials(paths["veri_test2"]).enroll[0].endswith(".flac")
    m4a = tmp_path / "vox2" / "dev" / "aac" / "id00012" / "21Uxsk56VDQ"
    m4a.mkdir(parents=True)
    (m4a / "00001.m4a").write_bytes(b"")
    with pytest.raises(SpeakertripError, match="holds 1 .m4a files: convert them first"):
        prepare_voxceleb(tmp_path / "vox2", tmp_path / "out", progress=False)


def _rows(trials) -> list[tuple[bool, str, str]]:
    return list(zip(trials.labels.tolist(), trials.enroll, trials.test))
