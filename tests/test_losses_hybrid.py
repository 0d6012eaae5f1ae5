"""The hybrid ``multi_positive+aam`` (the loss study's): multi-positive hardest-k + weight × AAM, against loops."""

import math

import pytest
import torch
import torch.nn.functional as F

from speakertrip.errors import ConfigError
from speakertrip.losses import CombinedLoss, build_loss

from test_losses_multi_positive import reference as multi_positive_reference

LABELS = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 4]


def batch(seed, dim=6, classes=5):
    generator = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(len(LABELS), dim, generator=generator, dtype=torch.float64), dim=1)
    order = torch.randperm(len(LABELS), generator=generator)
    return x.requires_grad_(), torch.tensor(LABELS)[order]


def aam_reference(x, y, weight, margin, scale):
    """Cross-entropy of ``s·cos(θ_y + m)`` against ``s·cos θ_j``, one row at a time, angles from acos."""
    total = x.sum() * 0
    for row, label in zip(x, y.tolist()):
        logits = []
        for j, w in enumerate(weight):
            cosine = (row @ w) / (row.norm() * w.norm())
            if j == label:
                theta = torch.acos(cosine.clamp(-1 + 1e-7, 1 - 1e-7))
                cosine = torch.cos(theta + margin) if theta + margin <= math.pi else cosine - margin * math.sin(margin)
            logits.append(scale * cosine)
        logits = torch.stack(logits)
        total = total - (logits[label] - torch.logsumexp(logits, 0))
    return total / len(x)


@pytest.mark.parametrize("aam_weight", [0.0, 0.3, 1.0, 2.5])
@pytest.mark.parametrize("hardest", [None, 2, 4])
def test_value_and_gradient_are_the_weighted_sum_of_the_loops(aam_weight, hardest):
    torch.manual_seed(0)
    for seed in range(2):
        x, y = batch(seed)
        metric = {"margin": 0.3} | ({"hardest_negatives": hardest} if hardest else {})
        loss = build_loss("multi_positive+aam", embedding_dim=6, num_classes=5, aam_weight=aam_weight,
                          metric=metric, aam={"margin": 0.2, "scale": 30.0}).double()
        assert isinstance(loss, CombinedLoss) and loss.aam_weight == aam_weight
        value = loss(x, y)
        triplet, _ = multi_positive_reference(x, y, "sqeuclidean", 0.3, None, hardest)
        expected = triplet + aam_weight * aam_reference(x, y, loss.aam.weight, 0.2, 30.0)
        torch.testing.assert_close(value, expected, atol=1e-10, rtol=1e-9)
        (grad,) = torch.autograd.grad(value, x, retain_graph=True)
        (expected_grad,) = torch.autograd.grad(expected, x)
        torch.testing.assert_close(grad, expected_grad, atol=1e-9, rtol=1e-7)
        assert loss.last_stats["metric_loss"].item() == pytest.approx(triplet.item())


def test_the_head_learns_with_the_encoder_and_statistics_name_both_terms():
    x, y = batch(3)
    loss = build_loss("multi_positive+aam", embedding_dim=6, num_classes=5, aam_weight=0.5,
                      metric={"hardest_negatives": 4}).double()
    loss(x, y).backward()
    assert loss.aam.weight.grad is not None and loss.aam.weight.grad.abs().sum() > 0
    assert {"active_fraction", "accuracy", "metric_loss", "aam_loss"} <= set(loss.last_stats)


@pytest.mark.parametrize("options, message", [
    ({"aam_weight": -1}, "aam_weight must be a number >= 0, got -1"),
    ({"metric": {"hardest_negative": 4}}, "multi_positive options: unknown option 'hardest_negative'"),
    ({"weight": 1.0}, "unknown option 'weight'"),
])
def test_bad_options_fail_naming_the_key(options, message):
    with pytest.raises(ConfigError, match=message):
        build_loss("multi_positive+aam", embedding_dim=6, num_classes=5, **options)
