"""How sure an operating point is: speaker counts, the speaker-level bootstrap against a brute-force replicate
loop, the Verifier's warning (tiny dev set: yes; large: no), and `speakertrip calibrate` printing them."""

import warnings

import numpy as np
import pytest

from speakertrip.cli import main as cli
from speakertrip.data.split import make_trials
from speakertrip.errors import ConfigError, FormatError
from speakertrip.evaluation import DevCalibration, DevScores, OperatingPointSummary, evaluate_dev
from speakertrip.evaluation.confidence import OperatingPointConfidence, OperatingPointWarning, far_interval
from speakertrip.models import load_model
from speakertrip.testing import make_voxceleb_tree, tiny_model, tiny_model_artifact
from speakertrip.verification.adaptation import ScoreAdaptation, impostor_scores
from speakertrip.verification.stores import open_store
from speakertrip.verification.verifier import Verifier


def speaker_trials(speakers, utterances, seed=0, dim=16):
    """Every pair of ``utterances`` utterances of each of ``speakers`` Gaussian speakers: cosine scores,
    labels and the speaker of each side (speaker-dependent scores, as real ones are)."""
    rng = np.random.default_rng(seed)
    owner = np.repeat(np.arange(speakers), utterances)
    points = rng.normal(size=(speakers, dim))[owner] + rng.normal(size=(len(owner), dim))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    enrol, test = np.triu_indices(len(owner), 1)
    names = np.char.add("spk", owner.astype(str))
    return (np.einsum("nd,nd->n", points[enrol], points[test]), owner[enrol] == owner[test], names[enrol],
            names[test])


def brute_far_threshold(scores, weights, far):
    """The lowest score t with sum(weights[scores >= t]) <= far * sum(weights), by enumeration."""
    allowed = far * weights.sum() * (1 + 1e-12)
    candidates = [t for t in np.unique(scores) if weights[scores >= t].sum() <= allowed]
    return min(candidates) if candidates else np.nextafter(scores.max(), np.inf)


def brute_frr_threshold(scores, weights, frr):
    """The highest target score t with sum(weights[scores < t]) <= frr * sum(weights), by enumeration."""
    allowed = frr * weights.sum() * (1 + 1e-12)
    return max(t for t in np.unique(scores) if weights[scores < t].sum() <= allowed)


def test_counts_and_bootstrap_match_a_replicate_loop():
    scores, labels, enrol, test = speaker_trials(6, 8)
    summary = OperatingPointSummary.from_scores(scores, labels)
    sure = OperatingPointConfidence.from_trials(scores, labels, enrol, test, summary, resamples=40, seed=3)
    pairs = {tuple(sorted(p)) for p in zip(enrol[~labels], test[~labels])}
    assert (sure.speakers, sure.target_speakers, sure.speaker_pairs) == (6, 6, len(pairs)) == (6, 6, 15)
    names = np.unique(np.concatenate([enrol, test]))
    rng = np.random.default_rng(3)
    draws = [dict(zip(names, rng.multinomial(len(names), np.full(len(names), 1 / len(names))))) for _ in range(40)]
    for point in sure.points:
        if point.kind == "far":
            errors = ~labels & (scores >= point.threshold)
            assert point.errors == errors.sum()
            assert point.error_pairs == len({tuple(sorted(p)) for p in zip(enrol[errors], test[errors])})
            assert point.error_speakers == len(set(enrol[errors]) | set(test[errors]))
        else:
            errors = labels & (scores < point.threshold)
            assert point.errors == errors.sum() and point.error_speakers == point.error_pairs == len(set(enrol[errors]))
        thresholds, rates = [], []
        for drawn in draws:  # the replicate as a weighted trial list
            weights = np.array([drawn[a] * (drawn[b] if a != b else 1) for a, b in zip(enrol, test)], float)
            mine = ~labels if point.kind == "far" else labels
            if point.kind == "far":
                thresholds.append(brute_far_threshold(scores[mine], weights[mine], point.rate))
                rates.append(weights[mine & (scores >= point.threshold)].sum() / weights[mine].sum())
            else:
                thresholds.append(brute_frr_threshold(scores[mine], weights[mine], point.rate))
                rates.append(weights[mine & (scores < point.threshold)].sum() / weights[mine].sum())
        assert point.threshold_interval == pytest.approx(tuple(np.quantile(thresholds, [0.025, 0.975])))
        assert point.rate_interval == pytest.approx(tuple(np.quantile(rates, [0.025, 0.975])))
    assert sure.point("far", 0.01).threshold == summary.threshold_for_far(0.01)


