"""Calibration against a direct minimisation of the weighted cross-entropy; DET points and plots."""

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from speakertrip import scoring
from speakertrip.errors import FormatError


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
