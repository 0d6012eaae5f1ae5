"""`speakertrip embed --model M --data DIR_OR_MANIFEST --out EMB.npz`: an embedding store for a corpus.

A directory is scanned for audio (keys: paths relative to it, as VoxCeleb trial lists write
them); a manifest (``.jsonl``) gives ``utt_id`` keys. Under ``torchrun`` each rank embeds every
WORLD_SIZE-th utterance, writes ``<out>.rank<R>.npz`` and rank 0 merges them into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="embed a folder or manifest of utterances into a store (.npz)")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--data", type=Path, required=True, help="audio folder (scanned recursively) or manifest .jsonl")
    parser.add_argument("--out", type=Path, required=True, help="embedding store: .npz file or a directory")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available, "
                        "under torchrun cuda:LOCAL_RANK)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batch-seconds", type=float, default=None,
                        help="padded audio per forward pass (default: 160 s on a GPU, 10 s on CPU)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="utterances per forward pass at most")
    parser.add_argument("--trim-db", type=float, default=None, help="trim leading/trailing audio this many dB "
                        "below the loudest frame (off by default)")
    parser.add_argument("--chunk-seconds", type=float, default=None, help="average embeddings of chunks of at "
                        "most this length for longer files (off by default)")
    parser.add_argument("--workers", type=int, default=4, help="threads reading audio ahead of the model")
    parser.set_defaults(func=run)


def find_items(data: Path) -> tuple[list[str], list]:
    """Keys and items (paths or manifest utterances) of a folder or manifest, in a stable order."""
    from speakertrip.data.manifest import read_manifest
    from speakertrip.errors import SpeakertripError

    if data.is_dir():
        paths = sorted(p for p in data.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
        if not paths:
            raise SpeakertripError(f"{data}: no audio files ({', '.join(AUDIO_SUFFIXES)}) found in this folder")
        return [p.relative_to(data).as_posix() for p in paths], paths
    if not data.is_file():
        raise SpeakertripError(f"{data}: no such folder or manifest")
    utterances = read_manifest(data)
    if not utterances:
        raise SpeakertripError(f"{data}: the manifest lists no utterances")
    return [u.utt_id for u in utterances], utterances


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from speakertrip.embed import embed_many
    from speakertrip.embedding_store import EmbeddingStore, load_store, save_store
    from speakertrip.models import load_model

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    keys, items = find_items(args.data)
    mine = list(range(rank, len(keys), world))
    model = load_model(args.model, device=device)
    started = time.perf_counter()
    embeddings = embed_many(model, [items[i] for i in mine], batch_seconds=args.batch_seconds,
                            max_batch_size=args.max_batch_size, num_threads=args.threads, trim_db=args.trim_db,
                            chunk_seconds=args.chunk_seconds, loader_threads=args.workers, progress=rank == 0)
    elapsed = time.perf_counter() - started
    if world > 1:
        import torch.distributed as dist

        shard = save_store(EmbeddingStore([keys[i] for i in mine], embeddings), shard_path(args.out, rank))
        dist.init_process_group("gloo")
        dist.barrier()
        if rank == 0:
            shards = [load_store(shard_path(args.out, r)) for r in range(world)]
            merged = np.empty((len(keys), model.embedding_dim), np.float32)
            for r, part in enumerate(shards):
                merged[r::world] = part.embeddings
            save_store(EmbeddingStore(keys, merged), args.out)
        dist.barrier()
        shard.unlink()
        dist.destroy_process_group()
    else:
        save_store(EmbeddingStore(keys, embeddings), args.out)
    if rank == 0:
        audio = sum(_duration(item) for item in (items[i] for i in mine))
        share = f" (rank 0 of {world}: {len(mine)} utterances)" if world > 1 else ""
        print(f"{'utterances':<12} {'dim':>5} {'audio (s)':>10} {'wall (s)':>9} {'RTF':>8}  store")
        print(f"{len(keys):<12} {model.embedding_dim:>5} {audio:>10.1f} {elapsed:>9.1f} "
              f"{elapsed / max(audio, 1e-9):>8.4f}  {args.out}{share}")
    return 0


def shard_path(out: Path, rank: int) -> Path:
    return out.with_name(f"{out.stem}.rank{rank}.npz")


def _duration(item: object) -> float:
    from speakertrip.audio import audio_info

    return item.duration if hasattr(item, "duration") else audio_info(item).duration
