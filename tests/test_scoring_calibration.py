"""Calibration against a direct minimisation of the weighted cross-entropy; DET points and plots."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from speakertrip import scoring
from speakertrip.errors import ConfigError, FormatError
from speakertrip.evaluation import DevCalibration, DevScores, OperatingPointSummary


def dev_set(seed=0, targets=300, nontargets=1200):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(0.6, 0.15, targets), rng.normal(0.1, 0.15, nontargets)]
    return scores, np.r_[np.ones(targets, int), np.zeros(nontargets, int)]


@pytest.mark.parametrize("prior", [0.5, 0.1])
def test_calibration_minimises_prior_weighted_cross_entropy(prior):
    scores, labels = dev_set()
    calibration = scoring.train_calibration(scores, labels, prior=prior)
    logit = math.log(prior / (1 - prior))

    def cost(params):  # Cllr at the prior: BOSARIS's objective, written out
        llr = params[0] * scores + params[1]
        return (prior * np.mean(np.logaddexp(0, -(llr[labels == 1] + logit))) +
                (1 - prior) * np.mean(np.logaddexp(0, llr[labels == 0] + logit)))

    best = minimize(cost, x0=[1.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
    assert calibration.scale == pytest.approx(best[0], rel=1e-3)
    assert calibration.offset == pytest.approx(best[1], rel=1e-3, abs=1e-3)


def test_calibrated_scores_are_good_llrs(tmp_path):
    scores, labels = dev_set()
    calibration = scoring.train_calibration(scores, labels)
    llrs = calibration(scores)
    assert scoring.cllr(llrs, labels) < 0.3
    assert scoring.cllr(llrs, labels) - scoring.min_cllr(scores, labels) < 0.03  # near-optimal calibration
    assert scoring.eer(llrs, labels) == scoring.eer(scores, labels)  # a monotone map keeps the ranking
    path = calibration.save(tmp_path / "cal.json")
    assert scoring.Calibration.load(path) == calibration
    (tmp_path / "bad.json").write_text('{"scale": 1.0}')
    with pytest.raises(FormatError, match=r'bad\.json: expected \{"scale": number, "offset": number\}'):
        scoring.Calibration.load(tmp_path / "bad.json")
    (tmp_path / "junk.json").write_text("scale=1")
    with pytest.raises(FormatError, match="not a JSON calibration file"):
        scoring.Calibration.load(tmp_path / "junk.json")


def test_det_points_and_plot(tmp_path):
    scores, labels = dev_set()
    p_fa, p_miss = scoring.det_points(scores, labels)
    assert (p_fa[0], p_miss[0], p_fa[-1], p_miss[-1]) == (1.0, 0.0, 0.0, 1.0)
    assert np.all(np.diff(p_fa) <= 0) and np.all(np.diff(p_miss) >= 0)
    path = scoring.plot_det({"a": (scores, labels), "b": (scores + np.random.default_rng(1).normal(0, 0.2, len(scores)),
                                                          labels)}, tmp_path / "det.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


# ---- logistic regression against scikit-learn ------------------------------------------------------------

def sklearn_fit(features, labels, prior):
    """The same prior-weighted, unregularised logistic regression with scikit-learn."""
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels, bool)
    weights = np.where(labels, prior / labels.sum(), (1 - prior) / (~labels).sum()) * len(labels)
    model = LogisticRegression(C=np.inf, tol=1e-12, max_iter=100_000).fit(features, labels, sample_weight=weights)
    return model.coef_[0], model.intercept_[0]


def mixed_duration_trials(seed=0, count=20_000):
    rng = np.random.default_rng(seed)
    labels = rng.random(count) < 0.2
    enroll, test = rng.choice([1.0, 2.0, 4.0, 8.0], count), rng.uniform(0.5, 10.0, count)
    spread = 1.0 / np.log2(1 + np.minimum(enroll, test))       # shorter audio: noisier scores
    scores = rng.normal(np.where(labels, 0.4, 0.1), 0.12 * spread)
    return scores, labels, enroll, test


@pytest.mark.parametrize("prior", [0.5, 0.05])
def test_calibrations_match_scikit_learn(prior):
    scores, labels, enroll, test = mixed_duration_trials()
    logit = math.log(prior / (1 - prior))
    plain = scoring.train_calibration(scores, labels, prior)
    coef, intercept = sklearn_fit(scores[:, None], labels, prior)
    assert plain.scale == pytest.approx(coef[0], rel=1e-5)
    assert plain.offset == pytest.approx(intercept - logit, rel=1e-5, abs=1e-6)
    quality = scoring.train_quality_calibration(scores, labels, enroll, test, prior)
    q = np.log(np.minimum(enroll, test))
    coef, intercept = sklearn_fit(np.column_stack([scores, scores * q, q]), labels, prior)
    fitted = [quality.scale, quality.scale_per_log_second, quality.offset_per_log_second]
    np.testing.assert_allclose(fitted, coef, rtol=1e-4)
    assert quality.offset == pytest.approx(intercept - logit, rel=1e-4)
    assert (quality.min_log_seconds, quality.max_log_seconds) == (q.min(), q.max())
    llrs = quality(scores, enroll, test)
    np.testing.assert_allclose(llrs, np.column_stack([scores, scores * q, q]) @ coef + intercept - logit, atol=1e-5)


def test_duration_aware_calibration_beats_plain_where_duration_matters():
    scores, labels, enroll, test = mixed_duration_trials(seed=1)
    held_out = mixed_duration_trials(seed=2)
    plain = scoring.train_calibration(scores, labels)
    quality = scoring.train_quality_calibration(scores, labels, enroll, test)
    s, l, e, t = held_out
    assert scoring.cllr(quality(s, e, t), l) < 0.9 * scoring.cllr(plain(s), l)
    # durations outside the training range are clipped, not extrapolated
    np.testing.assert_allclose(quality([0.5], [1000.0], [1000.0]), quality([0.5], [8.0], [10.0]))


def test_calibration_errors():
    scores, labels = np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])
    with pytest.raises(ConfigError, match="separable"):
        scoring.train_calibration(scores, labels)
    with pytest.raises(ConfigError, match="prior must be between 0 and 1"):
        scoring.train_calibration(scores, labels, prior=1.0)
    with pytest.raises(ConfigError, match="durations must be positive"):
        scoring.train_quality_calibration(scores, [0, 1, 0, 1], [1, 2, 0, 1], 1.0)
    with pytest.raises(FormatError, match="NaN"):
        scoring.train_calibration([0.1, np.nan], [0, 1])


# ---- thresholds for a false-accept or false-reject rate, against enumeration ------------------------------

def brute_far_threshold(scores, labels, far):
    """Enumerate every reachable threshold; the lowest whose FAR <= far."""
    nontargets = scores[labels == 0]
    candidates = np.append(np.unique(scores), np.nextafter(scores.max(), np.inf))
    return min(t for t in candidates if np.mean(nontargets >= t) <= far)


def brute_frr_threshold(scores, labels, frr):
    targets = scores[labels == 1]
    candidates = np.append(np.unique(scores), np.nextafter(scores.max(), np.inf))
    return max(t for t in candidates if np.mean(targets < t) <= frr)


@pytest.mark.parametrize("seed", range(6))
def test_thresholds_for_a_rate_match_enumeration(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(50, 400))
    labels = (rng.random(count) < 0.3).astype(int)
    labels[:2] = [0, 1]
    scores = np.round(rng.normal(labels * 1.5, 1.0), 1)  # many ties
    summary = OperatingPointSummary.from_scores(scores, labels)
    n_non, n_tar = (labels == 0).sum(), (labels == 1).sum()
    for rate in (1 / n_non, 0.01, 0.05, 0.1, 0.25, 0.5, 0.9):
        if rate * n_non >= 1:
            assert summary.threshold_for_far(rate) == brute_far_threshold(scores, labels, rate)
        if rate * n_tar >= 1:
            assert summary.threshold_for_frr(rate) == brute_frr_threshold(scores, labels, rate)
    for threshold in rng.normal(0.5, 1.5, 20).tolist() + scores[:20].tolist():
        assert summary.far(threshold) == pytest.approx(np.mean(scores[labels == 0] >= threshold))
        assert summary.frr(threshold) == pytest.approx(np.mean(scores[labels == 1] < threshold))


def test_summary_of_a_large_dev_set_is_small_and_accurate():
    rng = np.random.default_rng(0)
    nontargets, targets = rng.normal(0.0, 0.1, 1_000_000), rng.normal(0.5, 0.1, 50_000)
    scores, labels = np.r_[targets, nontargets], np.repeat([1, 0], [len(targets), len(nontargets)])
    summary = OperatingPointSummary.from_scores(scores, labels)
    assert len(summary.nontargets.scores) + len(summary.targets.scores) < 4000
    for far in (0.2, 0.01, 0.003, 0.001, 1e-4, 1e-5):
        realised = np.mean(nontargets >= summary.threshold_for_far(far))
        assert realised == pytest.approx(far, rel=0.01)
        if far <= 2e-4:  # the top non-target ranks are kept exactly: exactly the enumerated false-accept count
            assert np.sum(nontargets >= summary.threshold_for_far(far)) == int(far * len(nontargets))
    for frr in (0.3, 0.01, 0.001):
        assert np.mean(targets < summary.threshold_for_frr(frr)) == pytest.approx(frr, rel=0.01)
    for threshold in (0.1, 0.25, 0.4):
        assert summary.far(threshold) == pytest.approx(np.mean(nontargets >= threshold), rel=0.01)


def test_rates_and_summaries_are_validated(tmp_path):
    scores, labels = dev_set()
    summary = OperatingPointSummary.from_scores(scores, labels)
    for bad in (0, 0.0, 1, 1.5, -0.1, float("nan"), True, "0.01", None):
        with pytest.raises(ConfigError, match="far must be a rate strictly between 0 and 1"):
            summary.threshold_for_far(bad)
    with pytest.raises(ConfigError, match=r"far=0.0001 needs at least 10000 dev non-target trials.*has 1200"):
        summary.threshold_for_far(1e-4)
    with pytest.raises(ConfigError, match="frr=0.001 needs at least 1000 dev target trials"):
        summary.threshold_for_frr(0.001)
    data = summary.to_dict()
    assert OperatingPointSummary.from_dict(data).to_dict() == data
    broken = {**data, "targets": {**data["targets"], "scores": data["targets"]["scores"][::-1]}}
    with pytest.raises(FormatError, match="cfg.yaml: score summary 'targets' is inconsistent"):
        OperatingPointSummary.from_dict(broken, "cfg.yaml")
    with pytest.raises(FormatError, match="must hold 'targets' and 'nontargets'"):
        OperatingPointSummary.from_dict({"targets": data["targets"]})


def test_dev_calibration_round_trip():
    scores, labels, enroll, test = mixed_duration_trials()
    dev = DevCalibration.fit(DevScores(scores, labels, enroll, test))
    again = DevCalibration.from_dict(dev.to_dict())
    assert again.to_dict() == dev.to_dict() and again.quality == dev.quality and again.linear == dev.linear
    legacy = {**dev.to_dict(), "eer": 0.1, "eer_threshold": 0.5}  # what artifacts recorded before: still read
    assert DevCalibration.from_dict(legacy).to_dict() == dev.to_dict()
    np.testing.assert_allclose(dev.llr(scores, enroll, test), dev.quality(scores, enroll, test))
    np.testing.assert_allclose(dev.llr(scores), dev.linear(scores))
    plain = DevCalibration.fit(DevScores(scores, labels))
    assert plain.quality is None and "quality" not in plain.to_dict()
    assert DevCalibration.of_model({"eer": 0.1}) is None
    with pytest.raises(FormatError, match="evaluation.calibration must hold"):
        DevCalibration.from_dict({"linear": {"scale": 1, "offset": 0}})
