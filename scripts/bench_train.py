"""Training throughput: our step (speakertrip's TrainingModule) against a plain fp32 loop, and the loader.

For each encoder, one P×K batch of random crops is trained for a few steps two ways on the same
weights: (a) speakertrip's step (frontend + encoder + multi-positive hardest-k loss + AdamW + grad
clipping; bf16 autocast on CUDA) and (b) a plain loop a SpeechBrain user would write (SpeechBrain's
``Fbank`` + sentence mean normalisation + the bare lobe, fp32 throughout, same loss and optimiser).
The first-step losses must agree (fp32: 1e-4; bf16: 5e-2 relative). The crop loader's own
throughput (CropDataset + PKSampler + DataLoader on int16 wav files) is printed beside, so that a
starving device is visible.

Host syncs per step (``--syncs``, the default on): one step with noise/reverb/speed augmentation
and SpecAugment, counted with :class:`~speakertrip.testing.host_syncs.HostSyncCounter` two ways:
the checked path (augmentation drawn and read on the host in the step, pair shapes found with
``nonzero``, every selection checked: how every step ran before) against the trainer's path
(the plan read with the batch, fixed P×K shapes).

    .venv/bin/python scripts/bench_train.py                      # CPU: B=32 crops of 2 s
    .venv/bin/python scripts/bench_train.py --p 64 --k 4         # GPU: B=256, bf16 vs fp32
    .venv/bin/python scripts/bench_train.py --variants ecapa-512:fp32 ecapa-512:tf32 ecapa-512:bf16+compile
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from speakertrip.features import FeatureConfig
from speakertrip.losses import build_loss
from speakertrip.models import EmbeddingModel
from speakertrip.training.trainer import TrainingModule

MODELS = {"tdnn-512": ("tdnn", {"channels": 512}), "ecapa-64": ("ecapa", {"channels": 64}),
          "ecapa-512": ("ecapa", {"channels": 512}), "ecapa-1024": ("ecapa", {"channels": 1024})}


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_pair(first_step, second_step, steps: int, device: torch.device) -> tuple[float, float, float, float]:
    """First losses and median seconds per step of two step functions, alternated step by step so
    that a shared machine's load drifts over both alike (two warm-up steps each)."""
    losses = (first_step(), second_step())
    first_step(), second_step()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(steps):
        for index, step in enumerate((first_step, second_step)):
            synchronise(device)
            start = time.perf_counter()
            step()
            synchronise(device)
            times[index].append(time.perf_counter() - start)
    return losses[0], statistics.median(times[0]), losses[1], statistics.median(times[1])


def ours(model: EmbeddingModel, batch, amp: torch.dtype | None, k: int, clip: float = 5.0):
    module = TrainingModule(model, build_loss("multi_positive", margin=0.3, hardest_negatives=4), group_size=k).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    waves, lengths, labels = batch

    def step() -> float:
        loss = module(waves, lengths, labels, amp)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), clip)
        optimizer.step()
        return loss.detach()

    return step


def plain_fp32(model: EmbeddingModel, batch, clip: float = 5.0):
    """The loop written by hand on SpeechBrain's pieces; ``model`` supplies the starting weights."""
    import copy

    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    device = batch[0].device
    fbank = Fbank(n_mels=model.feature_config.n_mels).to(device)
    normalise = InputNormalization(norm_type="sentence", std_norm=False).to(device)
    encoder = copy.deepcopy(model.encoder).train()
    loss_fn = build_loss("multi_positive", margin=0.3, hardest_negatives=4)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
    waves, _, labels = batch
    relative = torch.ones(len(waves), device=device)

    def step() -> float:
        features = normalise(fbank(waves), relative)
        embeddings = F.normalize(encoder(features), dim=-1)
        loss = loss_fn(embeddings, labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), clip)
        optimizer.step()
        return loss.detach()

    return step


def loader_throughput(p: int, k: int, crop_seconds: float, workers: int, batches: int, flac: bool = False) -> float:
    """Crops per second from CropDataset + PKSampler + DataLoader over a generated int16 wav (or FLAC) tree."""
    from torch.utils.data import DataLoader

    from speakertrip.data.datasets import CropDataset, collate_crops
    from speakertrip.data.sampler import PKSampler

    with tempfile.TemporaryDirectory() as folder:
        utterances = _corpus(Path(folder), p, k, crop_seconds)
        if flac:
            utterances = [_to_flac(utterance) for utterance in utterances]
        dataset = CropDataset(utterances, crop_seconds)
        sampler = PKSampler(dataset.speaker_ids, p, k, batches_per_epoch=batches + 2)
        loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_crops, num_workers=workers,
                            prefetch_factor=4 if workers else None)
        iterator = iter(loader)
        next(iterator), next(iterator)  # workers started
        start = time.perf_counter()
        count = sum(len(batch.labels) for batch in iterator)
        return count / (time.perf_counter() - start)


