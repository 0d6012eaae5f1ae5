"""A seeded sampling miner's generator goes into the checkpoint: a resumed run draws the negatives (and so
ends with the weights) of the uninterrupted one."""

from __future__ import annotations

import pytest
import torch
import yaml

from speakertrip.losses import build_loss
from speakertrip.training.checkpoint import load_checkpoint, restore_rng_state, rng_state
from speakertrip.training.config import load_config
from speakertrip.training.trainer import train

ENCODER = {"channels": 32, "attention_channels": 16, "se_channels": 16, "embedding_dim": 32}


def test_rng_state_carries_the_miners_generators():
    loss = build_loss("triplet", margin=0.6, miner={"name": "distance_weighted", "seed": 3})
    labels = torch.arange(4).repeat(3)
    embeddings = torch.nn.functional.normalize(torch.randn(12, 8, generator=torch.Generator().manual_seed(0)))
    assert "miner0" not in rng_state(module=loss)  # no draw yet: nothing to save
    loss(embeddings, labels)
    saved = rng_state(module=loss)
    following = [loss.miner(torch.cdist(embeddings, embeddings), labels, embeddings).negatives for _ in range(2)]
    fresh = build_loss("triplet", margin=0.6, miner={"name": "distance_weighted", "seed": 3})
    restore_rng_state(saved, module=fresh)
    again = [fresh.miner(torch.cdist(embeddings, embeddings), labels, embeddings).negatives for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(following, again))
    restarted = build_loss("triplet", margin=0.6, miner={"name": "distance_weighted", "seed": 3})
    first = restarted.miner(torch.cdist(embeddings, embeddings), labels, embeddings).negatives
    assert not torch.equal(first, following[0])  # the saved state is not the seed's: the test can tell


@pytest.mark.slow
def test_resumed_training_with_a_random_miner_matches_the_uninterrupted_run(prepare_tiny_corpus, tmp_path):
    manifest = prepare_tiny_corpus(num_speakers=8, seed=5)

    def config(exp, epochs):
        values = {"data.train": str(manifest), "data.crop_seconds": 0.5, "data.workers": 0,
                  "data.batches_per_epoch": 2, "features.n_mels": 24, "model.options": ENCODER, "loss.p": 4,
                  "loss.k": 2, "loss.kind": "triplet", "loss.options": {"margin": 0.5, "miner": {"name": "random",
                                                                                                  "seed": 3}},
                  "schedule.kind": "constant", "schedule.warmup_steps": 0, "train.exp_dir": str(exp),
                  "train.epochs": epochs, "train.progress": False, "train.average_last": 1}
        return load_config(None, [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                                  for key, value in values.items()])

    train(config(tmp_path / "straight", 2))
    train(config(tmp_path / "resumed", 1))
    with pytest.warns(UserWarning, match="changed config: train.epochs"):
        train(config(tmp_path / "resumed", 2), resume=True)
    straight, resumed = (load_checkpoint(tmp_path / run / "checkpoints" / "last.pt")
                         for run in ("straight", "resumed"))
    assert straight["step"] == resumed["step"] == 4
    for key, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=0, atol=0, msg=key)
