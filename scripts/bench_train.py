"""Training throughput: the trainer's own step against a plain fp32 loop, and the trainer's batch loader.

For each variant, one P×K batch of crops (read by the trainer's loader, augmentation off) is trained for a
few steps two ways on the same weights: (a) ``Trainer.train_step`` of a :class:`Trainer` built for the
variant (frontend + encoder + multi-positive hardest-k loss, fused AdamW, the non-finite step guard, grad
clipping; bf16 autocast and ``torch.compile`` as the variant says) and (b) a plain loop a SpeechBrain user
would write (SpeechBrain's ``Fbank`` + sentence mean normalisation + the bare lobe, fp32 throughout, same
loss, non-fused AdamW). Both run with PyTorch's default precision settings (cuDNN TF32 on, matmul TF32
off); the ``tf32`` variant also turns matmul TF32 on for our side. The first-step losses must agree
(fp32: 1e-4; bf16: 5e-2 relative). A variant that fails (a compiler missing, out of memory) is one row
marked failed; the others still run. The loader figure iterates the trainer's own DataLoader (whole P×K
batches read in the workers, with noise / music / babble / reverb augmentation planned and read there,
pinned memory on CUDA), so that a starving device is visible.

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
import atexit
import json
import shutil
import statistics
import tempfile
import time
import warnings
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


def bench_trainer(folder: Path, manifest: Path, name: str, precision: str, compiled: bool, p: int, k: int,
                  crop_seconds: float, device: torch.device, workers: int = 0, augment: dict | None = None):
    """A :class:`Trainer` for one variant on ``manifest`` (its step and loader are what is measured)."""
    from speakertrip.training.config import TrainConfig
    from speakertrip.training.distributed import Distributed
    from speakertrip.training.trainer import Trainer

    encoder, options = MODELS[name]
    values = {"data": {"train": str(manifest), "crop_seconds": crop_seconds, "workers": workers,
                       "batches_per_epoch": 1000},
              "features": FeatureConfig.speechbrain().to_dict(), "model": {"encoder": encoder, "options": options},
              "loss": {"kind": "multi_positive", "p": p, "k": k, "options": {"margin": 0.3, "hardest_negatives": 4}},
              "optim": {"name": "adamw", "lr": 1e-3}, "schedule": {"kind": "constant", "warmup_steps": 0},
              "train": {"exp_dir": str(folder / f"exp-{name}-{precision}"), "steps": 1000, "grad_clip": 5.0,
                        "amp": "bf16" if precision == "bf16" else "off", "compile": compiled,
                        "device": str(device), "progress": False}}
    if augment:
        values["augment"] = augment
    return Trainer(TrainConfig.from_dict(values, "bench_train"), Distributed(), device)


def ours(trainer, batch):
    """``trainer.train_step`` on one batch already on the device; returns the step's loss (a device tensor)."""
    def step() -> torch.Tensor:
        trainer.train_step(batch)
        loss = trainer._window[-1]["loss"]
        trainer._window.clear()  # what log_window would consume: the bench never logs
        trainer.guard.pending.clear()
        return loss

    return step


def plain_fp32(model: EmbeddingModel, batch, clip: float = 5.0):
    """The loop written by hand on SpeechBrain's pieces; ``model`` supplies the starting weights."""
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    waves, _, labels = batch
    device = waves.device
    fbank = Fbank(n_mels=model.feature_config.n_mels).to(device)
    normalise = InputNormalization(norm_type="sentence", std_norm=False).to(device)
    copy = EmbeddingModel(model.feature_config, model.encoder_name, dict(model.encoder_options))
    copy.load_state_dict(model.state_dict())  # an eager copy, even when ``model``'s encoder is compiled
    encoder = copy.encoder.to(device).train()
    loss_fn = build_loss("multi_positive", margin=0.3, hardest_negatives=4)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=1e-3)
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


def loader_throughput(folder: Path, manifest: Path, p: int, k: int, crop_seconds: float, workers: int,
                      batches: int, device: torch.device) -> float:
    """Crops per second from the trainer's own DataLoader over ``manifest``: whole P×K batches with their
    augmentation (noise, music, babble, reverb) planned and read in the workers, pinned on CUDA."""
    from speakertrip.testing import make_musan_tree, make_rir_tree

    augment = {"musan": str(make_musan_tree(folder / "musan", files=4, duration=crop_seconds + 1)),
               "rirs": str(make_rir_tree(folder / "rirs", rooms=3))}
    trainer = bench_trainer(folder, manifest, "ecapa-64", "fp32", False, p, k, crop_seconds, device, workers, augment)
    iterator = iter(trainer.loader)
    next(iterator), next(iterator)  # workers started
    start = time.perf_counter()
    count = 0
    for _ in range(batches):
        count += len(next(iterator).labels)
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
        from speakertrip.data.manifest import read_manifest

        utterances = read_manifest(_corpus(Path(folder), p, k, crop_seconds))
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


