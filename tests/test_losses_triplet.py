"""TripletLoss and its miners against loops over explicitly enumerated triplets, and against PML."""

import pytest
import torch
import torch.nn.functional as F

from speakertrip.errors import ConfigError
from speakertrip.losses import Miner, TripletLoss, Triplets, build_miner, pairwise_distances

from distance_reference import distance

LABELS = [0, 0, 0, 1, 1, 2, 3, 3, 3, 3, 4, 5, 5]  # speakers 2 and 4 have a single utterance


def batch(seed, dtype=torch.float64, labels=LABELS, dim=5):
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    x = torch.randn(len(labels), dim, generator=generator, dtype=dtype)
    return F.normalize(x, dim=1).requires_grad_(), torch.tensor(labels)[order]


def enumerate_triplets(x, y, miner, kind, margin=0.2, k=2):
    """Selected (a, p, n) by plain loops, as the definitions read."""
    y = y.tolist()
    d = {(i, j): float(distance(x, i, j, kind)) for i in range(len(y)) for j in range(len(y)) if i != j}
    selected = []
    for a in range(len(y)):
        positives = [p for p in range(len(y)) if p != a and y[p] == y[a]]
        negatives = sorted((n for n in range(len(y)) if y[n] != y[a]), key=lambda n: d[a, n])
        if not positives or not negatives:
            continue
        if miner == "batch_hard":
            selected.append((a, max(positives, key=lambda p: d[a, p]), negatives[0]))
            continue
        for p in positives:
            if miner == "batch_all":
                chosen = negatives
            elif miner == "hardest_k":
                chosen = negatives[:k]
            else:  # semi_hard
                chosen = [n for n in negatives if d[a, p] < d[a, n] < d[a, p] + margin] or negatives[:1]
            selected += [(a, p, n) for n in chosen]
    return selected


def reference_loss(x, y, triplets, kind, margin, soft_margin=False, reduction="mean"):
    terms = [distance(x, a, p, kind) - distance(x, a, n, kind) + margin for a, p, n in triplets]
    terms = [F.softplus(t) if soft_margin else F.relu(t) for t in terms]
    total = sum(terms, x.sum() * 0)
    if reduction == "sum":
        return total
    count = len(terms) if reduction == "mean" else sum(bool(t > 0) for t in terms)
    return total / max(count, 1)


