"""Babble is mixed in the loader worker: one int16 row per babble row, the sum of its unit-RMS voices."""

from __future__ import annotations

import numpy as np
import torch

from speakertrip.audio.augment import AugmentConfig, Augmenter, mix_voices
from speakertrip.testing import make_musan_tree


def test_mix_voices_is_the_sum_of_unit_rms_voices():
    rng = np.random.default_rng(0)
    voices = [np.round(rng.normal(0, scale, 4000)).clip(-32768, 32767).astype(np.int16) for scale in (300, 3000, 9000)]
    reference = sum(v / 32768 / np.sqrt(np.mean((v / 32768) ** 2)) for v in voices)
    mixed = mix_voices(voices)
    assert mixed.dtype == np.int16 and np.abs(mixed).max() == 16384
    np.testing.assert_allclose(mixed / 16384, reference / np.abs(reference).max(), atol=0.6 / 16384)


def test_a_babble_plan_carries_one_row_per_babble_row(tmp_path):
    musan = make_musan_tree(tmp_path / "musan", files=8, duration=1.0)
    config = AugmentConfig(musan=str(musan), weights={"babble": 1.0}, babble_speakers=(3, 7), babble_snr=(10.0, 10.0))
    augmenter = Augmenter(config, num_speakers=4)
    labels, total = np.arange(4).repeat(2), 8000
    plan = augmenter.plan(labels, total, np.random.default_rng(1))
    assert plan.noise.shape == (8, total) and plan.noise.dtype == torch.int16  # was 3 to 7 voice rows each
    assert plan.noise_rows.tolist() == list(range(8))
    waves = torch.randn(8, total) * 0.1
    out, _ = augmenter.apply(waves, torch.full((8,), total), plan)
    noise = out - waves
    snr = 10 * torch.log10(waves.square().mean(dim=1) / noise.square().mean(dim=1))
    torch.testing.assert_close(snr, torch.full((8,), 10.0), atol=0.01, rtol=0)
    # the same draws, the voices mixed by hand: the row the worker sent
    rng = np.random.default_rng(1)
    rng.choice(1, size=8, p=[1.0])
    voices = augmenter._noise(rng, "babble", total)
    np.testing.assert_array_equal(plan.noise[0].numpy(), mix_voices(voices))
    assert len(voices) >= 3


def test_the_plan_bytes_shrink(tmp_path):
    """Babble voices summed in the worker: the batch's noise tensor holds one row per noisy row."""
    musan = make_musan_tree(tmp_path / "musan", files=8, duration=1.0)
    augmenter = Augmenter(AugmentConfig(musan=str(musan), weights={"babble": 1.0, "noise": 1.0}), num_speakers=8)
    plan = augmenter.plan(np.arange(64), 1600, np.random.default_rng(0))
    assert plan.noise.shape[0] == int(plan.noisy.sum()) == 64