def test_intervals_narrow_with_speakers():
    widths = []
    for speakers in (6, 40):
        scores, labels, enrol, test = speaker_trials(speakers, 12, seed=1)
        sure = OperatingPointConfidence.from_trials(scores, labels, enrol, test,
                                                    OperatingPointSummary.from_scores(scores, labels), resamples=200)
        low, high = sure.point("far", 0.01).rate_interval
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_new_speakers_interval_is_the_union_of_the_rate_interval_and_the_threshold_interval_read_on_the_dev_trials():
    scores, labels, enrol, test = speaker_trials(12, 10, seed=4)
    summary = OperatingPointSummary.from_scores(scores, labels)
    sure = OperatingPointConfidence.from_trials(scores, labels, enrol, test, summary, resamples=100)
    for point in sure.points:
        low, high = point.threshold_interval
        if point.kind == "far":  # brute force: the dev FAR of each end of the threshold interval
            ends = (np.mean(scores[~labels] >= high), np.mean(scores[~labels] >= low))
        else:
            ends = (np.mean(scores[labels] < low), np.mean(scores[labels] < high))
        assert point.new_speakers_interval == pytest.approx(
            (min(point.rate_interval[0], ends[0]), max(point.rate_interval[1], ends[1])))
        assert point.expected_interval == point.new_speakers_interval
    # an artifact recorded before the interval existed gets the same one on loading
    recorded = DevCalibration(DevCalibration.fit(DevScores(scores, labels)).linear, None, summary, len(scores), 0.5,
                              sure).to_dict()
    for point in recorded["operating_points"]["points"]:
        del point["new_speakers_interval"]
    assert DevCalibration.from_dict(recorded).confidence == sure


def test_new_speakers_interval_holds_the_rate_realised_on_unseen_speakers_more_often():
    """A threshold set on 10 of 80 speakers, its FAR realised on the other 70: the rate interval alone keeps the
    threshold fixed and misses its choice on these speakers; the union covers more often, and 90 % of draws."""
    rng = np.random.default_rng(3)
    owner = np.repeat(np.arange(80), 10)
    centres = rng.normal(size=(40, 16))  # 40 pairs of close speakers: a random 10 holds one such pair or none
    means = centres[np.arange(80) % 40] + 0.4 * rng.normal(size=(80, 16))
    points = means[owner] + 0.7 * rng.normal(size=(len(owner), 16))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    covered = {"rate": 0, "union": 0}
    draws = 25
    for _ in range(draws):
        chosen = np.isin(owner, rng.choice(80, 10, replace=False))
        mine, others = np.flatnonzero(chosen), np.flatnonzero(~chosen)
        enrol, test = np.triu_indices(len(mine), 1)
        scores = np.einsum("nd,nd->n", points[mine[enrol]], points[mine[test]])
        labels = owner[mine[enrol]] == owner[mine[test]]
        summary = OperatingPointSummary.from_scores(scores, labels)
        point = OperatingPointConfidence.from_trials(scores, labels, owner[mine[enrol]].astype(str),
                                                     owner[mine[test]].astype(str), summary,
                                                     resamples=200).point("far", 0.01)
        held = points[others] @ points[others].T
        impostor = owner[others][:, None] != owner[others][None, :]
        realised = np.mean(held[np.triu(impostor, 1)] >= point.threshold)
        covered["rate"] += point.rate_interval[0] <= realised <= point.rate_interval[1]
        covered["union"] += point.new_speakers_interval[0] <= realised <= point.new_speakers_interval[1]
    assert covered["union"] > covered["rate"] and covered["union"] >= 0.9 * draws, covered


def calibrated(tmp_path, speakers, utterances):
    model = tiny_model()
    scores, labels, enrol, test = speaker_trials(speakers, utterances)
    dev = DevScores(scores, labels, enroll_speakers=enrol, test_speakers=test)
    model.evaluation.update(evaluate_dev(dev, "dev.txt").to_dict())
    return load_model(model.save(tmp_path / f"model_{speakers}"))