def as_set(triplets):
    rows, negatives = triplets.pair_negatives().nonzero(as_tuple=True)
    return set(zip(triplets.anchors[rows].tolist(), triplets.positives[rows].tolist(), negatives.tolist()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("miner", ["batch_all", "batch_hard", "hardest_k", "semi_hard"])
def test_loss_value_gradient_and_selection_match_loops(miner, kind, dtype):
    margin = 0.3 if kind != "cosine" else 0.1
    for seed in range(2):
        x, y = batch(seed, dtype)
        spec = {"name": "hardest_k", "k": 2} if miner == "hardest_k" else miner
        loss = TripletLoss(margin=margin, distance=kind, miner=spec)
        value = loss(x, y)
        (grad,) = torch.autograd.grad(value, x)
        triplets = enumerate_triplets(x.detach().double(), y, miner, kind, margin)
        mined = loss.miner(pairwise_distances(x.detach(), kind), y, x)
        assert as_set(mined) == set(triplets)
        expected = reference_loss(x, y, triplets, kind, margin)
        (expected_grad,) = torch.autograd.grad(expected, x)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(value, expected, atol=tol, rtol=tol)
        torch.testing.assert_close(grad, expected_grad, atol=tol, rtol=1e-4 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero", "sum"])
def test_soft_margin_and_reductions_match_loops(soft_margin, reduction):
    x, y = batch(3)
    loss = TripletLoss(margin=0.4, soft_margin=soft_margin, reduction=reduction)
    value = loss(x, y)
    triplets = enumerate_triplets(x.detach(), y, "batch_all", "sqeuclidean")
    expected = reference_loss(x, y, triplets, "sqeuclidean", 0.4, soft_margin, reduction)
    torch.testing.assert_close(value, expected)
    (grad,) = torch.autograd.grad(value, x)
    torch.testing.assert_close(grad, torch.autograd.grad(expected, x)[0])


def test_statistics_are_detached_tensors_equal_to_loop_means():
    x, y = batch(4)
    loss = TripletLoss(margin=0.5)
    loss(x, y)
    triplets = enumerate_triplets(x.detach(), y, "batch_all", "sqeuclidean")
    x = x.detach()
    ap = [float(distance(x, a, p, "sqeuclidean")) for a, p, n in triplets]
    an = [float(distance(x, a, n, "sqeuclidean")) for a, p, n in triplets]
    pairs = {(a, p): value for (a, p, n), value in zip(triplets, ap)}
    stats = loss.last_stats
    assert all(t.ndim == 0 and not t.requires_grad for t in stats.values())
    assert float(stats["active_fraction"]) == pytest.approx(
        sum(p - n + 0.5 > 0 for p, n in zip(ap, an)) / len(triplets))
    assert float(stats["positive_distance"]) == pytest.approx(sum(pairs.values()) / len(pairs))
    assert float(stats["negative_distance"]) == pytest.approx(sum(an) / len(an))


@pytest.mark.parametrize("labels", [[0, 1, 2, 3], [7, 7, 7, 7], [0, 1, 1, 2][:1]],
                         ids=["all-distinct", "one-speaker", "one-utterance"])
@pytest.mark.parametrize("miner", ["batch_all", "batch_hard", "semi_hard", "hardest_k", "random",
                                   "distance_weighted"])
def test_no_valid_triplet_gives_zero_not_nan(labels, miner):
    x, y = batch(5, labels=labels)
    loss = TripletLoss(miner=miner)
    value = loss(x, y)
    (grad,) = torch.autograd.grad(value, x)
    assert value.item() == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    assert loss.last_stats["active_fraction"].item() == 0.0


@pytest.mark.parametrize("kind", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("miner", ["batch_all", "batch_hard"])
def test_gradcheck(kind, miner):
    x, y = batch(6, labels=[0, 0, 1, 1, 1, 2])
    loss = TripletLoss(margin=0.3, distance=kind, miner=miner, soft_margin=kind == "cosine")
    assert torch.autograd.gradcheck(lambda e: loss(e, y), (x,))


@pytest.mark.parametrize("kind", ["sqeuclidean", "euclidean", "cosine"])
@pytest.mark.parametrize("reduction", ["mean", "mean_nonzero"])
@pytest.mark.parametrize("soft_margin", [False, True])
def test_batch_all_agrees_with_pytorch_metric_learning(kind, reduction, soft_margin):
    from pytorch_metric_learning import distances, losses, reducers

    peer_distance = {"sqeuclidean": distances.LpDistance(power=2, normalize_embeddings=False),
                     "euclidean": distances.LpDistance(normalize_embeddings=False),
                     "cosine": distances.CosineSimilarity()}[kind]
    reducer = reducers.MeanReducer() if reduction == "mean" else reducers.AvgNonZeroReducer()
    peer = losses.TripletMarginLoss(margin=0.2, distance=peer_distance, reducer=reducer, smooth_loss=soft_margin)
    x, y = batch(7, torch.float64, labels=[i // 4 for i in range(32)], dim=8)
    ours = TripletLoss(margin=0.2, distance=kind, reduction=reduction, soft_margin=soft_margin)(x, y)
    torch.testing.assert_close(ours, peer(x, y))


def test_batch_hard_agrees_with_pytorch_metric_learning():
    from pytorch_metric_learning import distances, losses, miners, reducers

    distance = distances.LpDistance(power=2, normalize_embeddings=False)
    x, y = batch(8, torch.float64, labels=[i // 4 for i in range(32)], dim=8)
    indices = miners.BatchHardMiner(distance=distance)(x, y)
    peer = losses.TripletMarginLoss(margin=0.3, distance=distance, reducer=reducers.MeanReducer())
    torch.testing.assert_close(TripletLoss(margin=0.3, miner="batch_hard")(x, y), peer(x, y, indices))


def test_normalize_option_equals_normalising_first():
    x = torch.randn(12, 4, dtype=torch.float64)
    y = torch.tensor(LABELS[:12])
    torch.testing.assert_close(TripletLoss(normalize=True)(x, y), TripletLoss()(F.normalize(x, dim=1), y))


@pytest.mark.parametrize("options, message", [
    ({"distance": "manhattan"}, "valid: cosine, euclidean, sqeuclidean"),
    ({"reduction": "max"}, "valid: mean, mean_nonzero, sum"),
    ({"margin": -0.1}, "margin must be"),
    ({"miner": "hardest"}, "valid names: batch_all, batch_hard"),
    ({"miner": {"name": "hardest_k", "kk": 3}}, "unknown option 'kk'; valid options: k"),
    ({"miner": {"name": "hardest_k", "k": 0}}, "k must be an integer >= 1"),
    ({"miner": {"k": 3}}, "mapping with a 'name' key"),
])
def test_bad_options_fail_with_the_valid_choices(options, message):
    with pytest.raises(ConfigError, match=message):
        TripletLoss(**options)


def test_bad_inputs_name_what_was_expected():
    loss = TripletLoss()
    with pytest.raises(ValueError, match=r"embeddings must be a \(batch, dim\) floating tensor"):
        loss(torch.randn(4), torch.arange(4))
    with pytest.raises(ValueError, match=r"labels must be a \(4,\) integer tensor, got \(3,\)"):
        loss(torch.randn(4, 2), torch.arange(3))
    with pytest.raises(ValueError, match="integer tensor"):
        loss(torch.randn(4, 2), torch.zeros(4))


def test_semi_hard_by_name_uses_the_loss_margin_unless_given():
    assert TripletLoss(margin=0.7, miner="semi_hard").miner.margin == 0.7
    assert build_miner({"name": "semi_hard", "margin": 0.1}, margin=0.7).margin == 0.1


class PerPairBatchAll(Miner):
    """Batch-all laid out per pair (M, B), to check both layouts of the penalty sum agree."""

    def mine(self, dist, labels, embeddings):
        triplets = build_miner("batch_all").mine(dist, labels, embeddings)
        return Triplets(triplets.anchors, triplets.positives, triplets.pair_negatives())


@pytest.mark.parametrize("soft_margin", [False, True])
def test_per_anchor_and_per_pair_layouts_agree_with_ties_and_uneven_speakers(soft_margin):
    generator = torch.Generator().manual_seed(9)
    labels = torch.randint(0, 9, (64,), generator=generator)
    x = torch.randn(64, 8, generator=generator, dtype=torch.float64)
    x[10:14] = x[0]  # exact distance ties
    x.requires_grad_()
    values, grads = [], []
    for miner in ("batch_all", PerPairBatchAll()):
        value = TripletLoss(margin=0.5, miner=miner, soft_margin=soft_margin, reduction="mean_nonzero")(x, labels)
        values.append(value)
        grads.append(torch.autograd.grad(value, x)[0])
    torch.testing.assert_close(values[0], values[1])
    torch.testing.assert_close(grads[0], grads[1])


def test_half_precision_embeddings_are_scored_in_float32():
    x, y = batch(10, torch.float32)
    loss = TripletLoss()(x.detach().bfloat16(), y)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, TripletLoss()(x.detach().bfloat16().float(), y))
