"""Embedding a whole corpus (an audio folder or a manifest) into a store, sharded across torchrun ranks.

What ``data`` means (keys, items) is :func:`speakertrip.data.items.read_items`'s: a folder's keys are paths
relative to it, a manifest's are ``utt_id`` s. Under ``torchrun`` each rank embeds every WORLD_SIZE-th
utterance, writes ``<out>.rank<R>.npz`` and rank 0 merges them into ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from speakertrip.data.embedding_store import EmbeddingStore, load_store, save_store
from speakertrip.data.items import read_items
from speakertrip.models.batched import embed_many, item_duration


def embed_across_ranks(model: nn.Module, items: list, rank: int = 0, world_size: int = 1,
                       **options: Any) -> np.ndarray:
    """Embeddings (N, D) of ``items`` on every rank: each of ``world_size`` ranks (an initialised process group
    when > 1; every rank calls it) embeds every ``world_size``-th item and the rows are all-gathered."""
    shard = embed_many(model, items[rank::world_size], **options)
    if world_size == 1:
        return shard
    import torch.distributed as dist

    shards: list[Any] = [None] * world_size
    dist.all_gather_object(shards, shard)
    filled = next(rows for rows in shards if len(rows))
    whole = np.empty((len(items), filled.shape[1]), dtype=filled.dtype)
    for index, rows in enumerate(shards):
        if len(rows):
            whole[index::world_size] = rows
    return whole


def shard_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.stem}.rank{rank}.npz")


def embed_corpus(model: nn.Module, data: str | Path, out: str | Path, **options: Any) -> tuple[int, int, float]:
    """Embed every utterance of ``data`` into the store ``out`` (``.npz`` or a folder); ``options`` go to
    :func:`embed_many`. Under torchrun (``WORLD_SIZE`` > 1) the ranks share the work and rank 0
    writes ``out``. Returns the corpus's utterance count, this rank's, and this rank's seconds of audio.
    """
    out = Path(out)
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    found = read_items(data)
    keys, items = found.keys, found.items
    mine = list(range(rank, len(keys), world))
    embeddings = embed_many(model, [items[i] for i in mine], **options)
    if world > 1:
        import torch.distributed as dist

        shard = save_store(EmbeddingStore([keys[i] for i in mine], embeddings), shard_path(out, rank))
        dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            merged = np.empty((len(keys), embeddings.shape[1]), np.float32)
            for r in range(world):
                merged[r::world] = load_store(shard_path(out, r)).embeddings
            save_store(EmbeddingStore(keys, merged), out)
        dist.barrier()
        shard.unlink()
        dist.destroy_process_group()
    else:
        save_store(EmbeddingStore(keys, embeddings), out)
    audio = sum(item_duration(items[i], None) for i in mine)
    return len(keys), len(mine), audio
