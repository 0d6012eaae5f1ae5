"""Triplet miners: pick (anchor, positive, negatives) from a (B, B) distance matrix, under no_grad.

Every miner returns :class:`Triplets` (pairs × B masks, never B³), checked against the labels
before a loss consumes it. Miners are registered by name in ``MINERS``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping

import torch

from speakertrip.errors import ConfigError
from speakertrip.losses.distances import unit_sphere_euclidean
from speakertrip.losses.selection import AnchorSets, Triplets, fixed_layout, label_masks, positive_pairs
from speakertrip.options import check_count, construct
from speakertrip.registry import Registry

MINERS: Registry = Registry("miner")


def k_extreme(values: torch.Tensor, mask: torch.Tensor, k: int, largest: bool) -> torch.Tensor:
    """(R, B) bool: per row, the ``k`` largest (or smallest) ``values`` among ``mask`` (all if fewer)."""
    k = min(k, values.shape[1])
    fill = -math.inf if largest else math.inf
    index = values.masked_fill(~mask, fill).topk(k, dim=1, largest=largest).indices
    return torch.zeros_like(mask).scatter_(1, index, True) & mask


def hardest_negative(dist: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """(R, B) bool: the closest negative of each row of ``dist`` among ``negatives``."""
    return k_extreme(dist, negatives, 1, largest=False)


class Miner(ABC):
    """Base class: ``miner(dist (B, B), labels (B,), embeddings (B, D)) -> Triplets``.

    Subclasses implement :meth:`mine`; calling the miner runs it without gradients, drops pairs
    left without negatives and checks the result.
    """

    uses_margin = False  # True: a loss built with this miner by name passes its own margin

    def __call__(self, dist: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor) -> Triplets:
        with torch.no_grad():
            triplets = self.mine(dist.detach(), labels, embeddings.detach())
            triplets.check(labels, type(self).__name__)
            triplets = triplets.subset(triplets.negatives_per_pair() > 0)
        return triplets

    @abstractmethod
    def mine(self, dist: torch.Tensor, labels: torch.Tensor, embeddings: torch.Tensor) -> Triplets:
        """Select triplets; ``dist`` and ``embeddings`` are detached."""

    def __repr__(self) -> str:
        options = ", ".join(f"{key}={value!r}" for key, value in vars(self).items() if not key.startswith("_"))
        return f"{type(self).__name__}({options})"


def all_pairs(labels: torch.Tensor) -> tuple[Triplets, torch.Tensor]:
    """Every positive pair as :class:`Triplets` with the anchors' negatives (per anchor), and the (B, B)
    negative mask (a fixed-size layout inside :func:`~speakertrip.losses.selection.grouped_batch`)."""
    _, negative = label_masks(labels)
    anchors, positives, valid, width = positive_pairs(labels)
    return Triplets(anchors, positives, negative, True, valid, width), negative


def with_negatives(pairs: Triplets, negatives: torch.Tensor) -> Triplets:
    """``pairs`` with per-pair ``negatives`` (M, B)."""
    return Triplets(pairs.anchors, pairs.positives, negatives, False, pairs.valid, pairs.width)


@MINERS.register("batch_all")
class BatchAllMiner(Miner):
    """Every valid triplet: each positive pair with every negative of its anchor."""

    def mine(self, dist, labels, embeddings):
        return all_pairs(labels)[0]


@MINERS.register("batch_hard")
class BatchHardMiner(Miner):
    """Per anchor, its hardest (farthest) positive and hardest (closest) negative (Hermans et al.)."""

    def mine(self, dist, labels, embeddings):
        positive, negative = label_masks(labels)
        usable = positive.any(dim=1) & negative.any(dim=1)
        farthest = dist.masked_fill(~positive, -math.inf).argmax(dim=1)
        if fixed_layout():  # every row is an anchor, unusable ones masked: no nonzero
            anchors = torch.arange(len(labels), device=labels.device)
            return Triplets(anchors, farthest, hardest_negative(dist, negative), True, usable, 1)
        anchors = usable.nonzero(as_tuple=True)[0]
        return Triplets(anchors, farthest[anchors], hardest_negative(dist, negative), per_anchor=True)


@MINERS.register("semi_hard")
class SemiHardMiner(Miner):
    """Per positive pair, the negatives with ``d(a,p) < d(a,n) < d(a,p) + margin`` (FaceNet).

    Pairs with no such negative fall back to the anchor's hardest negative.
    """

    uses_margin = True

    def __init__(self, margin: float = 0.2):
        if not margin > 0:
            raise ConfigError(f"semi_hard miner: margin must be > 0, got {margin!r}")
        self.margin = float(margin)

    def mine(self, dist, labels, embeddings):
        pairs, negative = all_pairs(labels)
        rows, candidates = dist[pairs.anchors], negative[pairs.anchors]
        ap = dist[pairs.anchors, pairs.positives][:, None]
        band = candidates & (rows > ap) & (rows < ap + self.margin)
        fallback = hardest_negative(rows, candidates)
        return with_negatives(pairs, torch.where(band.any(dim=1, keepdim=True), band, fallback))


@MINERS.register("hardest_k")
class HardestKMiner(Miner):
    """Per positive pair, the ``k`` closest negatives of its anchor (all of them if fewer)."""

    def __init__(self, k: int = 4):
        self.k = check_count(k, "hardest_k miner: k")

    def mine(self, dist, labels, embeddings):
        pairs, negative = all_pairs(labels)
        pairs.negatives = k_extreme(dist, negative, self.k, largest=False)
        return pairs


class SamplingMiner(Miner):
    """Base of miners that draw one negative per positive pair from per-anchor weights.

    With a ``seed`` the draws come from the miner's own generator, made on the batch's device at the first
    draw; :meth:`generator_state` and :meth:`set_generator_state` carry it through a checkpoint, so that a
    resumed run draws what the uninterrupted one would have.
    """

    def __init__(self, seed: int | None = None):
        self.seed = seed
        self._generator: torch.Generator | None = None
        self._restored: torch.Tensor | None = None

    def generator_state(self) -> torch.Tensor | None:
        """The seeded generator's state (a uint8 CPU tensor); None before the first draw or without a seed."""
        if self._generator is None:
            return self._restored
        return self._generator.get_state()

    def set_generator_state(self, state: torch.Tensor | None) -> None:
        """Continue from ``state`` (from :meth:`generator_state`); applied when the generator is made."""
        self._generator, self._restored = None, state

    def draw(self, weights: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(M, B) bool: one column per row of ``weights[anchors]`` drawn with those weights."""
        if self.seed is not None and (self._generator is None or self._generator.device != weights.device):
            self._generator = torch.Generator(device=weights.device).manual_seed(self.seed)
            if self._restored is not None:
                self._generator.set_state(self._restored)
                self._restored = None
        rows = weights[anchors]
        rows = torch.where(rows.sum(dim=1, keepdim=True) > 0, rows, 1.0)  # their pairs are already marked invalid
        chosen = torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        if len(rows):
            index = torch.multinomial(rows, 1, generator=self._generator if self.seed is not None else None)
            chosen.scatter_(1, index, True)
        return chosen


@MINERS.register("random")
class RandomNegativeMiner(SamplingMiner):
    """Per positive pair, one negative of its anchor drawn uniformly (``seed`` for reproducibility)."""

    def mine(self, dist, labels, embeddings):
        pairs, negative = all_pairs(labels)
        pairs = pairs.subset(negative[pairs.anchors].any(dim=1))
        return with_negatives(pairs, self.draw(negative.to(dist.dtype), pairs.anchors))


@MINERS.register("distance_weighted")
class DistanceWeightedMiner(SamplingMiner):
    """Per positive pair, one negative drawn with weight ``1 / q(d)`` (Wu et al., 2017).

    ``q(d) ∝ d^(D−2) (1 − d²/4)^((D−3)/2)`` is the density of distances between uniform points
    on the unit sphere in D dimensions; ``d`` is the Euclidean distance of the L2-normalised
    embeddings, clipped below at ``cutoff``. Negatives at ``d >= nonzero_loss_cutoff`` are never
    drawn; an anchor left with none draws uniformly among its negatives.
    """

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int | None = None):
        if not 0 < cutoff < nonzero_loss_cutoff:
            raise ConfigError(f"distance_weighted miner: need 0 < cutoff < nonzero_loss_cutoff, "
                              f"got {cutoff!r} and {nonzero_loss_cutoff!r}")
        super().__init__(seed)
        self.cutoff, self.nonzero_loss_cutoff = float(cutoff), float(nonzero_loss_cutoff)

    def mine(self, dist, labels, embeddings):
        pairs, negative = all_pairs(labels)
        pairs = pairs.subset(negative[pairs.anchors].any(dim=1))
        unit_dist = unit_sphere_euclidean(embeddings.to(dist.dtype))
        d = unit_dist.clamp(self.cutoff, 2.0 - 1e-4)
        dim = embeddings.shape[1]
        log_weights = -((dim - 2) * d.log() + (dim - 3) / 2 * (1.0 - d.pow(2) / 4).log())
        allowed = negative & (unit_dist < self.nonzero_loss_cutoff)
        log_weights = log_weights.masked_fill(~allowed, -math.inf)
        peak = log_weights.amax(dim=1, keepdim=True).clamp_min(-1e30)  # finite even for empty rows
        weights = (log_weights - peak).exp()
        uniform = negative.to(weights.dtype)
        weights = torch.where(allowed.any(dim=1, keepdim=True), weights, uniform)
        return with_negatives(pairs, self.draw(weights, pairs.anchors))


class AnchorSetMiner:
    """Per-anchor positive and negative sets for the multi-positive loss, under no_grad.

    Parameters
    ----------
    hardest_positives, hardest_negatives : int or None
        Keep only the k farthest positives / k closest negatives of each anchor (None: all).
    semi_hard_margin : float or None
        Keep only negatives with ``mean_p d(a,p) < d(a,n) < mean_p d(a,p) + margin`` (the
        hardest negative when none), before ``hardest_negatives`` applies.
    """

    def __init__(self, hardest_positives: int | None = None, hardest_negatives: int | None = None,
                 semi_hard_margin: float | None = None):
        for name, k in (("hardest_positives", hardest_positives), ("hardest_negatives", hardest_negatives)):
            check_count(k, name, optional=True)
        self.hardest_positives, self.hardest_negatives = hardest_positives, hardest_negatives
        self.semi_hard_margin = semi_hard_margin

    def __call__(self, dist: torch.Tensor, labels: torch.Tensor) -> AnchorSets:
        with torch.no_grad():
            dist = dist.detach()
            positive, negative = label_masks(labels)
            if self.hardest_positives is not None:
                positive = k_extreme(dist, positive, self.hardest_positives, largest=True)
            if self.semi_hard_margin is not None:
                mean_positive = ((dist * positive).sum(dim=1) / positive.sum(dim=1).clamp_min(1))[:, None]
                band = negative & (dist > mean_positive) & (dist < mean_positive + self.semi_hard_margin)
                negative = torch.where(band.any(dim=1, keepdim=True), band, hardest_negative(dist, negative))
            if self.hardest_negatives is not None:
                negative = k_extreme(dist, negative, self.hardest_negatives, largest=False)
            sets = AnchorSets(positive, negative)
            sets.check(labels, type(self).__name__)
        return sets


def sampling_miners(module: torch.nn.Module) -> list[SamplingMiner]:
    """The seeded sampling miners held by ``module`` or its submodules (a loss, the training module), in order."""
    return [value for child in module.modules() for value in vars(child).values()
            if isinstance(value, SamplingMiner) and value.seed is not None]


def build_miner(spec: str | Mapping | Miner, margin: float | None = None) -> Miner:
    """A miner from a name (``"batch_hard"``), a mapping (``{"name": "hardest_k", "k": 8}``) or itself.

    ``margin`` is passed to miners that use one (``semi_hard``) unless the mapping sets it.

    >>> build_miner({"name": "hardest_k", "k": 2})
    HardestKMiner(k=2)
    """
    if isinstance(spec, Miner):
        return spec
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, Mapping) and isinstance(spec.get("name"), str):
        name, options = spec["name"], {key: value for key, value in spec.items() if key != "name"}
    else:
        raise ConfigError(f"miner must be a name, a mapping with a 'name' key or a Miner, got {spec!r}")
    factory = MINERS.get(name)
    if factory.uses_margin and margin is not None:
        options.setdefault("margin", margin)
    return construct(factory, options, f"miner {name!r}")
