"""Benchmark speakertrip's triplet losses against pytorch-metric-learning, side by side.

Speed: forward + backward at B = P×K (default 128 × 4), D = 192, on the same embeddings; the
answers (loss and gradient) must agree before a ratio is printed. Memory: peak resident set
size of one forward + backward at B = 4096, each case in a fresh subprocess (ru_maxrss).

    .venv/bin/python scripts/bench_losses.py [--device cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from speakertrip.losses import build_loss

# name → (our loss kind, options, peer builder or None); peers only where both compute the same quantity
CASES = {
    "batch-all, mean over non-zero": ("triplet", {"reduction": "mean_nonzero"}, "avg_nonzero"),
    "batch-all, mean over all": ("triplet", {"reduction": "mean"}, "mean"),
    "batch-all, soft margin": ("triplet", {"soft_margin": True, "reduction": "mean"}, "soft"),
    "batch-hard": ("triplet", {"miner": "batch_hard"}, "batch_hard"),
    "semi-hard": ("triplet", {"miner": "semi_hard"}, None),
    "hardest-4 negatives": ("triplet", {"miner": {"name": "hardest_k", "k": 4}}, None),
    "multi-positive, hardest-4": ("multi_positive", {"hardest_negatives": 4}, None),
    "multi-positive, all": ("multi_positive", {}, None),
}
MARGIN = 0.2


def peer_loss(kind: str):
    """pytorch-metric-learning's TripletMarginLoss (all triplets unless batch_hard) set to our definition."""
    from pytorch_metric_learning import distances, losses, miners, reducers

    distance = distances.LpDistance(power=2, normalize_embeddings=False)  # squared Euclidean
    reducer = reducers.AvgNonZeroReducer() if kind == "avg_nonzero" else reducers.MeanReducer()
    loss = losses.TripletMarginLoss(margin=MARGIN, distance=distance, reducer=reducer, smooth_loss=kind == "soft")
    if kind != "batch_hard":
        return loss
    miner = miners.BatchHardMiner(distance=distance)
    return lambda e, y: loss(e, y, miner(e, y))


def inputs(batch: int, per_speaker: int, dim: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(batch, dim, generator=generator), dim=1)
    return x.to(device), (torch.arange(batch) // per_speaker).to(device)


def step(loss, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor, float]:
    """Seconds for forward + backward, the loss value and the gradient."""
    e = x.clone().requires_grad_()
    if x.is_cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    value = loss(e, y)
    value.backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start, value.detach(), e.grad


def speed(args) -> bool:
    x, y = inputs(args.batch, args.per_speaker, args.dim, args.device)
    print(f"forward + backward, B = {args.batch} ({args.batch // args.per_speaker} × {args.per_speaker}), "
          f"D = {args.dim}, {args.device}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"{'case':32} {'speakertrip':>12} {'PML':>12} {'ratio':>7}  agree")
    agree_all = True
    for name, (kind, options, peer_kind) in CASES.items():
        ours = build_loss(kind, margin=MARGIN, **options)
        peer = peer_loss(peer_kind) if peer_kind else None
        times, peer_times = [], []
        for _ in range(args.repeats + 1):  # the first round warms up
            seconds, value, grad = step(ours, x, y)
            times.append(seconds)
            if peer is not None:
                seconds, peer_value, peer_grad = step(peer, x, y)
                peer_times.append(seconds)
        ms = statistics.median(times[1:]) * 1e3
        if peer is None:
            print(f"{name:32} {ms:10.2f}ms {'-':>12} {'-':>7}  -")
            continue
        peer_ms = statistics.median(peer_times[1:]) * 1e3
        agree = (torch.allclose(value, peer_value, rtol=1e-4, atol=1e-6)
                 and torch.allclose(grad, peer_grad, rtol=1e-3, atol=1e-7))
        agree_all &= agree
        print(f"{name:32} {ms:10.2f}ms {peer_ms:10.2f}ms {peer_ms / ms:6.1f}x  "
              f"{'yes' if agree else 'NO'} (loss {value.item():.6f} vs {peer_value.item():.6f})")
    return agree_all


def measure_memory(case: str, batch: int, per_speaker: int, dim: int) -> dict:
    """In this (fresh) process: peak RSS growth of one forward + backward of ``case``."""
    x, y = inputs(batch, per_speaker, dim, "cpu")
    if case == "PML all triplets":
        loss = peer_loss("mean")
    else:
        kind, options, _ = CASES[case]
        loss = build_loss(kind, margin=MARGIN, **options)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds, _, _ = step(loss, x, y)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"extra_mb": (peak - before) / 1024, "peak_mb": peak / 1024, "seconds": seconds}


def memory(args) -> None:
    print(f"\npeak memory of forward + backward on CPU, D = {args.dim}, one fresh process per case")
    print(f"{'case':32} {'B':>5} {'growth':>10} {'process peak':>13} {'time':>8}")
    runs = [(case, args.memory_batch) for case in CASES if "soft" not in case and "over all" not in case]
    runs += [("batch-all, mean over all", args.peer_memory_batch), ("PML all triplets", args.peer_memory_batch)]
    for case, batch in runs:
        command = [sys.executable, __file__, "--memory-child", case, "--batch", str(batch),
                   "--per-speaker", str(args.per_speaker), "--dim", str(args.dim), "--threads", str(args.threads)]
        result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
        print(f"{case:32} {batch:5d} {result['extra_mb']:8.0f}MB {result['peak_mb']:11.0f}MB "
              f"{result['seconds']:7.2f}s")
    cube = args.memory_batch ** 3
    print(f"(a B×B×B formulation at B = {args.memory_batch}: {cube / 2**30:.0f} GiB for one bool mask, "
          f"{4 * cube / 2**30:.0f} GiB per float32 tensor)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--per-speaker", type=int, default=4)
    parser.add_argument("--dim", type=int, default=192)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--memory-batch", type=int, default=4096)
    parser.add_argument("--peer-memory-batch", type=int, default=1024)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_child:
        print(json.dumps(measure_memory(args.memory_child, args.batch, args.per_speaker, args.dim)))
        return 0
    agree = speed(args)
    memory(args)
    if not agree:
        print("answers differ from pytorch-metric-learning", file=sys.stderr)
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