def host_syncs_per_step(p: int, k: int, crop_seconds: float, device: torch.device) -> list[tuple[str, str, str]]:
    """(model, checked path's counts, trainer path's counts) of one augmented training step."""
    from speakertrip.audio.augment import AugmentConfig, Augmenter
    from speakertrip.data.datasets import CropDataset, TrainingBatches
    from speakertrip.data.sampler import PKSampler
    from speakertrip.losses.selection import grouped_batch  # noqa: F401 - what group_size switches on
    from speakertrip.testing import make_musan_tree, make_rir_tree
    from speakertrip.testing.host_syncs import HostSyncCounter

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        utterances = _corpus(Path(folder), p, k, crop_seconds)
        config = AugmentConfig(musan=str(make_musan_tree(Path(folder) / "musan", files=3)),
                               rirs=str(make_rir_tree(Path(folder) / "rirs", rooms=3)), speed_factors=(0.9, 1.0, 1.1))
        crops = CropDataset(utterances, crop_seconds)
        augmenter = Augmenter(config, len(crops.speaker_to_index))
        items = next(iter(PKSampler(crops.speaker_ids, p, k, seed=0)))
        batch = TrainingBatches(crops, augmenter, seed=0)[items]
        features = FeatureConfig.speechbrain().to_dict() | {"spec_time_masks": 2, "spec_freq_masks": 2}
        for name, loss in (("ecapa-64 multi-positive", ("multi_positive", {"margin": 0.3, "hardest_negatives": k})),
                           ("tdnn-512 batch-hard+AAM", ("triplet+aam", {"metric": {"miner": "batch_hard"}}))):
            encoder, options = MODELS[name.split()[0]]
            model = EmbeddingModel(features, encoder, options).to(device)
            criterion = build_loss(loss[0], embedding_dim=model.embedding_dim,
                                   num_classes=augmenter.num_labels, **loss[1])
            counts = []
            for group_size in (None, k):
                module = TrainingModule(model, criterion, group_size=group_size).to(device).train()
                optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)

                def step() -> None:
                    moved = batch.to(device, non_blocking=True)
                    if group_size is None:  # the checked path: draw, read and copy inside the step
                        waves, labels = augmenter(moved.waveforms, moved.labels, moved.lengths)
                    else:
                        waves, labels = augmenter.apply(moved.waveforms, moved.lengths, moved.augment)
                    loss_value = module(waves, moved.lengths, labels, None)
                    optimizer.zero_grad(set_to_none=True)
                    loss_value.backward()
                    torch.nn.utils.clip_grad_norm_(module.parameters(), 5.0)
                    optimizer.step()

                step()  # constants reach the device once
                with HostSyncCounter() as counter:
                    step()
                counts.append(f"{counter.total} ({', '.join(f'{key} {value}' for key, value in sorted(counter.counts.items())) or '-'})")
            rows.append((name, *counts))
    return rows


def _to_flac(utterance):
    import dataclasses

    import soundfile as sf

    target = str(Path(utterance.path).with_suffix(".flac"))
    sf.write(target, sf.read(utterance.path, dtype="int16")[0], utterance.sample_rate, subtype="PCM_16")
    return dataclasses.replace(utterance, path=target)


