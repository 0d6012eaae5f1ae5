"""CN-Celeb preparation (CN-Celeb1 layout, CN-Celeb2 as training data) and multi-file enrolment in scoring."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from speakertrip.cli import main
from speakertrip.corpora.cnceleb import prepare_cnceleb
from speakertrip.errors import FormatError, KeyNotFoundError, SpeakertripError
from speakertrip.data.embedding_store import EmbeddingStore, save_store
from speakertrip.scoring import read_scores
from speakertrip.scoring.enrolment import enrolment_models, read_enrolment_map, with_enrolment_models
from speakertrip.testing import make_cnceleb2_tree, make_cnceleb_tree


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cnceleb")
    return {"cn1": make_cnceleb_tree(root / "CN-Celeb_flac", num_speakers=5, eval_speakers=2, duration=(0.3, 0.5)),
            "cn2": make_cnceleb2_tree(root / "CN-Celeb2_flac", num_speakers=2, utterances=2, duration=(0.3, 0.5))}


def manifest(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_writes_training_evaluation_trials_and_maps(corpus, tmp_path):
    paths = prepare_cnceleb(corpus["cn1"], tmp_path / "out", cnceleb2=corpus["cn2"], workers=2, progress=False)
    assert sorted(paths) == ["enroll_avg", "enroll_concat", "eval", "train", "trials"]
    train = manifest(paths["train"])
    assert sorted({u["spk_id"] for u in train}) == ["id00000", "id00001", "id00002", "id10000", "id10001"]
    assert len(train) == 3 * 4 + 2 * 2 and all(u["utt_id"] == f"{u['spk_id']}/{u['path'].rsplit('/', 1)[1]}"
                                               for u in train)
    evaluation = {u["utt_id"]: u["spk_id"] for u in manifest(paths["eval"])}
    assert evaluation == {
        "enroll/id00003-enroll.flac": "id00003", "enroll/id00004-enroll.flac": "id00004",
        **{f"test/{spk}-singing-01-00{n}.flac": spk for spk in ("id00003", "id00004") for n in (1, 2)},
        **{f"data/{spk}/interview-01-00{n}.flac": spk for spk in ("id00003", "id00004") for n in (1, 2)}}
    # CN-Celeb's trial list, keyed by enrolment id, in VoxCeleb's 'label enrol test' format
    listed = (corpus["cn1"] / "eval/lists/trials.lst").read_text().split("\n")[:-1]
    assert paths["trials"].read_text().splitlines() == [f"{label} {enroll} {test}" for enroll, test, label in
                                                       (line.split() for line in listed)]
    assert read_enrolment_map(paths["enroll_concat"]) == {
        "id00003-enroll": ["enroll/id00003-enroll.flac"], "id00004-enroll": ["enroll/id00004-enroll.flac"]}
    assert read_enrolment_map(paths["enroll_avg"]) == {
        f"{spk}-enroll": [f"data/{spk}/interview-01-001.flac", f"data/{spk}/interview-01-002.flac"]
        for spk in ("id00003", "id00004")}
    # every key a trial or a map names is in the evaluation manifest
    assert {key for keys in read_enrolment_map(paths["enroll_avg"]).values() for key in keys} <= set(evaluation)


def test_lists_naming_wav_find_the_flac_files(corpus, tmp_path):
    """The v1 release was wav: lists that say .wav resolve to the .flac files, keys follow the files."""
    root = shutil.copytree(corpus["cn1"], tmp_path / "cn1")
    for name in ("enroll.lst", "test.lst", "trials.lst", "enroll.map"):
        path = root / "eval/lists" / name
        path.write_text(path.read_text().replace(".flac", ".wav"))
    paths = prepare_cnceleb(root, tmp_path / "out", workers=2, progress=False)
    assert all(key.endswith(".flac") for keys in read_enrolment_map(paths["enroll_avg"]).values() for key in keys)
    assert paths["trials"].read_text().splitlines()[0] == "1 id00003-enroll test/id00003-singing-01-001.flac"
    assert len(manifest(paths["train"])) == 12  # no CN-Celeb2 given: CN-Celeb1 dev only


@pytest.mark.parametrize("name,text,message", [
    ("eval/lists/trials.lst", "id00003-enroll test/id00003-singing-01-001.flac\n",
     r"trials.lst:1: expected 'ENROLL_ID test/FILE 0\|1'"),
    ("eval/lists/trials.lst", "id00003-enroll test/id00003-singing-01-001.flac 1\nid00003-enroll x.flac 2\n",
     r"trials.lst:2: the label must be 0 or 1, got '2'"),
    ("eval/lists/trials.lst", "id00009-enroll test/id00003-singing-01-001.flac 1\n",
     r"trials.lst:1: enrolment id 'id00009-enroll' is not in .*enroll.lst"),
    ("eval/lists/trials.lst", "id00003-enroll test/id00003-missing.flac 1\n",
     r"trials.lst:1: 'test/id00003-missing.flac': no such audio file under .*eval"),
    ("eval/lists/enroll.map", "id00003-enroll id00003/nope.flac\n", r"enroll.map:1: 'id00003/nope.flac': no such"),
    ("eval/lists/enroll.map", "id00003-enroll\n", r"enroll.map:1: expected 'ENROLL_ID SPK/FILE...'"),
    ("eval/lists/enroll.lst", "", r"enroll.lst: the list is empty"),
    ("dev/dev.lst", "id00000\nid00042\n", r"dev.lst: speaker 'id00042' has no folder .*data/id00042"),
])
def test_malformed_lists_name_the_file_and_line(corpus, tmp_path, name, text, message):
    root = shutil.copytree(corpus["cn1"], tmp_path / "cn1")
    (root / name).write_text(text)
    with pytest.raises(FormatError, match=message):
        prepare_cnceleb(root, tmp_path / "out", workers=2, progress=False)
    assert not (tmp_path / "out").exists()  # nothing half-written


def test_wrong_roots_fail_clearly(corpus, tmp_path, capsys):
    with pytest.raises(FormatError, match=r"dev.lst: no such list \(is this the CN-Celeb1 root\?\)"):
        prepare_cnceleb(corpus["cn2"], tmp_path / "out", progress=False)
    with pytest.raises(SpeakertripError, match=r"speaker id00000 is in both CN-Celeb1 dev and CN-Celeb2"):
        prepare_cnceleb(corpus["cn1"], tmp_path / "out", cnceleb2=corpus["cn1"], progress=False)
    assert main(["prepare", "cnceleb", "--root", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out")]) == 2
    assert "nowhere: no such corpus folder (CN-Celeb1)" in capsys.readouterr().err


# ------------------------------------------------------------------------------- enrolment maps


def test_enrolment_models_are_means_of_unit_embeddings():
    rng = np.random.default_rng(0)
    store = EmbeddingStore([f"u{i}" for i in range(6)], rng.standard_normal((6, 5)).astype(np.float32))
    enrolments = {"a": ["u0", "u3", "u4"], "b": ["u1"], "c": ["u1", "u2"]}  # a file may serve two enrolments
    models = enrolment_models(store, enrolments)
    assert models.keys == ["a", "b", "c"]
    for enroll_id, keys in enrolments.items():
        units = [store.get(key) / np.linalg.norm(store.get(key)) for key in keys]
        np.testing.assert_allclose(models.get(enroll_id), np.mean(units, axis=0), rtol=1e-6)
    combined = with_enrolment_models(store, enrolments)
    assert combined.keys == store.keys + ["a", "b", "c"] and np.array_equal(combined.get("u2"), store.get("u2"))


def test_enrolment_map_errors(tmp_path):
    store = EmbeddingStore(["x.wav", "y.wav"], np.eye(2, dtype=np.float32), source="eval.npz")
    with pytest.raises(KeyNotFoundError, match=r"m.map: enrolment files not in the store: 1 of 2 keys not found: "
                                               r"'z.wav' in eval.npz"):
        with_enrolment_models(store, {"e": ["x.wav", "z.wav"]}, "m.map")
    with pytest.raises(FormatError, match=r"m.map: enrolment id 'x.wav' is also a key of the embedding store"):
        with_enrolment_models(store, {"x.wav": ["y.wav"]}, "m.map")
    path = tmp_path / "bad.map"
    path.write_text("e1 a.wav b.wav\ne2\n")
    with pytest.raises(FormatError, match=r"bad.map:2: expected 'ENROLL_ID KEY \[KEY ...\]'"):
        read_enrolment_map(path)
    path.write_text("\n\n")
    with pytest.raises(FormatError, match=r"bad.map: empty enrolment map"):
        read_enrolment_map(path)
    path.write_text("e1 a.wav\ne1 b.wav\n")  # Kaldi's utt2spk-like repeated ids add files
    assert read_enrolment_map(path) == {"e1": ["a.wav", "b.wav"]}
    path.write_text("\ufeffe1 a.wav\n", encoding="utf-8")  # a byte-order mark, as Windows editors write
    assert read_enrolment_map(path) == {"e1": ["a.wav"]}


def test_score_enroll_map_equals_a_store_holding_the_means(tmp_path, capsys):
    """`score --enroll-map` scores (cosine and AS-norm) as if the store held each enrolment's mean."""
    rng = np.random.default_rng(1)
    keys = [f"s{s}/u{u}.wav" for s in range(4) for u in range(3)]
    store = EmbeddingStore(keys, rng.standard_normal((12, 8)).astype(np.float32))
    cohort = EmbeddingStore([f"c{i}/x.wav" for i in range(10)], rng.standard_normal((10, 8)).astype(np.float32))
    enrolments = {f"s{s}-enroll": [f"s{s}/u0.wav", f"s{s}/u1.wav"] for s in range(4)}
    (tmp_path / "enroll.map").write_text("".join(f"{e} {' '.join(k)}\n" for e, k in enrolments.items()))
    (tmp_path / "trials.txt").write_text("".join(f"{int(s == t)} s{s}-enroll s{t}/u2.wav\n"
                                                 for s in range(4) for t in range(4)))
    save_store(store, tmp_path / "eval.npz")
    save_store(cohort, tmp_path / "cohort.npz")
    save_store(with_enrolment_models(store, enrolments), tmp_path / "with_means.npz")
    for norm in ([], ["--norm", "asnorm", "--cohort", str(tmp_path / "cohort.npz"), "--top-n", "4"]):
        common = ["score", "--trials", str(tmp_path / "trials.txt"), *norm]
        assert main([*common, "--embeddings", str(tmp_path / "eval.npz"), "--enroll-map",
                     str(tmp_path / "enroll.map"), "--out", str(tmp_path / "mapped.txt")]) == 0
        assert main([*common, "--embeddings", str(tmp_path / "with_means.npz"), "--out", str(tmp_path / "means.txt")]) == 0
        np.testing.assert_array_equal(read_scores(tmp_path / "mapped.txt").scores, read_scores(tmp_path / "means.txt").scores)
    mean = np.mean([store.get(k) / np.linalg.norm(store.get(k)) for k in enrolments["s2-enroll"]], axis=0)
    test = store.get("s2/u2.wav")
    assert main(["score", "--trials", str(tmp_path / "trials.txt"), "--embeddings", str(tmp_path / "eval.npz"),
                 "--enroll-map", str(tmp_path / "enroll.map"), "--out", str(tmp_path / "cosine.txt")]) == 0
    cosine = read_scores(tmp_path / "cosine.txt")
    row = cosine.enroll.index("s2-enroll") + 2
    assert cosine.test[row] == "s2/u2.wav"
    assert cosine.scores[row] == pytest.approx(mean @ test / np.linalg.norm(mean) / np.linalg.norm(test), abs=1e-6)
    capsys.readouterr()
    assert main(["score", "--trials", str(tmp_path / "trials.txt"), "--embeddings", str(tmp_path / "eval.npz"),
                 "--enroll-map", str(tmp_path / "missing.map")]) == 2
    assert "missing.map: no such enrolment map" in capsys.readouterr().err