def _corpus(folder: Path, p: int, k: int, crop_seconds: float, audio_format: str = "wav") -> Path:
    """A prepared generated corpus (wav, or FLAC copies) with crops of ``crop_seconds`` to spare: its manifest."""
    import dataclasses

    import soundfile as sf

    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.data.manifest import read_manifest, write_manifest
    from speakertrip.testing import make_voxceleb_tree

    manifest = folder / "data" / "utts.jsonl"
    if not manifest.is_file():
        tree = make_voxceleb_tree(folder / "vox", num_speakers=max(2 * p, 8), sessions=2, utterances_per_session=k,
                                  duration=(crop_seconds + 1, crop_seconds + 3), trial_list=False)
        with warnings.catch_warnings():  # no trial list: only the manifest of every utterance is wanted
            warnings.simplefilter("ignore", UserWarning)
            manifest = Path(prepare_voxceleb(tree, folder / "data", progress=False)["utts"])
    if audio_format == "wav":
        return manifest
    converted = []
    for utterance in read_manifest(manifest):
        target = str(Path(utterance.path).with_suffix(".flac"))
        sf.write(target, sf.read(utterance.path, dtype="int16")[0], utterance.sample_rate, subtype="PCM_16")
        converted.append(dataclasses.replace(utterance, path=target))
    return write_manifest(converted, folder / "data" / "utts_flac.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=None, choices=sorted(MODELS),
                        help="default: tdnn-512 ecapa-512 (GPU adds ecapa-1024; CPU adds ecapa-64)")
    parser.add_argument("--variants", nargs="*", default=None, metavar="MODEL:PRECISION[+compile]",
                        help="e.g. ecapa-512:fp32 ecapa-512:tf32 ecapa-512:bf16+compile (precision fp32, tf32 or "
                             "bf16); default: each of --models in bf16 on GPU, fp32 on CPU; none: no step rows")
    parser.add_argument("--p", type=int, default=None, help="speakers per batch (default 64 on GPU, 8 on CPU)")
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--crop", type=float, default=2.0, help="crop seconds")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 20 GPU, 3 CPU)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the loader figure")
    parser.add_argument("--loader-formats", nargs="*", default=["wav"], choices=["wav", "flac"],
                        help="the loader figure for each (none: no loader figure)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-syncs", dest="syncs", action="store_false", help="skip the host-sync count")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    p = args.p or (64 if gpu else 8)
    steps = args.steps or (20 if gpu else 3)
    names = args.models or (["tdnn-512", "ecapa-512", "ecapa-1024"] if gpu else ["ecapa-64", "tdnn-512", "ecapa-512"])
    variants = [parse_variant(v) for v in args.variants] if args.variants is not None else \
        [(name, "bf16" if gpu else "fp32", False) for name in names]
    batch_size = p * args.k
    results: dict = {"device": torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)",
                     "batch": [p, args.k], "crop_seconds": args.crop, "loader": {}, "syncs": [], "steps": []}

    def save() -> None:  # after every figure: a time limit keeps what finished
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))

    print(f"device {device} ({results['device']}), B = {p} x {args.k} crops of {args.crop} s, "
          "each variant of the trainer's step vs the plain fp32 loop on the same weights")
    folder = Path(tempfile.mkdtemp(prefix="bench_train_"))
    atexit.register(shutil.rmtree, folder, True)
    if args.syncs:
        print("host syncs per augmented step (speed, noise, reverb, SpecAugment; B = "
              f"{p} x {args.k}): checked path as every step ran before -> the trainer's path")
        for name, checked, trainer_path in host_syncs_per_step(p, args.k, args.crop, device):
            print(f"  {name:<24} {checked:<44} -> {trainer_path}")
            results["syncs"].append({"model": name, "checked": checked, "trainer": trainer_path})
    for audio_format in args.loader_formats:
        manifest = _corpus(folder, p, args.k, args.crop, audio_format)
        rate = loader_throughput(folder, manifest, p, args.k, args.crop, args.workers, 8 if gpu else 4, device)
        results["loader"][audio_format] = rate
        save()
        print(f"trainer's loader ({args.workers} workers, {audio_format}, augmented): {rate:,.0f} crops/s")
    if variants:
        header = f"{'variant':<24} {'params':>7} {'ours ms':>8} {'ours utt/s':>10} {'plain ms':>9} " \
                 f"{'plain utt/s':>11} {'speed-up':>8} {'loss ours':>10} {'loss plain':>10}"
        print(header)
        print("-" * len(header))
    failed = []
    for name, precision, compiled in variants:
        label = f"{name} {precision}{' +compile' if compiled else ''}"
        try:
            row = time_variant(folder, name, precision, compiled, p, args.k, args.crop, steps, device)
        except Exception as error:  # noqa: BLE001 - one failing variant is one row, the others still run
            message = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
            print(f"{label:<24} FAILED {message[:300]}")
            results["steps"].append({"variant": label, "failed": message[:2000]})
            failed.append(label)
        else:
            print(f"{label:<24} {row['params_m']:>6.1f}M {row['ms']:>8.1f} {row['utt_per_s']:>10,.0f} "
                  f"{row['plain_fp32_ms']:>9.1f} {batch_size / row['plain_fp32_ms'] * 1e3:>11,.0f} "
                  f"{row['speed_up']:>7.2f}x {row['loss_ours']:>10.5f} {row['loss_plain']:>10.5f}"
                  f"{'' if row['losses_agree'] else '  LOSSES DISAGREE'}")
            results["steps"].append({"variant": label, **row})
            if not row["losses_agree"]:
                failed.append(label)
        save()
        if gpu:
            torch.cuda.empty_cache()
    if results["loader"]:
        print(f"a step is data-bound when utt/s exceeds the loader's {min(results['loader'].values()):,.0f} crops/s "
              "(raise data.workers)")
    if failed:
        raise SystemExit(f"failed or first-step losses disagree beyond tolerance: {', '.join(failed)}")


