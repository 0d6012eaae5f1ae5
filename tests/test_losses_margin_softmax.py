"""AAM softmax against SpeechBrain's AdditiveAngularMargin; the combined loss and build_loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from speakertrip.errors import ConfigError
from speakertrip.losses import (
    LOSSES,
    AAMSoftmax,
    CombinedLoss,
    MultiPositiveTripletLoss,
    TripletLoss,
    build_loss,
    loss_needs_classes,
)


def data(seed=0, batch=16, dim=8, classes=5):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, dim, generator=generator, dtype=torch.float64, requires_grad=True)
    return x, torch.randint(0, classes, (batch,), generator=generator)


@pytest.mark.parametrize("easy_margin", [False, True])
def test_logits_and_loss_match_speechbrain(easy_margin):
    from speechbrain.nnet.losses import AdditiveAngularMargin

    torch.manual_seed(0)
    head = AAMSoftmax(8, 5, margin=0.3, scale=20.0, easy_margin=easy_margin).double()
    x, y = data()
    x.data[0] = -head.weight.data[y[0]]  # θ = π: the branch past π − m
    cosine = F.normalize(x, dim=1) @ F.normalize(head.weight, dim=1).T
    expected = AdditiveAngularMargin(0.3, 20.0, easy_margin)(cosine, F.one_hot(y, 5).double())
    logits, _ = head.logits(x, y)
    torch.testing.assert_close(logits, expected.double(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head(x, y), F.cross_entropy(expected.double(), y), rtol=1e-5, atol=1e-5)


def test_target_logit_is_the_scaled_cosine_of_the_angle_plus_margin():
    head = AAMSoftmax(8, 5, margin=0.2, scale=30.0).double()
    x, y = data(1)
    logits, cosine = (t.detach() for t in head.logits(x, y))
    for i, label in enumerate(y.tolist()):
        theta = math.acos(float(cosine[i, label]))
        target = math.cos(theta + 0.2) if theta + 0.2 < math.pi else float(cosine[i, label]) - 0.2 * math.sin(0.2)
        assert float(logits[i, label]) == pytest.approx(30 * target, abs=1e-5)
        others = [j for j in range(5) if j != label]
        torch.testing.assert_close(logits[i, others], 30 * cosine[i, others].clamp(-1 + 1e-7, 1 - 1e-7))


def test_accuracy_statistic_and_gradients_reach_the_weights():
    head = AAMSoftmax(8, 5).double()
    x, y = data(2)
    head(x, y).backward()
    _, cosine = head.logits(x, y)
    assert head.last_stats["accuracy"].item() == pytest.approx((cosine.argmax(1) == y).double().mean().item())
    assert head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_gradcheck():
    head = AAMSoftmax(4, 3, margin=0.2, scale=5.0).double()
    x, y = data(3, batch=5, dim=4, classes=3)
    assert torch.autograd.gradcheck(lambda e: head(e, y), (x,))


def test_labels_outside_the_classes_are_refused():
    head = AAMSoftmax(8, 5)
    with pytest.raises(ValueError, match=r"labels must lie in 0..4 \(num_classes=5\), got 0..5"):
        head(torch.randn(3, 8), torch.tensor([0, 5, 1]))
    with pytest.raises(ValueError, match="embeddings have dimension 7, the head was built for 8"):
        head(torch.randn(3, 7), torch.tensor([0, 1, 1]))


def test_combined_loss_is_the_weighted_sum_and_keeps_both_statistics():
    torch.manual_seed(1)
    x, y = data(4)
    loss = build_loss("triplet+aam", embedding_dim=8, num_classes=5, aam_weight=0.25,
                      metric={"margin": 0.3, "miner": "batch_hard"}, aam={"margin": 0.1, "scale": 10.0}).double()
    assert isinstance(loss, CombinedLoss) and loss.metric.miner.__class__.__name__ == "BatchHardMiner"
    value = loss(x, y)
    expected = TripletLoss(0.3, miner="batch_hard")(x, y) + 0.25 * loss.aam(x, y)
    torch.testing.assert_close(value, expected)
    assert {"active_fraction", "positive_distance", "negative_distance", "accuracy", "metric_loss",
            "aam_loss"} <= set(loss.last_stats)
    assert [name for name, _ in loss.named_parameters()] == ["aam.weight"]


def test_build_loss_registry_and_class_requirements():
    assert {"triplet", "multi_positive", "aam", "triplet+aam", "multi_positive+aam"} <= set(LOSSES.names())
    assert [loss_needs_classes(k) for k in ("triplet", "multi_positive", "aam", "triplet+aam")] == [
        False, False, True, True]
    loss = build_loss("multi_positive", embedding_dim=8, num_classes=5, hardest_negatives=4, margin=0.3)
    assert isinstance(loss, MultiPositiveTripletLoss) and loss.miner.hardest_negatives == 4
    assert isinstance(build_loss("aam", embedding_dim=8, num_classes=5, scale=20), AAMSoftmax)


@pytest.mark.parametrize("kind, options, message", [
    ("triplets", {}, "unknown loss 'triplets'; valid names: aam, multi_positive"),
    ("triplet", {"margn": 0.3}, "loss 'triplet': unknown option 'margn'; valid options: margin, distance, miner"),
    ("multi_positive", {"hardest_negative": 4}, "unknown option 'hardest_negative'"),
    ("aam", {"num_classes": None}, "needs embedding_dim and num_classes"),
    ("triplet+aam", {"aam": {"scale": 30, "margins": 0.2}}, "aam options: unknown option 'margins'"),
    ("triplet+aam", {"metric": {"mine": "batch_hard"}}, "triplet options: unknown option 'mine'"),
    ("aam", {"scale": 0}, "scale must be a finite number > 0"),
])
def test_build_loss_fails_loudly_on_bad_options(kind, options, message):
    sizes = {} if "num_classes" in options else {"embedding_dim": 8, "num_classes": 5}
    options = {key: value for key, value in options.items() if key != "num_classes"}
    with pytest.raises(ConfigError, match=message):
        build_loss(kind, **sizes, **options)
