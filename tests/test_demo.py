import json

import numpy as np
import pytest
import torch

from speakertrip.corpora.synth import HELD_OUT_LANGUAGES
from speakertrip.data.manifest import read_manifest
from speakertrip.demo import QUICK, BASELINE, TRAINED, UNTRAINED, mean_logmel_embeddings, run_demo, split_held_out
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.scoring import read_trials
from speakertrip.testing import make_voxceleb_tree

pytestmark = pytest.mark.slow  # the module's fixture runs the quick demo


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True, progress=False)


def test_quick_demo_trains_a_model_that_beats_both_baselines(quick_demo):
    out, results = quick_demo
    assert set(results) == {TRAINED, UNTRAINED, BASELINE}
    assert results[TRAINED]["eer"] < results[UNTRAINED]["eer"]
    assert results[TRAINED]["eer"] < results[BASELINE]["eer"]
    for name in results:
        assert results[name]["trials"] == results[TRAINED]["trials"] > 0
    for made in ("det.png", "results.json", "speakers.db", "exp/curves.png", "exp/model/config.yaml"):
        assert (out / made).is_file(), made
    summary = json.loads((out / "results.json").read_text())
    assert summary["systems"] == results
    assert any("(genuine)" in line for line in summary["verify"])
    assert any("(impostor)" in line for line in summary["verify"])


def test_quick_demo_scores_only_held_out_speakers(quick_demo):
    out, _ = quick_demo
    data = out / "synth" / "data"
    trained_on = {u.spk_id for u in read_manifest(data / "train.jsonl")}
    dev = {u.spk_id for u in read_manifest(data / "dev.jsonl")}
    test = {u.spk_id for u in read_manifest(data / "test.jsonl")}
    assert (len(trained_on), len(dev), len(test)) == (QUICK.speakers - QUICK.dev_speakers - QUICK.test_speakers,
                                                      QUICK.dev_speakers, QUICK.test_speakers)
    trials = read_trials(data / "trials" / "veri_test2.txt")
    assert {key.split("/")[0] for key in trials.enroll + trials.test} == test
    assert not trained_on & test and not dev & test and not trained_on & dev
    dev_trials = read_trials(data / "dev_trials.txt")
    assert {key.split("/")[0] for key in dev_trials.enroll + dev_trials.test} == dev
    synth = json.loads((out / "synth" / "corpus" / "synth.json").read_text())
    voices = {voice["speaker"]: voice for voice in synth["speakers"]}
    assert set(synth["test_speakers"]) == dev | test  # dev speakers are held out like the test speakers
    assert all(voices[speaker]["language"] in HELD_OUT_LANGUAGES for speaker in dev | test)
    for listed in (trials, dev_trials):  # no trial twice, in either order
        pairs = [frozenset(pair) for pair in zip(listed.enroll, listed.test)]
        assert len(set(pairs)) == len(pairs)


def test_split_held_out_gives_the_last_speakers_to_the_test_and_the_others_to_dev(tmp_path):
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    root = make_voxceleb_tree(tmp_path / "vox", num_speakers=5, sessions=2, utterances_per_session=2)
    paths = prepare_voxceleb(root, tmp_path / "data", progress=False)
    utterances = read_manifest(paths["utts"])
    dev, dev_trials = split_held_out(utterances, 3, paths["test"], paths["veri_test2"])
    dev_rows, test_rows = read_manifest(dev), read_manifest(paths["test"])
    assert sorted(dev_rows + test_rows, key=lambda u: u.utt_id) == sorted(utterances, key=lambda u: u.utt_id)
    assert {u.spk_id for u in dev_rows} == {"id10001", "id10002"}
    assert {u.spk_id for u in test_rows} == {"id10003", "id10004", "id10005"}
    for rows, trials in ((dev_rows, dev_trials), (test_rows, paths["veri_test2"])):
        listed = read_trials(trials)
        assert {key.split("/")[0] for key in listed.enroll + listed.test} == {u.spk_id for u in rows}
        assert listed.labels.any() and not listed.labels.all()
    test_list, dev_list = read_trials(paths["veri_test2"]), read_trials(dev_trials)
    assert test_list.labels.sum() == (~test_list.labels.astype(bool)).sum()  # the test list is balanced
    every_pair = {frozenset((a.utt_id, b.utt_id)) for a in dev_rows for b in dev_rows if a.spk_id < b.spk_id}
    assert {frozenset(pair) for pair, label in zip(zip(dev_list.enroll, dev_list.test), dev_list.labels)
            if not label} == every_pair  # the dev list scores every non-target pair: its tail sets far=0.001


def test_mean_logmel_baseline_is_the_mean_unnormalised_log_mel(tmp_path):
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    root = make_voxceleb_tree(tmp_path / "vox", num_speakers=2, sessions=1, utterances_per_session=2)
    utterances = read_manifest(prepare_voxceleb(root, tmp_path / "data", progress=False)["utts"])
    embeddings = mean_logmel_embeddings(utterances, n_mels=24)
    frontend = LogMelFrontend(FeatureConfig(n_mels=24, mean_norm=False))
    import soundfile as sf

    for row, utterance in zip(embeddings, utterances):
        wave, _ = sf.read(utterance.path, dtype="float32")
        features, _ = frontend(torch.from_numpy(wave)[None])
        np.testing.assert_allclose(row, features[0].numpy().mean(0), rtol=1e-5, atol=1e-5)
