"""MultiPositiveTripletLoss against a loop over anchors, their positive and negative sets."""

import pytest
import torch
import torch.nn.functional as F

from speakertrip.losses import MultiPositiveTripletLoss

from distance_reference import distance

LABELS = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5]


def batch(seed, dtype=torch.float64, labels=LABELS, dim=5):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(len(labels), dim, generator=generator, dtype=dtype)
    order = torch.randperm(len(labels), generator=generator)
    return F.normalize(x, dim=1).requires_grad_(), torch.tensor(labels)[order]


def reference(x, y, kind, margin, hardest_positives=None, hardest_negatives=None, semi_hard=False,
              soft_margin=False, reduction="mean"):
    """The issue's formula, anchor by anchor; returns the loss and the per-anchor violations."""
    y = y.tolist()
    terms, violations = [], []
    for a in range(len(y)):
        d = {j: distance(x, a, j, kind) for j in range(len(y)) if j != a}
        positives = sorted((p for p in d if y[p] == y[a]), key=lambda p: -d[p].item())
        negatives = sorted((n for n in d if y[n] != y[a]), key=lambda n: d[n].item())
        if not positives or not negatives:
            continue
        positives = positives[:hardest_positives] if hardest_positives else positives
        mean_positive = sum(d[p] for p in positives) / len(positives)
        if semi_hard:
            negatives = [n for n in negatives if mean_positive < d[n] < mean_positive + margin] or negatives[:1]
        negatives = negatives[:hardest_negatives] if hardest_negatives else negatives
        violation = mean_positive - sum(d[n] for n in negatives) / len(negatives) + margin
        violations.append(violation.item())
        terms.append(F.softplus(violation) if soft_margin else F.relu(violation))
    total = sum(terms, x.sum() * 0)
    if reduction == "sum":
        return total, violations
    count = len(terms) if reduction == "mean" else sum(bool(t > 0) for t in terms)
    return total / max(count, 1), violations


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("selection", [{}, {"hardest_negatives": 2}, {"hardest_positives": 1, "hardest_negatives": 3},
                                       {"semi_hard_negatives": True}])
def test_value_and_gradient_match_the_formula(selection, kind, dtype):
    margin = 0.6 if kind != "cosine" else 0.3
    for seed in range(2):
        x, y = batch(seed, dtype)
        value = MultiPositiveTripletLoss(margin=margin, distance=kind, **selection)(x, y)
        expected, _ = reference(x, y, kind, margin, selection.get("hardest_positives"),
                                selection.get("hardest_negatives"), selection.get("semi_hard_negatives", False))
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(value, expected, atol=tol, rtol=tol)
        torch.testing.assert_close(torch.autograd.grad(value, x)[0], torch.autograd.grad(expected, x)[0],
                                   atol=tol, rtol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero", "sum"])
def test_soft_margin_reductions_and_statistics(soft_margin, reduction):
    x, y = batch(3)
    loss = MultiPositiveTripletLoss(margin=0.5, soft_margin=soft_margin, reduction=reduction, hardest_negatives=2)
    value = loss(x, y)
    expected, violations = reference(x, y, "sqeuclidean", 0.5, None, 2, False, soft_margin, reduction)
    torch.testing.assert_close(value, expected)
    stats = loss.last_stats
    assert all(t.ndim == 0 and not t.requires_grad for t in stats.values())
    assert float(stats["active_fraction"]) == pytest.approx(sum(v > 0 for v in violations) / len(violations))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [7, 7, 7], [4]], ids=["all-distinct", "one-speaker", "one-utterance"])
def test_no_valid_anchor_gives_zero_not_nan(labels):
    x, y = batch(5, labels=labels)
    loss = MultiPositiveTripletLoss(hardest_negatives=2)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    assert loss.last_stats["active_fraction"].item() == 0.0


def test_singleton_speakers_are_negatives_but_not_anchors():
    x, _ = batch(6, labels=[0, 0, 1])
    y = torch.tensor([0, 0, 1])
    value = MultiPositiveTripletLoss(margin=1.0)(x, y)
    d = torch.cdist(x, x).pow(2)
    expected = (F.relu(d[0, 1] - d[0, 2] + 1) + F.relu(d[1, 0] - d[1, 2] + 1)) / 2
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("kind", ["sqeuclidean", "euclidean", "cosine"])
def test_gradcheck(kind):
    x, y = batch(7, labels=[0, 0, 1, 1, 1, 2])
    loss = MultiPositiveTripletLoss(margin=0.3, distance=kind, hardest_negatives=2, soft_margin=kind == "cosine")
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))