def time_variant(folder: Path, name: str, precision: str, compiled: bool, p: int, k: int, crop_seconds: float,
                 steps: int, device: torch.device) -> dict:
    """One variant's row: the trainer's step against the plain fp32 loop, from the same weights on the same batch."""
    from speakertrip.audio import to_float

    set_tf32(False)  # PyTorch's defaults on both sides; the tf32 variant turns matmul TF32 on for ours alone
    trainer = bench_trainer(folder, _corpus(folder, p, k, crop_seconds), name, precision, compiled, p, k,
                            crop_seconds, device)
    batch = next(iter(trainer.loader)).to(device)
    waves = to_float(batch.waveforms)
    peer_step = plain_fp32(trainer.model, (waves, batch.lengths, batch.labels))  # copies the initial weights
    step = ours(trainer, batch)
    if precision == "tf32":
        step = with_tf32(step)
    loss_ours, seconds_ours, loss_plain, seconds_plain = time_pair(step, peer_step, steps, device)
    tolerance = 1e-4 if precision in ("fp32", "tf32") and device.type == "cpu" else \
        (1e-3 if precision == "fp32" else 5e-2)  # cuDNN's default TF32 convolutions on both sides on a GPU
    agree = abs(float(loss_ours) - float(loss_plain)) <= tolerance * max(1.0, abs(float(loss_plain)))
    batch_size = len(batch.labels)
    return {"params_m": sum(t.numel() for t in trainer.model.parameters()) / 1e6, "ms": 1e3 * seconds_ours,
            "utt_per_s": batch_size / seconds_ours, "plain_fp32_ms": 1e3 * seconds_plain,
            "speed_up": seconds_plain / seconds_ours, "losses_agree": agree, "loss_ours": float(loss_ours),
            "loss_plain": float(loss_plain)}


def parse_variant(text: str) -> tuple[str, str, bool]:
    """``"ecapa-512:bf16+compile"`` → ``("ecapa-512", "bf16", True)``."""
    name, _, rest = text.partition(":")
    precision, _, compiled = (rest or "fp32").partition("+")
    if name not in MODELS or precision not in ("fp32", "tf32", "bf16") or compiled not in ("", "compile"):
        raise SystemExit(f"bad variant {text!r}: expected MODEL:fp32|tf32|bf16[+compile], MODEL one of "
                         f"{', '.join(sorted(MODELS))}")
    return name, precision, bool(compiled)


def set_tf32(matmul: bool) -> None:
    """Matmul TF32 on or off (PyTorch's default: off); cuDNN's TF32 convolutions stay at PyTorch's default, on."""
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = True


def with_tf32(step):
    """``step`` with TF32 matmuls on (and off again, PyTorch's default, for the plain side)."""
    def run():
        set_tf32(True)
        try:
            return step()
        finally:
            set_tf32(False)
    return run


if __name__ == "__main__":
    main()
