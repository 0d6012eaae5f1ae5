"""Metrics against brute-force references (every threshold enumerated), peers and hand-computed cases."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from speakertrip import scoring
from speakertrip.errors import FormatError
from speakertrip.scoring.operating_points import ScoreGroups


def random_trials(seed, count=300, ties=True, dtype=np.float64):
    rng = np.random.default_rng(seed)
    labels = rng.random(count) < rng.uniform(0.1, 0.6)
    labels[:2] = [True, False]
    scores = rng.normal(size=count) + rng.uniform(0.5, 2.5) * labels
    if ties:
        scores = np.round(scores * 2) / 2  # a dozen distinct values: many ties across the classes
    return scores.astype(dtype), labels.astype(int)


def brute_points(scores, labels):
    """Every threshold: distinct scores and +inf; accept score >= threshold."""
    thresholds = sorted(set(scores.tolist())) + [math.inf]
    targets = [s for s, l in zip(scores, labels) if l == 1]
    nontargets = [s for s, l in zip(scores, labels) if l == 0]
    p_miss = [sum(s < t for s in targets) / len(targets) for t in thresholds]
    p_fa = [sum(s >= t for s in nontargets) / len(nontargets) for t in thresholds]
    return thresholds, p_miss, p_fa


def crossing(p_fa, p_miss):
    """Where the polyline through (p_fa, p_miss) meets p_miss = p_fa (first segment that does)."""
    for i in range(len(p_fa) - 1):
        d0, d1 = p_miss[i] - p_fa[i], p_miss[i + 1] - p_fa[i + 1]
        if d0 < 0 <= d1:
            a = -d0 / (d1 - d0)
            return p_miss[i] + a * (p_miss[i + 1] - p_miss[i])
    raise AssertionError("no crossing")


def brute_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    _, p_miss, p_fa = brute_points(scores, labels)
    costs = [c_miss * p * m + c_fa * (1 - p) * f for m, f in zip(p_miss, p_fa)]
    return min(costs) / min(c_miss * p, c_fa * (1 - p))


def lower_hull(points):
    """Monotone-chain lower convex hull of (x, y) points sorted by x."""
    hull = []
    for point in sorted(set(points)):
        while len(hull) >= 2 and (hull[-1][0] - hull[-2][0]) * (point[1] - hull[-2][1]) - \
                (hull[-1][1] - hull[-2][1]) * (point[0] - hull[-2][0]) <= 0:
            hull.pop()
        hull.append(point)
    return hull


def brute_pav(values, weights):
    blocks = []  # [mean, weight, count of items]
    for value, weight in zip(values, weights):
        blocks.append([value, weight, 1])
        while len(blocks) > 1 and blocks[-2][0] >= blocks[-1][0]:
            (v2, w2, n2), (v1, w1, n1) = blocks.pop(), blocks.pop()
            blocks.append([(v1 * w1 + v2 * w2) / (w1 + w2), w1 + w2, n1 + n2])
    return [b[0] for b in blocks for _ in range(b[2])]


def brute_min_cllr(scores, labels):
    distinct = sorted(set(scores.tolist()))
    tar = [sum(1 for s, l in zip(scores, labels) if s == v and l == 1) for v in distinct]
    non = [sum(1 for s, l in zip(scores, labels) if s == v and l == 0) for v in distinct]
    posterior = brute_pav([t / (t + n) for t, n in zip(tar, non)], [t + n for t, n in zip(tar, non)])
    n_tar, n_non = sum(tar), sum(non)
    cost_t = cost_n = 0.0
    for p, t, n in zip(posterior, tar, non):
        llr = (math.log(p / (1 - p)) if 0 < p < 1 else math.copysign(math.inf, p - 0.5)) - math.log(n_tar / n_non)
        cost_t += t * (math.log2(1 + math.exp(-llr)) if t else 0.0)
        cost_n += n * (math.log2(1 + math.exp(llr)) if n else 0.0)
    return 0.5 * (cost_t / n_tar + cost_n / n_non)


@pytest.mark.parametrize("seed", range(6))
def test_operating_points_and_eer_match_brute_force(seed):
    scores, labels = random_trials(seed, ties=seed % 2 == 0)
    thresholds, p_miss, p_fa = brute_points(scores, labels)
    points = scoring.operating_points(scores, labels)
    np.testing.assert_allclose(points.p_miss, p_miss)
    np.testing.assert_allclose(points.p_fa, p_fa)
    np.testing.assert_array_equal(points.thresholds[:-1], thresholds[:-1])
    assert points.thresholds[-1] > scores.max() and points.thresholds[-1] == np.nextafter(scores.max(), np.inf)
    assert scoring.eer(scores, labels) == pytest.approx(crossing(p_fa, p_miss), abs=1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_min_dcf_matches_brute_force_and_kaldi_style_loop(seed):
    scores, labels = random_trials(seed, ties=seed % 2 == 1)
    for p, c_miss, c_fa in [(0.01, 1, 1), (0.05, 1, 1), (0.3, 2.0, 0.5), (0.5, 1, 10)]:
        expected = brute_min_dcf(scores, labels, p, c_miss, c_fa)
        assert scoring.min_dcf(scores, labels, p, c_miss, c_fa) == pytest.approx(expected, abs=1e-12)
    # voxceleb_trainer's ComputeMinDcf on sklearn's ROC, written as a loop
    fpr, tpr, _ = roc_curve(labels, scores)
    kaldi = min(0.01 * (1 - t) + 0.99 * f for t, f in zip(tpr, fpr)) / 0.01
    assert scoring.min_dcf(scores, labels, 0.01) == pytest.approx(kaldi, abs=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_rocch_eer_and_min_cllr_match_brute_force(seed):
    scores, labels = random_trials(seed, count=200, ties=seed < 2)
    _, p_miss, p_fa = brute_points(scores, labels)
    hull = lower_hull(list(zip(p_fa, p_miss)))
    hull_eer = crossing([x for x, _ in reversed(hull)], [y for _, y in reversed(hull)])
    assert scoring.rocch_eer(scores, labels) == pytest.approx(hull_eer, abs=1e-12)
    assert scoring.rocch_eer(scores, labels) <= scoring.eer(scores, labels) + 1e-15
    assert scoring.min_cllr(scores, labels) == pytest.approx(brute_min_cllr(scores, labels), abs=1e-12)


def test_cllr_and_act_dcf_against_loops():
    scores, labels = random_trials(7, ties=False)
    llrs = 2 * scores - 1
    expected = 0.5 * (np.mean([math.log2(1 + math.exp(-s)) for s, l in zip(llrs, labels) if l]) +
                      np.mean([math.log2(1 + math.exp(s)) for s, l in zip(llrs, labels) if not l]))
    assert scoring.cllr(llrs, labels) == pytest.approx(expected, rel=1e-12)
    assert scoring.min_cllr(llrs, labels) <= scoring.cllr(llrs, labels)
    for p in (0.01, 0.2):
        threshold = math.log((1 - p) / p)
        misses = sum(1 for s, l in zip(llrs, labels) if l and s < threshold) / labels.sum()
        false_alarms = sum(1 for s, l in zip(llrs, labels) if not l and s >= threshold) / (1 - labels).sum()
        expected = (p * misses + (1 - p) * false_alarms) / min(p, 1 - p)
        assert scoring.act_dcf(llrs, labels, p_target=p) == pytest.approx(expected, rel=1e-12)
        assert scoring.act_dcf(llrs, labels, p_target=p) >= scoring.min_dcf(llrs, labels, p) - 1e-12


def test_hand_computed_cases():
    # n t n t at 1 2 3 4: points (P_fa, P_miss) (1,0) (.5,0) (.5,.5) (0,.5) (0,1): EER on a point, 0.5
    scores, labels = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0, 1, 0, 1])
    assert scoring.eer(scores, labels) == 0.5
    assert scoring.rocch_eer(scores, labels) == 0.25  # hull segment (.5,0)-(0,.5)
    assert scoring.min_cllr(scores, labels) == 0.5    # PAV pools the middle pair: LLR 0, 1 bit for each
    # perfect separation: EER 0 whatever the gap
    assert scoring.eer(np.array([0.0, 0.1, 5.0]), np.array([0, 0, 1])) == 0.0
    # fully reversed: EER 1
    assert scoring.eer(np.array([0.0, 1.0]), np.array([1, 0])) == 1.0
    # all tied: one diagonal segment from (1,0) to (0,1), crossing at 0.5; minDCF 1 (trivial system)
    assert scoring.eer(np.zeros(5), np.array([1, 0, 0, 1, 0])) == 0.5
    assert scoring.min_dcf(np.zeros(5), np.array([1, 0, 0, 1, 0]), 0.01) == 1.0
    # 1 target tied with 1 of 3 non-targets at 1.0: P_miss jumps 0 -> 1 while P_fa 2/3 -> 1/3, the diagonal
    # segment crosses P_miss = P_fa at 0.5
    assert scoring.eer(np.array([0.0, 1.0, 1.0, 2.0]), np.array([0, 1, 0, 0])) == pytest.approx(0.5)
    # n t n t at 1 2 3 4, P_tar 0.1: threshold 4 gives P_miss 0.5, P_fa 0 -> 0.1 * 0.5 / 0.1 = 0.5;
    # threshold 2 gives P_fa 0.5 -> 0.9 * 0.5 / 0.1 = 4.5; accept-all or reject-all cost 1
    metrics = scoring.compute_metrics(scores, labels, p_targets=(0.1,))
    assert metrics.min_dcf[0.1] == pytest.approx(0.5) and metrics.min_dcf_threshold[0.1] == 4.0
    assert scoring.act_dcf(scores, labels, threshold=2.0, p_target=0.1) == pytest.approx(4.5)


def test_eer_threshold_and_dcf_thresholds_are_operating_points():
    scores, labels = random_trials(3, ties=False)
    metrics = scoring.compute_metrics(scores, labels)
    for threshold, target in [(metrics.eer_threshold, None)] + [(t, p) for p, t in metrics.min_dcf_threshold.items()]:
        p_miss = np.mean(scores[labels == 1] < threshold)
        p_fa = np.mean(scores[labels == 0] >= threshold)
        if target is None:
            assert abs(p_miss - metrics.eer) <= 1 / min(labels.sum(), (1 - labels).sum()) + 1e-12
        else:
            cost = (target * p_miss + (1 - target) * p_fa) / min(target, 1 - target)
            assert cost == pytest.approx(metrics.min_dcf[target], abs=1e-12)


def test_float32_and_float64_give_the_same_answers():
    scores, labels = random_trials(11, count=2000, ties=False, dtype=np.float32)
    assert scoring.eer(scores, labels) == scoring.eer(scores.astype(np.float64), labels)
    assert scoring.min_dcf(scores, labels) == scoring.min_dcf(scores.astype(np.float64), labels)


def test_compute_metrics_json_shape():
    scores, labels = random_trials(5)
    metrics = scoring.compute_metrics(scores, labels, p_targets=(0.01, 0.05), llr=True, bootstrap=50)
    out = metrics.to_dict()
    assert out["trials"] == 300 and out["targets"] == labels.sum() and out["nontargets"] == 300 - labels.sum()
    assert set(out["min_dcf"]) == {"0.01", "0.05"} and set(out["min_dcf_threshold"]) == {"0.01", "0.05"}
    assert out["eer"] == scoring.eer(scores, labels)
    assert out["min_dcf"]["0.05"] == scoring.min_dcf(scores, labels, 0.05)
    assert out["cllr"] == scoring.cllr(scores, labels) and set(out["act_dcf"]) == {"0.01", "0.05"}
    low, high = out["confidence_intervals"]["eer"]
    assert low <= out["eer"] <= high
    assert "EER (%)" in metrics.table() and "minDCF@0.05" in metrics.table()


def test_bootstrap_matches_resampling_trials():
    scores, labels = random_trials(2, count=600, ties=True)
    groups = ScoreGroups.from_scores(scores, labels.astype(bool))
    ours = scoring.bootstrap_intervals(groups, (0.05,), resamples=400, seed=1)
    assert ours == scoring.bootstrap_intervals(groups, (0.05,), resamples=400, seed=1)  # seeded
    rng = np.random.default_rng(2)
    targets, nontargets = scores[labels == 1], scores[labels == 0]
    naive = []
    for _ in range(400):  # resample trials themselves, each class apart
        t, n = rng.choice(targets, len(targets)), rng.choice(nontargets, len(nontargets))
        naive.append(scoring.eer(np.concatenate([t, n]), np.r_[np.ones(len(t)), np.zeros(len(n))]))
    naive_interval = np.quantile(naive, [0.025, 0.975])
    np.testing.assert_allclose(ours["eer"], naive_interval, atol=0.02)


@pytest.mark.parametrize("scores, labels, message", [
    ([0.1, np.nan], [1, 0], "1 NaN or infinite scores"),
    ([0.1, np.inf], [1, 0], "NaN or infinite"),
    ([0.1, 0.2], [1, 1], "no non-targets"),
    ([0.1, 0.2], [0, 0], "no targets"),
    ([0.1, 0.2], [1, 2], "labels must be 1"),
    ([0.1, 0.2, 0.3], [1, 0], "one length"),
])
def test_bad_input(scores, labels, message):
    with pytest.raises(FormatError, match=message):
        scoring.eer(np.array(scores), np.array(labels))


def test_bad_costs():
    with pytest.raises(ValueError, match="0 < p_target < 1"):
        scoring.min_dcf(np.array([0.0, 1.0]), np.array([0, 1]), p_target=1.0)
