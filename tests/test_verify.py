import multiprocessing
import sqlite3

import numpy as np
import pytest
import torch

import speakertrip as st
from speakertrip.errors import AudioError, ConfigError, CorruptStoreError, KeyNotFoundError
from speakertrip.evaluation import DevCalibration, DevScores, evaluate_dev
from speakertrip.models import EmbeddingModel, load_model
from speakertrip.features import FeatureConfig
from speakertrip import testing
from speakertrip.testing import make_voxceleb_tree, write_bad_audio
from speakertrip.verification.enrolment_store import ModelMismatchError
from speakertrip.verification.verifier import Verifier


def tiny_model(seed=0, threshold=0.5):
    return testing.tiny_model(seed=seed, threshold=threshold)


@pytest.fixture(scope="module")
def artifact(tmp_path_factory):
    return tiny_model().save(tmp_path_factory.mktemp("model") / "model")


@pytest.fixture(scope="module")
def model(artifact):
    return load_model(artifact)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = make_voxceleb_tree(tmp_path_factory.mktemp("vox"), num_speakers=4, sessions=1, utterances_per_session=3,
                              duration=(0.5, 1.0), trial_list=False)
    speakers = {}
    for path in sorted((root / "wav").rglob("*.wav")):
        speakers.setdefault(path.parts[-3], []).append(path)
    return speakers


@pytest.fixture(scope="module")
def embeddings(model, files):
    return {spk: model.embed_batch(paths) for spk, paths in files.items()}


def unit(vector):
    return vector / np.linalg.norm(vector)


def store_rows(path):
    with sqlite3.connect(path) as db:
        return [db.execute(f"SELECT * FROM {t} ORDER BY id").fetchall() for t in ("speakers", "utterances", "cohort")]


def test_enroll_verify_identify_round_trip(model, files, embeddings, tmp_path):
    verifier = st.Verifier(model, store=tmp_path / "s.db")
    assert verifier.threshold == 0.5
    for speaker, paths in files.items():
        assert verifier.enroll(speaker, paths[:2]) == 2
    assert verifier.speakers() == sorted(files)
    speaker, test = "id10002", files["id10002"][2]
    centroid = unit(embeddings[speaker][:2].mean(axis=0))
    result = verifier.verify(speaker, test)
    assert result.score == pytest.approx(float(centroid @ embeddings[speaker][2]), abs=1e-5)
    assert result.cosine == result.score and result.threshold == 0.5
    assert result.accepted == (result.score >= 0.5)
    brute = sorted(((float(unit(embeddings[s][:2].mean(axis=0)) @ embeddings[speaker][2]), s) for s in files),
                   reverse=True)
    found = verifier.identify(test, top_k=3, open_set=False)
    assert [m.name for m in found] == [name for _, name in brute[:3]]
    np.testing.assert_allclose([m.score for m in found], [score for score, _ in brute[:3]], atol=1e-5)
    opened = verifier.identify(test, top_k=4)
    assert [m.name for m in opened] == [name for score, name in brute if score >= 0.5]
    strict = Verifier(model, store=verifier.store, threshold=1.01)
    assert strict.identify(test) == [] and not strict.verify(speaker, test).accepted


def test_enrol_again_replace_and_remove(model, files, embeddings, tmp_path):
    verifier = Verifier(model, store=tmp_path / "s.db")
    paths = files["id10001"]
    verifier.enroll("alice", paths[0])
    assert verifier.enroll("alice", paths[1:]) == 3
    np.testing.assert_allclose(verifier.store.centroid("alice"), unit(embeddings["id10001"].mean(axis=0)), atol=1e-6)
    assert verifier.enroll("alice", [paths[2]], replace=True) == 1
    np.testing.assert_allclose(verifier.store.centroid("alice"), embeddings["id10001"][2], atol=1e-6)
    verifier.remove("alice")
    assert verifier.speakers() == []


def test_threshold_comes_from_the_artifact_or_must_be_given(model, tmp_path):
    untrained = tiny_model(threshold=None)
    untrained.evaluation.clear()
    with pytest.raises(ConfigError, match="no calibrated threshold.*pass threshold="):
        Verifier(untrained, store=tmp_path / "a.db")
    assert Verifier(untrained, store=tmp_path / "a.db", threshold=0.3).threshold == 0.3
    with pytest.raises(ConfigError, match="threshold= calibrated on normalised scores"):
        Verifier(model, store=tmp_path / "b.db", norm="asnorm")
    with pytest.raises(ConfigError, match="unknown norm 'znorm'"):
        Verifier(model, store=tmp_path / "b.db", norm="znorm", threshold=1.0)


