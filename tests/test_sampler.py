from collections import Counter

import numpy as np
import pytest

from speakertrip.data.sampler import PKSampler
from speakertrip.errors import ConfigError


def speakers_with(sizes, seed=0):
    """Utterance → speaker list, speakers interleaved in random order."""
    labels = [f"s{speaker:03d}" for speaker, size in enumerate(sizes) for _ in range(size)]
    return list(np.random.default_rng(seed).permutation(labels))


def epoch(sampler, number=0, start=0):
    sampler.set_epoch(number, start)
    return list(sampler)


@pytest.mark.parametrize("p, k, replicas", [(4, 2, 1), (3, 3, 2), (2, 4, 3)])
def test_batches_hold_p_distinct_speakers_times_k_and_shards_are_disjoint(p, k, replicas):
    labels = speakers_with(np.random.default_rng(1).integers(1, 15, 40))
    ranks = [PKSampler(labels, p, k, seed=3, num_replicas=replicas, rank=r) for r in range(replicas)]
    per_rank = [epoch(sampler, 2) for sampler in ranks]
    assert len({len(batches) for batches in per_rank}) == 1 and len(per_rank[0]) == len(ranks[0]) > 0
    for step in zip(*per_rank):
        step_speakers = []
        for batch in step:
            assert len(batch) == p * k
            counts = Counter(labels[index] for index, _ in batch)
            assert len(counts) == p and set(counts.values()) == {k}
            step_speakers += list(counts)
        assert len(set(step_speakers)) == replicas * p  # no speaker on two ranks in one step


def test_one_pass_uses_every_utterance_when_nothing_is_left_over():
    labels = speakers_with([4] * 6 + [2] * 6)  # 12 + 6 = 18 groups of 2 → 3 steps of P=6
    batches = epoch(PKSampler(labels, p=6, k=2, seed=0))
    assert len(batches) == 3
    assert sorted(index for batch in batches for index, _ in batch) == list(range(len(labels)))


def test_short_speakers_rule_repeat_and_drop():
    labels = speakers_with([1, 2, 5, 5, 5, 5])  # s000 has 1 utterance, s001 has 2, K = 3
    lonely = labels.index("s000")
    seen_lonely = False
    for number in range(5):
        for batch in epoch(PKSampler(labels, p=3, k=3, seed=0), number):
            items = [(index, seed) for index, seed in batch if labels[index] == "s000"]
            if items:
                seen_lonely = True
                assert [index for index, _ in items] == [lonely] * 3
                assert len({seed for _, seed in items}) == 3  # repeats are different crops
    assert seen_lonely
    dropping = PKSampler(labels, p=3, k=3, seed=0, short_speakers="drop", batches_per_epoch=6)
    used = {labels[index] for batch in epoch(dropping) for index, _ in batch}
    assert used == {"s002", "s003", "s004", "s005"}
    for batch in epoch(PKSampler(labels, p=3, k=3, seed=0)):  # top-ups: a speaker with >= K never repeats a file
        for speaker in ("s002", "s003"):
            indices = [index for index, _ in batch if labels[index] == speaker]
            assert len(indices) == len(set(indices))


def test_determinism_by_seed_and_epoch_and_resume():
    labels = speakers_with([6] * 10)
    sampler = PKSampler(labels, p=3, k=2, seed=5)
    first = epoch(sampler, 0)
    assert epoch(PKSampler(labels, p=3, k=2, seed=5), 0) == first
    assert epoch(sampler, 1) != first
    assert epoch(PKSampler(labels, p=3, k=2, seed=4), 1) == first  # the generator is seeded by seed + epoch
    sampler.set_epoch(0, start_batch=4)
    assert len(sampler) == len(first) - 4 and list(sampler) == first[4:]
    with pytest.raises(ConfigError, match="start_batch 99"):
        sampler.set_epoch(0, 99)


def test_epoch_defined_by_batches_chains_plans():
    labels = speakers_with([2] * 8)  # one pass = 2 steps of P=4, K=2
    assert len(PKSampler(labels, p=4, k=2)) == 2
    sampler = PKSampler(labels, p=4, k=2, batches_per_epoch=7)
    batches = epoch(sampler)
    assert len(sampler) == 7 and len(batches) == 7
    counts = Counter(index for batch in batches for index, _ in batch)
    assert max(counts.values()) - min(counts.values()) <= 1  # whole passes, then a partial one


def test_large_speakers_never_appear_twice_in_a_step():
    labels = speakers_with([200, 3, 3, 3, 3])  # one speaker dominates; groups beyond N must wait
    for batch in epoch(PKSampler(labels, p=2, k=2)):
        counts = Counter(labels[index] for index, _ in batch)
        assert set(counts.values()) == {2} and len(counts) == 2


def test_bad_settings_raise_config_errors():
    labels = speakers_with([2] * 3)
    with pytest.raises(ConfigError, match="needs 4 speakers .* the data has 3"):
        PKSampler(labels, p=2, k=2, num_replicas=2)
    with pytest.raises(ConfigError, match="rank 2"):
        PKSampler(labels, p=1, k=2, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="P and K"):
        PKSampler(labels, p=0, k=2)
    with pytest.raises(ConfigError, match="short_speakers"):
        PKSampler(labels, p=1, k=2, short_speakers="pad")
