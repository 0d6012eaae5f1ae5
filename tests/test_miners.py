"""Miners: sampling distributions against loop-computed probabilities, output checks, anchor sets."""

import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from speakertrip.losses import (AnchorSetMiner, DistanceWeightedMiner, Miner, RandomNegativeMiner,
                                Triplets, build_miner, pairwise_distances)


def batch(labels, dim=6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(len(labels), dim, generator=generator, dtype=torch.float64), dim=1)
    return x, torch.tensor(labels)


def expected_counts(x, y, weight):
    """Σ over positive pairs of each negative's draw probability, by loops."""
    y = y.tolist()
    counts = Counter()
    for a in range(len(y)):
        negatives = [n for n in range(len(y)) if y[n] != y[a]]
        weights = {n: weight(a, n) for n in negatives}
        if sum(weights.values()) == 0:
            weights = {n: 1.0 for n in negatives}
        total = sum(weights.values())
        for _ in (p for p in range(len(y)) if p != a and y[p] == y[a]):
            for n in negatives:
                counts[n] += weights[n] / total
    return counts


def check_draws(miner, x, y, weight, rounds=6):
    observed = Counter()
    for _ in range(rounds):
        triplets = miner(pairwise_distances(x), y, x)
        assert torch.equal(triplets.negatives.sum(dim=1), torch.ones(len(triplets.anchors), dtype=torch.long))
        observed.update(triplets.negatives.nonzero()[:, 1].tolist())
    expected = expected_counts(x, y, weight)
    for n, mean in expected.items():
        mean *= rounds
        assert abs(observed[n] - mean) <= 5 * math.sqrt(mean) + 1, (n, observed[n], mean)


def test_random_miner_draws_uniformly_among_the_anchors_negatives():
    x, y = batch([0] * 40 + [1, 2, 3, 3, 4])
    check_draws(RandomNegativeMiner(seed=1), x, y, lambda a, n: 1.0)


def test_distance_weighted_miner_draws_with_inverse_sphere_density():
    dim, cutoff, far = 6, 0.5, 1.4
    x, y = batch([0] * 40 + [1, 2, 3, 3, 4, 5], dim=dim, seed=2)

    def weight(a, n):
        d = float((x[a] - x[n]).norm())
        if d >= far:
            return 0.0
        d = max(d, cutoff)
        return d ** (2 - dim) * (1 - d * d / 4) ** (-(dim - 3) / 2)

    check_draws(DistanceWeightedMiner(cutoff, far, seed=3), x, y, weight)


def test_distance_weighted_never_draws_beyond_the_cutoff_when_closer_negatives_exist():
    x, y = batch([0, 0, 1, 2, 3, 4, 5, 6], dim=3, seed=4)
    d = torch.cdist(x, x)
    triplets = DistanceWeightedMiner(nonzero_loss_cutoff=1.4, seed=0)(pairwise_distances(x), y, x)
    for a, n in zip(triplets.anchors.tolist(), triplets.negatives.nonzero()[:, 1].tolist()):
        if (d[a, 2:] < 1.4).any():
            assert d[a, n] < 1.4


@pytest.mark.parametrize("name", ["random", "distance_weighted"])
def test_sampling_miners_are_reproducible_with_a_seed(name):
    x, y = batch([0, 0, 0, 1, 1, 2, 2, 3])
    draw = lambda: build_miner({"name": name, "seed": 5})(pairwise_distances(x), y, x).negatives  # noqa: E731
    assert torch.equal(draw(), draw())


class Broken(Miner):
    def __init__(self, anchors, positives, negatives):
        self.triplets = Triplets(torch.tensor(anchors), torch.tensor(positives), torch.tensor(negatives))

    def mine(self, dist, labels, embeddings):
        return self.triplets


@pytest.mark.parametrize("anchors, positives, negatives, message", [
    ([0], [1], [[False, False, True]], "has another label"),
    ([0], [0], [[False, False, True]], "the anchor itself"),
    ([0], [3], [[False, False, True]], "positive index outside 0..2"),
    ([1], [0], [[False, True, False]], "a negative with the anchor's label"),
    ([0], [1], [[True, False]], r"expected \(M,\), \(M,\) and a \(1, 3\) bool mask"),
])
def test_miner_output_is_checked(anchors, positives, negatives, message):
    labels = torch.tensor([5, 6, 6]) if message == "has another label" else torch.tensor([5, 5, 6])
    with pytest.raises(ValueError, match=f"Broken returned .*{message}"):
        Broken(anchors, positives, negatives)(torch.zeros(3, 3), labels, torch.zeros(3, 2))


def test_miners_run_without_gradient():
    x, y = batch([0, 0, 1, 1])
    x.requires_grad_()
    triplets = build_miner("batch_all")(pairwise_distances(x), y, x)
    assert not triplets.negatives.requires_grad and triplets.num_triplets.item() == 8


def anchor_sets_by_loops(d, y, hardest_positives, hardest_negatives, semi_hard_margin):
    y = y.tolist()
    positives, negatives = torch.zeros(len(y), len(y), dtype=torch.bool), torch.zeros(len(y), len(y), dtype=torch.bool)
    for a in range(len(y)):
        pos = sorted((p for p in range(len(y)) if p != a and y[p] == y[a]), key=lambda p: -d[a, p])
        neg = sorted((n for n in range(len(y)) if y[n] != y[a]), key=lambda n: d[a, n])
        pos = pos[:hardest_positives] if hardest_positives else pos
        if semi_hard_margin is not None and neg:
            mean = sum(float(d[a, p]) for p in pos) / max(len(pos), 1)
            neg = [n for n in neg if mean < d[a, n] < mean + semi_hard_margin] or neg[:1]
        neg = neg[:hardest_negatives] if hardest_negatives else neg
        positives[a, pos], negatives[a, neg] = True, True
    return positives, negatives


@pytest.mark.parametrize("hardest_positives, hardest_negatives, semi_hard_margin",
                         [(None, None, None), (None, 3, None), (2, 1, None), (None, None, 0.5), (1, 2, 0.5)])
def test_anchor_sets_match_loops(hardest_positives, hardest_negatives, semi_hard_margin):
    x, y = batch([0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 5])
    d = pairwise_distances(x)
    sets = AnchorSetMiner(hardest_positives, hardest_negatives, semi_hard_margin)(d, y)
    positives, negatives = anchor_sets_by_loops(d, y, hardest_positives, hardest_negatives, semi_hard_margin)
    assert torch.equal(sets.positives, positives) and torch.equal(sets.negatives, negatives)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_anchor_set_miner_rejects_bad_k(k):
    with pytest.raises(ValueError, match="hardest_negatives must be None or an integer >= 1"):
        AnchorSetMiner(hardest_negatives=k)