def test_verifier_warns_for_a_tiny_dev_set_and_not_for_a_large_one(tmp_path):
    tiny = calibrated(tmp_path, 8, 10)  # 8 speakers, as the demo's dev set had
    with pytest.warns(OperatingPointWarning) as caught:
        Verifier(tiny, store=tmp_path / "s.db", far=0.01)
    message = str(caught[0].message)
    assert "\n" not in message and "far=0.01 is not sure: the dev trials have 8 speakers" in message
    assert "speakertrip calibrate --model M --data DIR" in message and "adapt=True" in message
    large = calibrated(tmp_path, 40, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        verifier = Verifier(large, store=tmp_path / "s.db", far=0.01)
    assert verifier.calibration.confidence.speakers == 40
    # a rate the dev trials cannot resolve: fewer than 10 expected false accepts
    with pytest.warns(OperatingPointWarning, match=r"far=0.0001 rests on 4.99 expected dev false accepts \(49920 dev "
                                                   r"non-targets; fewer than 10 cannot resolve this rate\)"):
        Verifier(large, store=tmp_path / "s.db", far=0.0001)


def test_confidence_travels_with_the_artifact_and_is_checked(tmp_path):
    model = calibrated(tmp_path, 8, 10)
    recorded = DevCalibration.of_model(model.evaluation)
    assert recorded.confidence is not None and recorded.confidence.point("far", 0.01).errors > 0
    assert DevCalibration.from_dict(recorded.to_dict()).to_dict() == recorded.to_dict()
    bad = recorded.to_dict()
    bad["operating_points"]["points"][0]["rate_interval"] = [0.1]
    with pytest.raises(FormatError, match="rate_interval \\[low, high\\]"):
        DevCalibration.from_dict(bad, "config.yaml")
    bad["operating_points"] = {"speakers": 3}
    with pytest.raises(FormatError, match="operating_points must hold speakers, target_speakers"):
        DevCalibration.from_dict(bad, "config.yaml")


def test_calibrate_generates_trials_and_prints_counts_and_intervals(tmp_path, capsys):
    root = make_voxceleb_tree(tmp_path, num_speakers=5, sessions=2, utterances_per_session=3, duration=(0.5, 1.0),
                              trial_list=False)
    out = tmp_path / "model_cal"
    assert cli(["calibrate", "--model", str(tiny_model_artifact()), "--data", str(root / "wav"),
                "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dev speakers    5 (5 with targets, 10 non-target speaker pairs)" in printed
    assert "far=0.01" in printed and "rate on new speakers" in printed and "warning: far=0.01" in printed
    generated = (out / "calibration_trials.txt").read_text().splitlines()
    keys = {p.relative_to(root / "wav").as_posix(): p.parts[-3] for p in (root / "wav").rglob("*.wav")}
    assert generated == [f"{label} {a} {b}" for label, a, b in make_trials(keys, 200_000, 0, cross_session=True)]
    recorded = DevCalibration.of_model(load_model(out).evaluation)
    assert recorded.trials == len(generated) and recorded.confidence.speakers == 5
    assert load_model(out).evaluation["dev_trials"] == str(out / "calibration_trials.txt")


@pytest.mark.parametrize("options, message", [
    (["--embeddings", "e.npz"], "--embeddings needs --trials T"),
    (["--data", "d", "--trials", "t.txt", "--max-trials", "100"], "--max-trials N .* does not apply with --trials"),
    ([], "with --model give --data DIR"),
])
def test_calibrate_option_errors(tmp_path, capsys, options, message):
    assert cli(["calibrate", "--model", str(tiny_model_artifact()), "--out", str(tmp_path / "o"), *options]) != 0
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and __import__("re").search(message, error)


# ---- adaptation without labels ---------------------------------------------------------------------------

def test_adaptation_moves_a_shifted_domain_back_to_the_asked_rate():
    rng = np.random.default_rng(0)
    dev = OperatingPointSummary.from_scores(np.r_[rng.normal(0.7, 0.1, 5000), rng.normal(0.1, 0.1, 200_000)],
                                            np.repeat([1, 0], [5000, 200_000]))
    domain = rng.normal(0.45, 0.05, 400_000)  # impostors of another domain: higher and narrower
    adapted = ScoreAdaptation.fit(domain[:10_000], dev.nontargets)
    for far in (0.01, 0.001):
        threshold = dev.threshold_for_far(far)
        assert np.mean(domain[10_000:] >= threshold) > 0.4  # unadapted: almost everyone is accepted
        assert np.mean(domain[10_000:] >= adapted.to_domain(threshold)) == pytest.approx(far, rel=0.25)
    scores = np.linspace(0.2, 0.7, 50)
    assert np.all(np.diff(adapted.to_dev(scores)) > 0)  # monotone: decisions keep the order of scores
    assert adapted.to_domain(float(adapted.to_dev(np.array([0.52]))[0])) == pytest.approx(0.52)


def test_impostor_scores_match_a_loop(tmp_path):
    rng = np.random.default_rng(1)
    store = open_store(tmp_path / "s.db", "m", 8)
    def unit_rows(count):  # embeddings as a model gives them: L2-normalised
        rows = rng.normal(size=(count, 8)).astype(np.float32)
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    enrolled = {name: unit_rows(count) for name, count in (("a", 2), ("b", 3), ("c", 1))}
    for name, rows in enrolled.items():
        store.add(name, rows, [f"{name}{i}" for i in range(len(rows))])
    cohort = unit_rows(4)
    store.set_cohort(cohort, [f"c{i}" for i in range(4)])
    for scoring in ("centroid", "max"):
        found = impostor_scores(store, scoring)
        expected = []
        tests = [(name, row) for name, rows in enrolled.items() for row in rows] + [(None, row) for row in cohort]
        for owner, row in tests:
            for name, rows in enrolled.items():
                if name != owner:
                    if scoring == "centroid":
                        centroid = rows.mean(axis=0)
                        expected.append(float(row @ centroid / np.linalg.norm(centroid)))
                    else:
                        expected.append(float(np.max(rows @ row)))
        assert sorted(found.scores) == pytest.approx(sorted(expected), abs=1e-5)
        assert (found.speakers, found.cohort) == (3, 4)
    empty = open_store(tmp_path / "e.db", "m", 8)
    empty.add("a", enrolled["a"], ["a0", "a1"])
    with pytest.raises(ConfigError, match="at least two enrolled speakers or one speaker and a cohort"):
        impostor_scores(empty)


def test_verifier_adapts_its_operating_point_to_the_store(tmp_path, capsys):
    model = calibrated(tmp_path, 40, 8)
    root = make_voxceleb_tree(tmp_path / "vox", num_speakers=6, sessions=1, utterances_per_session=4,
                              duration=(0.5, 1.0), trial_list=False)
    store = tmp_path / "s.db"
    plain = Verifier(model, store=store, far=0.01)
    for speaker in sorted((root / "wav").iterdir()):
        plain.enroll(speaker.name, sorted(speaker.rglob("*.wav")))
    with pytest.warns(OperatingPointWarning, match="far=0.01 adapted: 1.2 of the 120 in-domain impostor scores"):
        adapted = Verifier(model, store=store, far=0.01, adapt=True)
    fitted = ScoreAdaptation.fit(impostor_scores(adapted.store).scores, plain.calibration.scores.nontargets)
    assert adapted.operating_point == "far=0.01 adapted"
    assert adapted.threshold == pytest.approx(fitted.to_domain(plain.threshold))
    assert adapted.dev_error_rates[0] == pytest.approx(plain.dev_error_rates[0])
    test = next((root / "wav").rglob("*.wav"))
    result, name = adapted.verify(test.parts[-3], test), test.parts[-3]
    assert result.accepted == (result.cosine >= adapted.threshold)
    assert result.llr == pytest.approx(float(plain.calibration.linear(fitted.to_dev(np.array([result.cosine])))[0]),
                                       rel=1e-6)
    with pytest.raises(ConfigError, match="adapt=True moves the model's dev operating points"):
        Verifier(model, store=store, threshold=0.3, adapt=True)
    # the command line: speakertrip verify --far 0.01 --adapt
    with pytest.warns(OperatingPointWarning):
        status = cli(["verify", "--model", str(tmp_path / "model_40"), "--store", str(store), "--far", "0.01",
                      "--adapt", name, str(test)])
    assert status == (0 if result.accepted else 1)
    assert f"score={result.score:.4f}" in capsys.readouterr().out


def test_far_interval_matches_a_replicate_loop():
    scores, labels, enrol, test = speaker_trials(5, 6, seed=2)
    non = ~labels
    thresholds = [0.3, 0.6]
    found = far_interval(scores[non], enrol[non], test[non], thresholds, resamples=30, seed=4)
    names = np.unique(np.concatenate([enrol, test]))
    rng = np.random.default_rng(4)
    rates = []
    for _ in range(30):
        drawn = dict(zip(names, rng.multinomial(len(names), np.full(len(names), 1 / len(names)))))
        weights = np.array([drawn[a] * drawn[b] for a, b in zip(enrol[non], test[non])], float)
        rates.append([weights[scores[non] >= t].sum() / weights.sum() for t in thresholds])
    for (far, low, high), t, column in zip(found, thresholds, np.array(rates).T):
        assert far == np.mean(scores[non] >= t)
        assert (low, high) == pytest.approx(tuple(np.quantile(column, [0.025, 0.975])))
