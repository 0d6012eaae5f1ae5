"""Cosine scoring and score normalisation against per-trial loops; cohorts; top-n selection."""

import numpy as np
import pytest

from speakertrip import scoring
from speakertrip.errors import ConfigError, FormatError, KeyNotFoundError
from speakertrip.data.embedding_store import EmbeddingStore
from speakertrip.scoring.cosine import _cosine_scores_torch
from speakertrip.scoring.norm import _cohort_stats_torch


def make_case(seed=0, utterances=30, dim=8, trials=80, cohort=40):
    rng = np.random.default_rng(seed)
    keys = [f"id{i % 6:05d}/v/{i}.wav" for i in range(utterances)]
    store = EmbeddingStore(keys, rng.normal(size=(utterances, dim)).astype(np.float32) * rng.uniform(0.5, 3))
    pairs = rng.integers(0, utterances, size=(trials, 2))
    labels = np.array([keys[a][:7] == keys[b][:7] for a, b in pairs])
    labels[:2] = [True, False]
    trial_list = scoring.Trials([keys[a] for a, _ in pairs], [keys[b] for _, b in pairs], labels, "voxceleb")
    return store, trial_list, rng.normal(size=(cohort, dim)).astype(np.float32)


def cosine(a, b):
    return float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b))


def loop_stats(x, cohort, top_n):
    values = sorted((cosine(x, c) for c in cohort), reverse=True)[:top_n or len(cohort)]
    return np.mean(values), np.std(values)


def loop_norm(store, trials, cohort, method, top_n):
    out = []
    for e, t in zip(trials.enroll, trials.test):
        score = cosine(store.get(e), store.get(t))
        (me, se), (mt, st) = loop_stats(store.get(e), cohort, top_n), loop_stats(store.get(t), cohort, top_n)
        z, tn = (score - me) / se, (score - mt) / st
        out.append({"znorm": z, "tnorm": tn, "snorm": (z + tn) / 2, "asnorm": (z + tn) / 2}[method])
    return np.array(out)


def test_cosine_scores_match_a_loop():
    store, trials, _ = make_case()
    expected = [cosine(store.get(e), store.get(t)) for e, t in zip(trials.enroll, trials.test)]
    scores = scoring.score_trials(trials, store, chunk_size=7)  # several chunks, one partial
    assert scores.dtype == np.float32
    np.testing.assert_allclose(scores, expected, atol=1e-6)
    on_torch = _cosine_scores_torch(scoring.trial_embeddings(trials, store), "cpu", 7)  # the GPU code, on CPU
    np.testing.assert_allclose(on_torch, expected, atol=1e-6)


@pytest.mark.parametrize("method, top_n", [("znorm", None), ("tnorm", None), ("snorm", None), ("asnorm", 5),
                                           ("snorm", 10), ("asnorm", 40)])
def test_normalisation_matches_a_per_trial_loop(method, top_n):
    store, trials, cohort = make_case(seed=1)
    embedded = scoring.trial_embeddings(trials, store)
    raw = scoring.cosine_scores(embedded)
    expected = loop_norm(store, trials, cohort, method, top_n)
    np.testing.assert_allclose(scoring.normalize_trial_scores(raw, embedded, cohort, method, top_n), expected,
                               rtol=1e-5, atol=1e-5)
    enroll = store.embeddings[store.index_of(trials.enroll)]
    test = store.embeddings[store.index_of(trials.test)]
    np.testing.assert_allclose(scoring.normalize_scores(raw, enroll, test, cohort, method, top_n), expected,
                               rtol=1e-5, atol=1e-5)


def test_asnorm_defaults_to_top_300_and_torch_path_agrees():
    rng = np.random.default_rng(2)
    embeddings, cohort = rng.normal(size=(50, 8)), rng.normal(size=(700, 8))
    ours = scoring.cohort_stats(embeddings, cohort, top_n=300, chunk_size=16)
    unit = scoring.l2_normalize(embeddings)
    torch_stats = _cohort_stats_torch(unit, scoring.l2_normalize(cohort), 300, "cpu", 16)  # the GPU code, on CPU
    np.testing.assert_allclose(ours.mean, torch_stats.mean, atol=1e-6)
    np.testing.assert_allclose(ours.std, torch_stats.std, atol=1e-6)
    expected = np.array([loop_stats(x, cohort, 300) for x in embeddings[:5]])
    np.testing.assert_allclose(np.c_[ours.mean[:5], ours.std[:5]], expected, atol=1e-6)
    default = scoring.normalize_scores(np.zeros(3), embeddings[:3], embeddings[3:6], cohort, "asnorm")
    explicit = scoring.normalize_scores(np.zeros(3), embeddings[:3], embeddings[3:6], cohort, "asnorm", top_n=300)
    np.testing.assert_array_equal(default, explicit)


def test_speaker_mean_cohort():
    store = EmbeddingStore(["s1/v/1.wav", "s2/v/1.wav", "s1/w/2.wav"],
                           np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 2.0]], dtype=np.float32))
    means = scoring.speaker_means(store)
    assert means.keys == ["s1", "s2"]
    np.testing.assert_allclose(means.embeddings, [[0.5, 0.5], [0.0, 1.0]])
    with pytest.raises(FormatError, match="cannot tell the speaker of key 'flat.wav'"):
        scoring.speaker_means(EmbeddingStore(["flat.wav"], np.ones((1, 2))))


def test_missing_keys_are_counted_and_can_be_dropped():
    store, trials, _ = make_case()
    broken = scoring.Trials(trials.enroll[:3] + ["ghost/a.wav", "ghost/b.wav"],
                            trials.test[:3] + [trials.test[0], "ghost/a.wav"], None, "unlabeled", "t.txt")
    with pytest.raises(KeyNotFoundError, match=r"2 of \d+ keys of t\.txt not found: 'ghost/a\.wav', 'ghost/b\.wav'; "
                                               r"2 trials use them \(pass --skip-missing"):
        scoring.score_trials(broken, store)
    missing = scoring.find_missing(broken, store)
    assert missing.tolist() == [False, False, False, True, True]
    assert len(scoring.score_trials(broken.subset(~missing), store)) == 3


def test_bad_normalisation_settings():
    store, trials, cohort = make_case()
    embedded = scoring.trial_embeddings(trials, store)
    raw = scoring.cosine_scores(embedded)
    with pytest.raises(ConfigError, match="unknown score normalisation 'qnorm'; valid names: znorm, tnorm"):
        scoring.normalize_trial_scores(raw, embedded, cohort, "qnorm")
    with pytest.raises(ConfigError, match="top_n must be between 2 and the cohort size 40, got 300"):
        scoring.normalize_trial_scores(raw, embedded, cohort, "asnorm")
    with pytest.raises(ConfigError, match="dimension 8 cannot be scored against a cohort of dimension 3"):
        scoring.normalize_trial_scores(raw, embedded, cohort[:, :3], "snorm")
    with pytest.raises(FormatError, match="all-zero embeddings"):
        scoring.score_trials(scoring.Trials(["z"], ["z"]), EmbeddingStore(["z"], np.zeros((1, 3))))
