"""`speakertrip embed --model M --data DIR_OR_MANIFEST --out EMB.npz`: an embedding store for a corpus
(:func:`speakertrip.extraction.embed_corpus`; sharded across ranks under ``torchrun``)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from speakertrip.commands import DATA_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("embed", help="embed a folder or manifest of utterances into a store (.npz)")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--data", type=Path, required=True, help=f"what to embed: {DATA_HELP}")
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
    parser.add_argument("--backend", default="auto", help="how embeddings are computed: auto (bfloat16 on CPUs that "
                        "compute it natively and an ECAPA encoder, else float32), float32, bfloat16, int8, onnxruntime, "
                        "eager (see the README's Speed section for each one's speed and tolerance)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from speakertrip.extraction import embed_corpus

    from speakertrip.models import load_model

    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if torch.cuda.is_available() else "cpu")
    model = load_model(args.model, device=device)
    started = time.perf_counter()
    total, count, audio = embed_corpus(model, args.data, args.out, batch_seconds=args.batch_seconds,
                                max_batch_size=args.max_batch_size, num_threads=args.threads, trim_db=args.trim_db,
                                chunk_seconds=args.chunk_seconds, loader_threads=args.workers, progress=rank == 0,
                                backend=args.backend)
    elapsed = time.perf_counter() - started
    if rank == 0:
        share = f" (rank 0 of {world}: {count} utterances)" if world > 1 else ""
        print(f"{'utterances':<12} {'dim':>5} {'audio (s)':>10} {'wall (s)':>9} {'RTF':>8}  store")
        print(f"{total:<12} {model.embedding_dim:>5} {audio:>10.1f} {elapsed:>9.1f} "
              f"{elapsed / max(audio, 1e-9):>8.4f}  {args.out}{share}")
    return 0
