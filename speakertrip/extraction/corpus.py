"""Embedding a whole corpus (an audio folder or a manifest) into a store, sharded across torchrun ranks.

What ``data`` means (keys, items) is :func:`speakertrip.data.items.read_items`'s: a folder's keys are paths
relative to it, a manifest's are ``utt_id`` s. Under ``torchrun`` each rank embeds every WORLD_SIZE-th item
(:func:`rank_shard`) and the rows are gathered back in item order (:func:`gather_rank_shards`): onto every
rank for validation during training, onto rank 0 alone for a corpus, which writes ``out``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence, TypeVar

import numpy as np
from torch import nn

from speakertrip.data.embedding_store import EmbeddingStore, save_store
from speakertrip.data.items import read_items
from speakertrip.models.batched import embed_many, item_duration

T = TypeVar("T")


def rank_shard(items: Sequence[T], rank: int, world_size: int) -> Sequence[T]:
    """The items rank ``rank`` of ``world_size`` embeds: every ``world_size``-th, from the ``rank``-th."""
    return items[rank::world_size]


def gather_rank_shards(shard: np.ndarray, total: int, rank: int, world_size: int,
                       everywhere: bool = True) -> np.ndarray | None:
    """Every rank's rows of :func:`rank_shard` (its ``shard``, (n_rank, D)), back in item order: (total, D).

    Every rank calls it (an initialised process group when ``world_size`` > 1). With ``everywhere`` each rank
    gets the whole; otherwise only rank 0 does and the others get None, so a corpus of a million rows is not
    copied to every rank only to be dropped.
    """
    if world_size == 1:
        return shard
    import torch.distributed as dist

    shards: list[Any] | None = [None] * world_size if everywhere or rank == 0 else None
    if everywhere:
        dist.all_gather_object(shards, shard)
    else:
        dist.gather_object(shard, shards, dst=0)
        if rank != 0:
            return None
    filled = next((rows for rows in shards if len(rows)), shard)
    whole = np.empty((total, *filled.shape[1:]), dtype=filled.dtype)
    for index, rows in enumerate(shards):
        if len(rows):  # a rank with no items may have embedded a (0,) array
            whole[index::world_size] = rows
    return whole


def embed_across_ranks(model: nn.Module, items: list, rank: int = 0, world_size: int = 1,
                       **options: Any) -> np.ndarray:
    """Embeddings (N, D) of ``items`` on every rank: each of ``world_size`` ranks (an initialised process group
    when > 1; every rank calls it) embeds its :func:`rank_shard` and the rows are all-gathered."""
    shard = embed_many(model, rank_shard(items, rank, world_size), **options)
    return gather_rank_shards(shard, len(items), rank, world_size)


def embed_corpus(model: nn.Module, data: str | Path, out: str | Path, **options: Any) -> tuple[int, int, float]:
    """Embed every utterance of ``data`` into the store ``out`` (``.npz`` or a folder); ``options`` go to
    :func:`embed_many`. Under torchrun (``WORLD_SIZE`` > 1) the ranks share the work and rank 0 gathers the
    rows and writes ``out``. Returns the corpus's utterance count, this rank's, and this rank's seconds of audio.
    """
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    found = read_items(data)
    mine = rank_shard(found.items, rank, world)
    shard = embed_many(model, mine, **options)
    if world > 1:  # the group starts once this rank's share is embedded: no collective waits out the embedding
        import torch.distributed as dist

        dist.init_process_group("gloo")
        try:
            embeddings = gather_rank_shards(shard, len(found), rank, world, everywhere=False)
        finally:
            dist.destroy_process_group()
    else:
        embeddings = shard
    if embeddings is not None:
        save_store(EmbeddingStore(found.keys, embeddings), out)
    return len(found), len(mine), sum(item_duration(item, None) for item in mine)