def _corpus(folder: Path, p: int, k: int, crop_seconds: float):
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.data.manifest import read_manifest
    from speakertrip.testing import make_voxceleb_tree

    tree = make_voxceleb_tree(folder / "vox", num_speakers=max(2 * p, 8), sessions=2, utterances_per_session=k,
                              duration=(crop_seconds + 1, crop_seconds + 3), trial_list=False)
    return read_manifest(prepare_voxceleb(tree, folder / "data", progress=False)["utts"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS),
                        help="default: tdnn-512 ecapa-512 (GPU adds ecapa-1024; CPU adds ecapa-64)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="MODEL:PRECISION[+compile]",
                        help="e.g. ecapa-512:fp32 ecapa-512:tf32 ecapa-512:bf16+compile (precision fp32, tf32 or "
                             "bf16); default: each of --models in bf16 on GPU, fp32 on CPU")
    parser.add_argument("--p", type=int, default=None, help="speakers per batch (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--crop", type=float, default=2.0, help="crop seconds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU, 3 CPU)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader figure")
    parser.add_argument("--loader-formats", nargs="+", default=["wav"], choices=["wav", "flac"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-syncs", dest="syncs", action="store_false", help="skip the host-sync count")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    p = args.p or (64 if gpu else 8)
    steps = args.steps or (20 if gpu else 3)
    names = args.models or (["tdnn-512", "ecapa-512", "ecapa-1024"] if gpu else ["ecapa-64", "tdnn-512", "ecapa-512"])
    variants = [parse_variant(v) for v in args.variants] if args.variants else \
        [(name, "bf16" if gpu else "fp32", False) for name in names]
    batch_size = p * args.k
    if gpu:
        set_tf32(False)  # the plain side is fp32
    results: dict = {"device": torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)",
                     "batch": [p, args.k], "crop_seconds": args.crop, "loader": {}, "syncs": [], "steps": []}

    print(f"device {device} ({results['device']}), B = {p} x {args.k} crops of {args.crop} s, "
          "each variant of our step vs the plain fp32 loop on the same weights")
    if args.syncs:
        print("host syncs per augmented step (speed, noise, reverb, SpecAugment; B = "
              f"{p} x {args.k}): checked path as every step ran before -> the trainer's path")
        for name, checked, trainer_path in host_syncs_per_step(p, args.k, args.crop, device):
            print(f"  {name:<24} {checked:<44} -> {trainer_path}")
            results["syncs"].append({"model": name, "checked": checked, "trainer": trainer_path})
    for audio_format in args.loader_formats:
        rate = loader_throughput(p, args.k, args.crop, args.workers, batches=8 if gpu else 4, flac=audio_format == "flac")
        results["loader"][audio_format] = rate
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        print(f"crop loader ({args.workers} workers, {audio_format}): {rate:,.0f} crops/s")
    header = f"{'variant':<24} {'params':>7} {'ours ms':>8} {'ours utt/s':>10} {'plain ms':>9} {'plain utt/s':>11} " \
             f"{'speed-up':>8} {'loss ours':>10} {'loss plain':>10}"
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    waves = (0.1 * torch.randn(batch_size, int(args.crop * 16000), generator=generator)).to(device)
    labels = torch.arange(p).repeat_interleave(args.k).to(device)
    lengths = torch.full((batch_size,), waves.shape[1], device=device)
    failed = []
    for name, precision, compiled in variants:
        encoder, options = MODELS[name]
        torch.manual_seed(0)
        model = EmbeddingModel(FeatureConfig.speechbrain(), encoder, options).to(device)
        parameters = sum(t.numel() for t in model.parameters()) / 1e6
        peer_step = plain_fp32(model, (waves, lengths, labels))  # copies the initial weights first
        if compiled:
            model.encoder.compile()
        amp = torch.bfloat16 if precision == "bf16" else None
        step = ours(model, (waves, lengths, labels), amp, args.k)
        if precision == "tf32":
            step = with_tf32(step)
        loss_ours, seconds_ours, loss_plain, seconds_plain = time_pair(step, peer_step, steps, device)
        tolerance = 1e-4 if precision == "fp32" else 5e-2
        agree = abs(float(loss_ours) - float(loss_plain)) <= tolerance * max(1.0, abs(float(loss_plain)))
        label = f"{name} {precision}{' +compile' if compiled else ''}"
        print(f"{label:<24} {parameters:>6.1f}M {1e3 * seconds_ours:>8.1f} {batch_size / seconds_ours:>10,.0f} "
              f"{1e3 * seconds_plain:>9.1f} {batch_size / seconds_plain:>11,.0f} {seconds_plain / seconds_ours:>7.2f}x "
              f"{float(loss_ours):>10.5f} {float(loss_plain):>10.5f}{'' if agree else '  LOSSES DISAGREE'}")
        results["steps"].append({"variant": label, "params_m": parameters, "ms": 1e3 * seconds_ours,
                                 "utt_per_s": batch_size / seconds_ours, "plain_fp32_ms": 1e3 * seconds_plain,
                                 "speed_up": seconds_plain / seconds_ours, "losses_agree": agree})
        if not agree:
            failed.append(label)
        if args.json:  # after every variant: a time limit keeps what finished
            args.json.write_text(json.dumps(results, indent=1))
        del model, peer_step, step
        if gpu:
            torch.cuda.empty_cache()
    print(f"a step is data-bound when utt/s exceeds the loader's {min(results['loader'].values()):,.0f} crops/s "
          f"(raise data.workers)")
    if failed:
        raise SystemExit(f"first-step losses disagree beyond tolerance: {', '.join(failed)}")


def parse_variant(text: str) -> tuple[str, str, bool]:
    """``"ecapa-512:bf16+compile"`` → ``("ecapa-512", "bf16", True)``."""
    name, _, rest = text.partition(":")
    precision, _, compiled = (rest or "fp32").partition("+")
    if name not in MODELS or precision not in ("fp32", "tf32", "bf16") or compiled not in ("", "compile"):
        raise SystemExit(f"bad variant {text!r}: expected MODEL:fp32|tf32|bf16[+compile], MODEL one of "
                         f"{', '.join(sorted(MODELS))}")
    return name, precision, bool(compiled)


def set_tf32(enabled: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled


def with_tf32(step):
    """``step`` with TF32 matmuls and convolutions on (and off again for the plain side)."""
    def run():
        set_tf32(True)
        try:
            return step()
        finally:
            set_tf32(False)
    return run


if __name__ == "__main__":
    main()