def test_asnorm_matches_a_loop(model, files, embeddings, tmp_path):
    verifier = Verifier(model, store=tmp_path / "s.db", norm="asnorm", threshold=1.0, cohort_top_n=4)
    verifier.enroll("a", files["id10001"])
    verifier.enroll("b", files["id10002"])
    with pytest.raises(ConfigError, match="needs a cohort"):
        verifier.verify("a", files["id10003"][0])
    cohort_paths = files["id10003"] + files["id10004"]
    assert verifier.enroll_cohort(cohort_paths) == 6
    cohort = np.concatenate([embeddings["id10003"], embeddings["id10004"]])

    def top_stats(vector):
        best = sorted(float(vector @ c) for c in cohort)[-4:]
        return np.mean(best), np.std(best)

    test = embeddings["id10002"][0]
    for name, spk in (("a", "id10001"), ("b", "id10002")):
        centroid = unit(embeddings[spk].mean(axis=0))
        raw = float(centroid @ test)
        (me, se), (mt, st_) = top_stats(centroid), top_stats(test)
        result = verifier.verify(name, files["id10002"][0])
        assert result.cosine == pytest.approx(raw, abs=1e-5)
        assert result.score == pytest.approx(0.5 * ((raw - me) / se + (raw - mt) / st_), abs=1e-3)
    ranked = verifier.identify(files["id10002"][0], top_k=2, open_set=False)
    assert [m.score for m in ranked] == sorted([m.score for m in ranked], reverse=True)


def test_bad_input_leaves_the_store_unchanged(model, files, tmp_path):
    path = tmp_path / "s.db"
    verifier = Verifier(model, store=path)
    verifier.enroll("alice", files["id10001"][:1])
    before = store_rows(path)
    bad = write_bad_audio(tmp_path / "bad")
    with pytest.raises(AudioError, match=r"corrupt\.wav"):
        verifier.enroll("alice", [files["id10001"][1], bad["corrupt"]])
    with pytest.raises(AudioError, match=r"missing\.wav"):
        verifier.enroll("bob", [bad["missing"]], replace=True)
    with pytest.raises(ConfigError, match="no utterances given"):
        verifier.enroll("bob", [])
    with pytest.raises(ConfigError, match="non-empty string"):
        verifier.enroll("", files["id10002"])
    with pytest.raises(KeyNotFoundError, match=r"'bob' is not enrolled .*\(1 speaker enrolled\)"):
        verifier.verify("bob", files["id10002"][0])
    with pytest.raises(KeyNotFoundError, match="did you mean alice"):
        verifier.verify("alicia", files["id10002"][0])
    with pytest.raises(AudioError, match=r"silent\.wav"):
        verifier.verify("alice", bad["silent"])
    assert store_rows(path) == before
    with pytest.raises(ModelMismatchError, match="enrolled with model"):
        Verifier(tiny_model(seed=1), store=path)
    with pytest.raises(ModelMismatchError):
        Verifier(tiny_model(seed=1), store=verifier.store)
    (tmp_path / "junk.db").write_bytes(b"\x00junk" * 300)
    with pytest.raises(CorruptStoreError, match=r"junk\.db: not a readable enrolment store"):
        Verifier(model, store=tmp_path / "junk.db")
    assert store_rows(path) == before


def _enrol_in_process(artifact, store, speaker, paths):
    Verifier(str(artifact), store=store).enroll(speaker, paths)


@pytest.mark.slow
def test_processes_enrolling_at_once_persist_everything(artifact, model, files, embeddings, tmp_path):
    store = tmp_path / "s.db"
    context = multiprocessing.get_context("spawn")
    jobs = [context.Process(target=_enrol_in_process, args=(artifact, store, spk, files[spk]))
            for spk in ("id10001", "id10002")]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join(120)
        assert job.exitcode == 0
    verifier = Verifier(model, store=store)
    assert verifier.speakers() == ["id10001", "id10002"]
    for spk in ("id10001", "id10002"):
        np.testing.assert_allclose(verifier.store.utterance_embeddings(spk)[1], embeddings[spk], atol=1e-5)


# ---- calibration, operating points and enrolment scoring -------------------------------------------------

