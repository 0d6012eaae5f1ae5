"""gather_batch under DDP with 2 CPU processes (gloo) against one process on the concatenated batch."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from speakertrip.losses import build_loss
from speakertrip.training.distributed import gather_batch

SIZES = [5, 7]  # unequal local batches exercise the padded gather
LOSSES = {
    "batch_all": ("triplet", {"margin": 0.5}),
    "batch_hard": ("triplet", {"margin": 0.5, "miner": "batch_hard", "normalize": True}),
    "multi_positive": ("multi_positive", {"margin": 0.5, "hardest_negatives": 2}),
    "triplet+aam": ("triplet+aam", {"aam_weight": 0.5}),
}


def inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(sum(SIZES), 6, generator=generator, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 3, 1, 2, 3, 0, 2, 1, 3])
    return x, y


def build(name):
    torch.manual_seed(1)  # same encoder and AAM head weights everywhere
    kind, options = LOSSES[name]
    return nn.Linear(6, 4).double(), build_loss(kind, embedding_dim=4, num_classes=4, **options).double()


class Step(nn.Module):
    """Encoder and loss in one module, so that DDP's forward (which arms its gradient sync) runs."""

    def __init__(self, encoder, loss):
        super().__init__()
        self.encoder, self.loss = encoder, loss

    def forward(self, x, y):
        embeddings = self.encoder(x)
        embeddings.retain_grad()
        all_embeddings, all_labels = gather_batch(embeddings, y)
        return self.loss(all_embeddings, all_labels), embeddings, all_labels


def run_rank(rank, world, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    x, y = inputs()
    start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
    results = {}
    for name in LOSSES:
        encoder, loss = build(name)
        model = nn.parallel.DistributedDataParallel(Step(encoder, loss))
        value, embeddings, all_labels = model(x[start:stop], y[start:stop])
        value.backward()
        results[name] = {"loss": value.detach(), "labels": all_labels, "embeddings_grad": embeddings.grad,
                         **{f"grad.{key}": p.grad for key, p in model.module.named_parameters()}}
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
@pytest.mark.slow
def test_two_ranks_give_the_loss_and_gradients_of_one_process(tmp_path):
    mp.spawn(run_rank, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    x, y = inputs()
    for name in LOSSES:
        encoder, loss = build(name)
        embeddings = encoder(x)
        embeddings.retain_grad()
        reference = loss(embeddings, y)
        reference.backward()
        parameters = {"encoder": encoder, "loss": loss}
        for rank, results in enumerate(ranks):
            got = results[name]
            assert torch.equal(got["labels"], y)
            torch.testing.assert_close(got["loss"], reference.detach())
            for key, value in got.items():
                if key.startswith("grad."):  # after DDP's average over ranks
                    module, parameter = key[5:].split(".", 1)
                    torch.testing.assert_close(value, parameters[module].get_parameter(parameter).grad, msg=key)
            start, stop = sum(SIZES[:rank]), sum(SIZES[: rank + 1])
            # local rows get world_size × the single-process gradient, which DDP's mean divides back
            torch.testing.assert_close(got["embeddings_grad"] / 2, embeddings.grad[start:stop])


def test_without_a_process_group_it_returns_its_inputs():
    x, y = inputs()
    gathered, labels = gather_batch(x, y)
    assert gathered is x and labels is y
