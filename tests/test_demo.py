import json

import numpy as np
import pytest
import torch

from speakertrip.data.manifest import read_manifest
from speakertrip.demo import BASELINE, TRAINED, UNTRAINED, mean_logmel_embeddings, run_demo, split_dev
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.scoring import read_trials
from speakertrip.testing import make_voxceleb_tree


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
    trained_on = {u.spk_id for u in read_manifest(data / "fit.jsonl")}
    dev = {u.spk_id for u in read_manifest(data / "dev.jsonl")}
    test = {u.spk_id for u in read_manifest(data / "test.jsonl")}
    trials = read_trials(data / "trials" / "veri_test2.txt")
    in_trials = {key.split("/")[0] for key in trials.enroll + trials.test}
    assert in_trials <= test
    assert not trained_on & test and not dev & test and not trained_on & dev
    dev_trials = read_trials(data / "dev_trials.txt")
    assert {key.split("/")[0] for key in dev_trials.enroll + dev_trials.test} <= dev


def test_split_dev_moves_whole_speakers(tmp_path):
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    root = make_voxceleb_tree(tmp_path / "vox", num_speakers=5, sessions=2, utterances_per_session=2)
    paths = prepare_voxceleb(root, tmp_path / "data", progress=False)
    utterances = read_manifest(paths["utts"])
    fit, dev, trials = split_dev(utterances, 2, tmp_path / "split")
    fit_rows, dev_rows = read_manifest(fit), read_manifest(dev)
    assert len(fit_rows) + len(dev_rows) == len(utterances)
    assert len({u.spk_id for u in dev_rows}) == 2
    assert not {u.spk_id for u in fit_rows} & {u.spk_id for u in dev_rows}
    labels = read_trials(trials).labels
    assert labels.any() and not labels.all()


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