def dev_scores_with_durations(seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat([1, 0], [2000, 20000])
    seconds = rng.choice([1.0, 2.0, 6.0], len(labels))
    scores = rng.normal(np.where(labels, 0.7, 0.3), 0.1 / np.sqrt(seconds))
    return scores, labels, seconds, seconds


def dev_calibration(seed=0):
    return DevCalibration.fit(DevScores(*dev_scores_with_durations(seed)))


@pytest.fixture(scope="module")
def calibrated_artifact(tmp_path_factory):
    model = tiny_model()
    dev = DevScores(*dev_scores_with_durations())
    model.evaluation.update(evaluate_dev(dev, "dev.txt").to_dict())
    return model.save(tmp_path_factory.mktemp("calibrated") / "model")


def test_calibration_travels_with_the_artifact(calibrated_artifact, model, files, embeddings, tmp_path):
    calibrated = load_model(calibrated_artifact)
    assert calibrated.identity == model.identity  # the evaluation is not part of the identity
    dev = DevCalibration.of_model(calibrated.evaluation)
    assert dev.to_dict() == dev_calibration().to_dict()
    store = tmp_path / "s.db"
    Verifier(model, store=store).enroll("a", files["id10001"][:2])  # a store made with the uncalibrated model
    verifier = Verifier(calibrated, store=store, far=0.01)
    assert verifier.operating_point == "far=0.01" and verifier.threshold == dev.scores.threshold_for_far(0.01)
    far, frr = verifier.dev_error_rates
    assert far <= 0.01 and far == pytest.approx(0.01, abs=1e-4)
    test = files["id10001"][2]
    result = verifier.verify("a", test)
    seconds = st.audio.audio_info(test).duration
    assert result.llr == pytest.approx(float(dev.quality([result.cosine], seconds, seconds)[0]))
    assert result.accepted == (result.score >= verifier.threshold)
    assert Verifier(calibrated, store=store, frr=0.05).threshold == dev.scores.threshold_for_frr(0.05)
    assert Verifier(calibrated, store=store).threshold == calibrated.evaluation["eer_threshold"]  # the dev EER's
    assert Verifier(calibrated, store=store, threshold=0.2).operating_point == "threshold"
    # identify decides "unknown" with the same operating point and reports the same LLR
    strict = Verifier(calibrated, store=store, far=0.001)
    matches = strict.identify(test, open_set=False)
    assert matches[0].llr == pytest.approx(result.llr) and matches[0].score == pytest.approx(result.score)
    assert strict.identify(test) == [m for m in matches if m.score >= strict.threshold]


def test_old_artifacts_behave_as_before(model, files, tmp_path):
    verifier = Verifier(model, store=tmp_path / "s.db")
    assert verifier.threshold == 0.5 and verifier.operating_point == "eer" and verifier.dev_error_rates is None
    verifier.enroll("a", files["id10001"][:2])
    assert verifier.verify("a", files["id10001"][2]).llr is None
    assert all(m.llr is None for m in verifier.identify(files["id10001"][2], open_set=False))
    with pytest.raises(ConfigError, match="far= needs the dev score summary of a calibrated model.*speakertrip "
                                          "calibrate --model"):
        Verifier(model, store=tmp_path / "s.db", far=0.01)


@pytest.mark.parametrize("options, message", [
    ({"far": 0}, "far must be a rate strictly between 0 and 1"),
    ({"far": 1.5}, "far must be a rate strictly between 0 and 1"),
    ({"far": float("nan")}, "far must be a rate strictly between 0 and 1"),
    ({"frr": 1.0}, "frr must be a rate strictly between 0 and 1"),
    ({"far": 0.01, "threshold": 0.5}, "at most one of threshold=, far= and frr= \\(got threshold and far\\)"),
    ({"far": 0.01, "frr": 0.01}, "at most one of"),
    ({"threshold": float("nan")}, "threshold must be a finite number"),
    ({"far": 1e-6}, "far=1e-06 needs at least 1000000 dev non-target trials"),
    ({"far": 0.01, "norm": "asnorm"}, "norm='asnorm' changes the score scale"),
    ({"scoring": "median"}, "unknown enrolment scoring 'median'; valid: centroid, mean, max, top3"),
])
def test_bad_operating_points_are_one_line_errors(calibrated_artifact, tmp_path, options, message):
    with pytest.raises(ConfigError, match=message) as error:
        Verifier(load_model(calibrated_artifact), store=tmp_path / "s.db", **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("method", ["mean", "max", "top3"])
def test_enrolment_scoring_matches_a_loop(model, files, embeddings, tmp_path, method):
    verifier = Verifier(model, store=tmp_path / "s.db", scoring=method)
    for speaker, paths in files.items():
        verifier.enroll(speaker, paths[:2] if speaker != "id10003" else paths)
    test = embeddings["id10002"][2]
    reduce = {"mean": np.mean, "max": np.max, "top3": lambda s: np.mean(np.sort(s)[::-1][:3])}[method]
    brute = {spk: float(reduce(embeddings[spk][:2 if spk != "id10003" else 3] @ test)) for spk in files}
    assert verifier.verify("id10001", files["id10002"][2]).score == pytest.approx(brute["id10001"], abs=1e-5)
    found = verifier.identify(files["id10002"][2], top_k=4, open_set=False)
    assert [m.name for m in found] == sorted(brute, key=lambda spk: -brute[spk])
    np.testing.assert_allclose([m.score for m in found], sorted(brute.values(), reverse=True), atol=1e-5)
