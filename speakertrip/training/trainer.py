"""The training loop: P×K crops → augmentation and features on the device → encoder → triplet loss.

One process per device; ``torchrun --nproc_per_node N -m speakertrip train CONFIG`` runs DDP with
the sampler sharded by speaker and mining over the batch gathered from every rank. Checkpoints
hold everything a resumed run needs to continue exactly (model, optimiser, sampler position,
RNG states; the learning rate is a function of the step). The experiment folder gets the
resolved ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (``last.pt``, ``best.pt``,
snapshots for averaging), ``curves.png`` and ``model/`` (the averaged, validated artifact).

The example trains a recipe on VoxCeleb (hours on a GPU), so the tests skip it; ``tests/test_train.py``
runs the trainer on tiny trees:

>>> from speakertrip.training.config import load_config
>>> train(load_config("recipes/voxceleb/conf/ecapa_triplet.yaml", ["--train.epochs=1"]))  # doctest: +SKIP
PosixPath('exp/ecapa_triplet')
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
from torch import nn
from tqdm import tqdm

from speakertrip.data.manifest import Utterance
from speakertrip.errors import ConfigError
from speakertrip.losses.selection import grouped_batch
from speakertrip.tables import format_fields
from speakertrip.training.averaging import build_model, save_final_model, list_snapshots, snapshot_path
from speakertrip.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from speakertrip.training.config import TrainConfig, save_config
from speakertrip.training.distributed import Distributed, cleanup_distributed, gather_batch, setup_distributed
from speakertrip.training.guard import NonFiniteGuard
from speakertrip.training.metrics_log import MetricsLog, plot_curves
from speakertrip.training.step_timer import StepTimer

SUMMARY_FILE = "summary.txt"  # the run's summary table, as `speakertrip train` prints it
from speakertrip.training.schedule import build_optimizer, learning_rate, set_learning_rate, warmup_steps

INACTIVE_FRACTION = 0.01  # below this active-triplet fraction the loss has (almost) nothing to learn from


class TrainingModule(nn.Module):
    """The embedding model and the loss in one module, so that DDP averages the gradients of both
    (an AAM head has weights) and the cross-rank gather happens inside ``forward``.

    ``group_size`` K says that every batch is P×K (every label K times on every rank): the
    gather and the losses then use fixed sizes and skip their checks, so a step never waits
    for the device (see :func:`speakertrip.losses.selection.grouped_batch`).
    """

    def __init__(self, model: nn.Module, criterion: nn.Module, group_size: int | None = None):
        super().__init__()
        self.model, self.criterion, self.group_size = model, criterion, group_size

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                amp_dtype: torch.dtype | None) -> torch.Tensor:
        """waveforms (B, T) float32, lengths (B,), labels (B,) → the scalar loss (float32)."""
        device_type = waveforms.device.type
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            embeddings = self.model(waveforms, lengths)
        with torch.autocast(device_type, enabled=False):
            if self.group_size is None:
                embeddings, labels = gather_batch(embeddings.float(), labels)
                return self.criterion(embeddings, labels)
            sizes = [len(labels)] * (dist.get_world_size() if dist.is_initialized() else 1)
            embeddings, labels = gather_batch(embeddings.float(), labels, sizes)
            with grouped_batch(self.group_size):
                return self.criterion(embeddings, labels)


class ActivityWatch:
    """Says once when the active-triplet fraction has stayed below ``INACTIVE_FRACTION`` for
    ``patience`` steps after ``warmup`` (docs/measurements.md: the mean over all negatives stops learning so).

    >>> watch = ActivityWatch(warmup=0, patience=20)
    >>> [watch.update(step, 0.0) for step in (10, 20, 30, 40)]
    [False, False, True, False]
    """

    def __init__(self, warmup: int, patience: int):
        self.warmup, self.patience = warmup, patience
        self.since: int | None = None
        self.warned = False

    def update(self, step: int, fraction: float) -> bool:
        if self.warned or step <= self.warmup:
            return False
        if fraction >= INACTIVE_FRACTION:
            self.since = None
            return False
        self.since = step if self.since is None else self.since
        self.warned = step - self.since >= self.patience
        return self.warned


class Trainer:
    """Runs one experiment; ``Trainer(config, resume).run()`` returns the experiment folder."""

    def __init__(self, config: TrainConfig, distributed: Distributed, device: torch.device, resume: bool = False):
        from torch.utils.data import DataLoader

        from speakertrip.audio.augment import Augmenter
        from speakertrip.data.datasets import CropDataset, TrainingBatches, as_batch
        from speakertrip.data.manifest import read_manifest
        from speakertrip.data.sampler import PKSampler
        from speakertrip.losses import build_loss

        self.config, self.dist, self.device, self.resume = config, distributed, device, resume
        loop = config.train
        self.exp_dir = Path(loop.exp_dir)
        self.checkpoints = self.exp_dir / "checkpoints"
        if not config.data.train:
            raise ConfigError("data.train is not set: give the training manifest "
                              "(train.jsonl from `speakertrip prepare`)")
        if bool(config.data.dev) != bool(config.data.dev_trials):
            raise ConfigError("data.dev and data.dev_trials go together: give both (validation) or neither")
        if resume and not (self.checkpoints / "last.pt").is_file():
            raise ConfigError(f"--resume: no checkpoint {self.checkpoints / 'last.pt'} to resume from")
        if not resume and (self.checkpoints / "last.pt").is_file():
            raise ConfigError(f"{self.exp_dir} already holds a run (checkpoints/last.pt): pass --resume to "
                              "continue it, or choose another train.exp_dir")

        torch.manual_seed(loop.seed)  # the same initial weights on every rank
        self.dataset = CropDataset(read_manifest(config.data.train), config.data.crop_seconds,
                                   config.features.sample_rate)
        num_speakers = len(self.dataset.speaker_to_index)
        self.sampler = PKSampler(self.dataset.speaker_ids, config.loss.p, config.loss.k, seed=loop.seed,
                                 num_replicas=distributed.world_size, rank=distributed.rank,
                                 batches_per_epoch=config.data.batches_per_epoch,
                                 short_speakers=config.data.short_speakers)
        self.augmenter = Augmenter(config.augment, num_speakers, config.features.sample_rate, loop.seed) \
            if config.augment else None
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        workers = min(config.data.workers, cores)  # each reads whole batches: crops and their noise/RIR crops
        if workers < config.data.workers and distributed.is_main:
            print(f"data.workers {config.data.workers} lowered to {workers}: the cores this process may use")
        self.loader = DataLoader(TrainingBatches(self.dataset, self.augmenter, loop.seed), sampler=self.sampler,
                                 batch_size=None, collate_fn=as_batch, num_workers=workers,
                                 pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None,
                                 persistent_workers=workers > 0,
                                 generator=torch.Generator().manual_seed(loop.seed))  # leaves the global RNG alone
        num_classes = self.augmenter.num_labels if self.augmenter else num_speakers

        self.model = build_model(config)
        if config.model.init_from and not resume:
            from speakertrip.models.loading import initialise

            initialise(self.model, config.model.init_from)
        criterion = build_loss(config.loss.kind, embedding_dim=self.model.embedding_dim, num_classes=num_classes,
                               **config.loss.options)
        self.module = TrainingModule(self.model, criterion, group_size=config.loss.k).to(device)
        self.prepare_model()  # before DDP wraps it: DDP registers only the parameters that then train
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop shapes: pick the fastest kernels once
        self.compiled = loop.compile is True or (loop.compile == "auto" and device.type == "cuda")
        if self.compiled:  # in place, so that state-dict keys (checkpoints, snapshots) stay the same
            self.model.encoder.compile()
        self.wrapped: nn.Module = self.module
        if distributed.enabled:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device] if device.type == "cuda" else None)
        self.optimizer = build_optimizer(self.module.parameters(), config.optim)
        self.guard = NonFiniteGuard(self.module, self.optimizer, loop.max_bad_steps)
        self.amp_dtype = torch.bfloat16 if loop.amp == "bf16" or (loop.amp == "auto" and device.type == "cuda") \
            else None

        self.batchnorm_data: Sequence[Utterance] = ()  # the final model's BatchNorm statistics come from these
        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = loop.steps if loop.steps is not None else loop.epochs * self.steps_per_epoch
        if self.total_steps < 1:
            raise ConfigError(f"nothing to train: train.steps / train.epochs give {self.total_steps} steps")
        self.batch_size = distributed.world_size * config.loss.p * config.loss.k
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best: dict[str, Any] = {}
        self._window: list[dict[str, torch.Tensor]] = []
        self.timer = StepTimer(device)  # data wait against compute, per logging window
        self.activity = ActivityWatch(warmup_steps(config.schedule, self.total_steps),
                                      max(2 * loop.log_every, self.total_steps // 20))
        torch.manual_seed(loop.seed + distributed.rank)  # different dropout / SpecAugment draws per rank

    def prepare_model(self) -> None:
        """Change the model before it is compiled and wrapped in DDP (subclasses freeze layers here)."""

    # ---------------------------------------------------------------- state
    def state(self, rng_states: list[dict[str, Any]]) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "rng": {"ranks": rng_states}, "world_size": self.dist.world_size, "best": dict(self.best),
                "skipped_steps": self.guard.skipped, "config": self.config.to_dict()}

    def rng_states(self) -> list[dict[str, Any]]:
        """Every rank's generator states, in rank order (a collective: every rank calls it)."""
        own = rng_state(self.device, self.module)  # the seeded miners' generators too
        if not self.dist.enabled:
            return [own]
        states: list[Any] = [None] * self.dist.world_size
        dist.all_gather_object(states, own)
        return [{key: value.cpu() for key, value in state.items()} for state in states]

    def load(self, path: Path) -> None:
        checkpoint = load_checkpoint(path)
        self.module.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.step, self.epoch = int(checkpoint["step"]), int(checkpoint["epoch"])
        self.batch_in_epoch, self.best = int(checkpoint["batch_in_epoch"]), dict(checkpoint["best"])
        self.guard.skipped = int(checkpoint.get("skipped_steps", 0))
        changed = _differences(checkpoint.get("config", {}), self.config.to_dict())
        if changed:
            warnings.warn(f"resuming {path} with a changed config: {', '.join(changed)}", stacklevel=2)
        saved_world = checkpoint.get("world_size", self.dist.world_size)
        if saved_world != self.dist.world_size:
            raise ConfigError(f"{path} was written by a run of {saved_world} processes, this one has "
                              f"{self.dist.world_size}: the P×K sampler plans every epoch for the world size, so the "
                              f"run would not continue where it stopped; resume with --nproc_per_node {saved_world}, "
                              "or start a new run with model.init_from")
        ranks = checkpoint["rng"].get("ranks")
        if ranks is not None:  # every rank continues exactly
            restore_rng_state(ranks[self.dist.rank], self.device, self.module)
        elif self.dist.is_main:  # older checkpoints: rank 0's state only; other ranks get fresh streams
            restore_rng_state(checkpoint["rng"], self.device)
        else:
            torch.manual_seed(self.config.train.seed + self.dist.rank + 7919 * self.step)

    def save(self, name: str = "last.pt") -> None:
        """Write a checkpoint on rank 0 (a collective: every rank calls it, to hand over its RNG state)."""
        rng_states = self.rng_states()
        if self.dist.is_main:
            save_checkpoint(self.state(rng_states), self.checkpoints / name)

    def snapshot(self) -> None:
        """Model weights at this step, for averaging; only the newest ``average_last`` are kept."""
        if not self.dist.is_main:
            return
        save_checkpoint({"model": self.model.state_dict(), "step": self.step, "epoch": self.epoch},
                        snapshot_path(self.checkpoints, self.step))
        for old in list_snapshots(self.checkpoints)[: -max(1, self.config.train.average_last)]:
            old.unlink()

    # ---------------------------------------------------------------- loop
    def run(self) -> Path:
        loop = self.config.train
        main = self.dist.is_main
        if self.resume:
            self.load(self.checkpoints / "last.pt")
        if main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.exp_dir / "config.yaml")
            self.log = MetricsLog(self.exp_dir / "metrics.jsonl", resume_step=self.step if self.resume else None)
        self.dev = None
        if self.config.data.dev:
            from speakertrip.data.manifest import read_manifest

            self.dev = read_manifest(self.config.data.dev)
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (main and loop.progress), unit="step",
                   desc="train", dynamic_ncols=True)
        started = time.perf_counter()
        self.timer.restart()
        while self.step < self.total_steps:
            self.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            for batch, items in zip(self.loader, self.sampler):  # the sampler replays the loader's batches
                self.timer.batch_ready()
                self.train_step(batch, [self.dataset.utterances[index].path for index, _ in items])
                self.timer.step_done()
                bar.update(1)
                if self.step % loop.log_every == 0 or self.step == self.total_steps:
                    bar.set_postfix(self.log_window(), refresh=False)
                end_of_epoch = self.batch_in_epoch == self.steps_per_epoch
                if loop.validate_every and self.step % loop.validate_every == 0 and not end_of_epoch:
                    self.validate()
                    self.timer.restart()  # not time spent waiting for data
                if loop.checkpoint_every and self.step % loop.checkpoint_every == 0 and not end_of_epoch:
                    self.save()
                    self.timer.restart()
                if self.step >= self.total_steps:
                    break
            if self.batch_in_epoch == self.steps_per_epoch:
                self.end_epoch()
                self.timer.restart()
        bar.close()
        if not list_snapshots(self.checkpoints) or self.batch_in_epoch:
            self.snapshot()  # ended mid-epoch: the final weights join the average
        self.save()
        self.dist.barrier()
        return self.finish(time.perf_counter() - started)

    def train_step(self, batch, paths: Sequence[str] = ()) -> None:
        """One update; a non-finite loss or gradient skips it (:mod:`speakertrip.training.guard`), and
        ``paths`` (the batch's files) name its utterances in the log."""
        from speakertrip.audio import to_float

        batch = batch.to(self.device, non_blocking=True)
        waveforms, lengths, labels = to_float(batch.waveforms), batch.lengths, batch.labels
        if batch.augment is not None:  # drawn and read in the loader from the batch's seeds: exact on resume
            waveforms, labels = self.augmenter.apply(waveforms, lengths, batch.augment)
        set_learning_rate(self.optimizer, learning_rate(self.step, self.total_steps, self.config.optim.lr,
                                                        self.config.schedule))
        self.set_train_mode()
        self.guard.save_buffers()
        loss = self.wrapped(waveforms, lengths, labels, self.amp_dtype)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        record = {"loss": loss.detach()}
        if self.config.train.grad_clip:
            grad_norm = record["grad_norm"] = nn.utils.clip_grad_norm_(self.module.parameters(),
                                                                       self.config.train.grad_clip)
        else:
            grad_norm = nn.utils.get_total_norm([p.grad for p in self.module.parameters() if p.grad is not None])
        self.guard.step(loss, grad_norm, waveforms, self.step + 1, paths)
        record.update(getattr(self.module.criterion, "last_stats", {}))
        self._window.append(record)
        self.step += 1
        self.batch_in_epoch += 1

    def set_train_mode(self) -> None:
        """Put the model and loss in training mode (before each step: validation leaves them in eval mode)."""
        self.module.train()

    def log_window(self) -> dict[str, str]:
        """Write the means of the steps since the last log (one device sync): the losses' statistics, the
        learning rate, utt/s, data wait and compute per step and the data-wait fraction, the GPU memory peak.
        Returns the progress-bar fields."""
        if not self._window:
            return {}
        good = ~self.guard.window_flags()  # means over the steps that were not skipped (NaN if none was)
        keys = [key for key in self._window[-1] if all(key in record for record in self._window)]
        values = [torch.where(good, torch.stack([r[key].float() for r in self._window]), 0.0).sum() / good.sum()
                  for key in keys]
        numbers = torch.cat([torch.stack(values), (~good).float()]).tolist()  # the one host read
        means = dict(zip(keys, numbers[:len(keys)]))
        means["skipped_steps"] = len(self.report_skipped(self.guard.collect([bool(v) for v in numbers[len(keys):]])))
        means["lr"] = self.optimizer.param_groups[0]["lr"]
        timed = self.timer.window()
        steps = max(timed.steps, 1)
        means["utt_per_s"] = timed.steps * self.batch_size / max(timed.data_seconds + timed.compute_seconds, 1e-9)
        means.update(data_ms=1e3 * timed.data_seconds / steps, step_ms=1e3 * timed.compute_seconds / steps,
                     data_fraction=timed.data_fraction)
        if self.device.type == "cuda":
            means["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            torch.cuda.reset_peak_memory_stats(self.device)
        self._window = []
        if self.dist.is_main:
            self.log.write(kind="step", step=self.step, epoch=self.epoch, **means)
        self.watch_active_fraction(means.get("active_fraction"))
        shown = {"loss": f"{means['loss']:.4f}", "lr": f"{means['lr']:.2e}", "utt/s": f"{means['utt_per_s']:.0f}",
                 "data": f"{100 * means['data_fraction']:.0f}%"}
        if "active_fraction" in means:
            shown["active"] = f"{means['active_fraction']:.3f}"
        return shown

    def report_skipped(self, skipped: list) -> set[int]:
        """Log each skipped step with the utterances of its batch; returns their step numbers."""
        for item in skipped:
            culprits = ", ".join(item.nonfinite_inputs[:3]) or "none (the loss or model overflowed)"
            if self.dist.is_main:
                self.log.write(kind="skipped", step=item.step, reason="non-finite loss or gradient",
                               nonfinite_inputs=item.nonfinite_inputs, batch=item.batch)
                tqdm.write(f"step {item.step}: non-finite loss or gradient, update skipped (no weight changed); "
                           f"non-finite input: {culprits}")
        return {item.step for item in skipped}

    def watch_active_fraction(self, fraction: float | None) -> None:
        if fraction is not None and self.activity.update(self.step, fraction):
            warnings.warn(f"step {self.step}: the active-triplet fraction has stayed below {INACTIVE_FRACTION:.0%} "
                          f"for {self.activity.patience}+ steps, so the loss has almost nothing to learn from; "
                          "mine harder negatives (loss.options.hardest_negatives, miner batch_hard or semi_hard) "
                          "or raise the margin", stacklevel=2)

    def end_epoch(self) -> None:
        every = self.config.train.validate_every
        if every == 0 or self.step % every == 0:
            self.validate()
        self.epoch += 1
        self.batch_in_epoch = 0
        self.snapshot()
        self.save()
        if self.dist.is_main:
            self.log.write(kind="epoch", step=self.step, epoch=self.epoch, world_size=self.dist.world_size,
                           batch=self.batch_size)

    def validate(self) -> None:
        """Dev EER/minDCF, the dev embedding shared by every rank; keeps ``best.pt`` by EER.

        A compiled encoder runs eagerly here: dev batches vary in size and length, and each new
        shape would compile again.
        """
        if self.dev is None:
            return
        from speakertrip.evaluation.recording import validate

        stance = torch.compiler.set_stance("force_eager") if self.compiled else contextlib.nullcontext()
        with stance:
            metrics = validate(self.model, self.dev, self.config.data.dev_trials, device=self.device,
                               rank=self.dist.rank, world_size=self.dist.world_size)
        if self.dist.is_main:
            self.log.write(kind="validation", step=self.step, epoch=self.epoch, **metrics)
            tqdm.write(f"step {self.step}: dev EER {100 * metrics['eer']:.2f} %, "
                       f"minDCF(0.01) {metrics['min_dcf_0.01']:.3f}")
        eer = self.dist.broadcast(metrics["eer"])  # rank 0's: every rank takes the same decision
        if not self.best or self.improves(eer):
            self.best = {"eer": eer, "step": self.step}
            self.save("best.pt")

    def improves(self, eer: float) -> bool:
        """Whether a dev EER beats ``self.best`` (strictly lower)."""
        return eer < self.best["eer"]

    def finish(self, seconds: float) -> Path:
        """Average the last snapshots into ``model/``, plot the curves, write the summary (``summary.txt``, also
        kept in ``self.summary`` as name/value rows) for the command to print."""
        if not self.dist.is_main:
            return self.exp_dir
        snapshots = list_snapshots(self.checkpoints)[-max(1, self.config.train.average_last):]
        model_dir, evaluation = save_final_model(self.config, snapshots, self.exp_dir / "model", device=self.device,
                                             batchnorm_data=self.batchnorm_data)
        records = self.log.read()
        plot_curves(records, self.exp_dir / "curves.png")
        steps = [r for r in records if r.get("kind") == "step"]
        last = steps[-1] if steps else {}
        rows = [("steps", f"{self.step} ({self.epoch} epochs of {self.steps_per_epoch})"),
                ("batch", f"{self.config.loss.p * self.dist.world_size} speakers x {self.config.loss.k}"),
                ("final loss", f"{last.get('loss', math.nan):.4f}"),
                *([("skipped steps", f"{self.guard.skipped} (non-finite loss or gradient; see metrics.jsonl)")]
                  if self.guard.skipped else []),
                ("time", f"{seconds:.1f} s")]
        rows += throughput_rows(steps)
        if "interpolation" in evaluation:
            rows.append(("final weights", f"initial + {evaluation['interpolation']:g} x (averaged - initial)"))
        if "eer" in evaluation:
            rows += [("dev EER (averaged model)", f"{100 * evaluation['eer']:.2f} %"),
                     ("dev minDCF(0.01)", f"{evaluation['min_dcf_0.01']:.4f}"),
                     ("EER threshold", f"{evaluation['eer_threshold']:.4f}")]
        rows.append(("model", str(model_dir)))
        self.summary = rows
        (self.exp_dir / SUMMARY_FILE).write_text(format_fields(rows) + "\n")
        return self.exp_dir


def throughput_rows(steps: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Summary rows from the step records: utt/s, data wait against step time, GPU memory peak."""
    timed = [r for r in steps if "data_ms" in r and "step_ms" in r]
    if not timed:
        return []
    data, compute = sum(r["data_ms"] for r in timed), sum(r["step_ms"] for r in timed)
    rows = [("utt/s (median window)", f"{sorted(r['utt_per_s'] for r in timed)[len(timed) // 2]:,.0f}"),
            ("data wait", f"{100 * data / max(data + compute, 1e-9):.1f} % of step time "
                          f"({data / len(timed):.1f} ms data, {compute / len(timed):.1f} ms compute per step)")]
    peaks = [r["gpu_mem_peak_gib"] for r in timed if "gpu_mem_peak_gib" in r]
    if peaks:
        rows.append(("GPU memory peak", f"{max(peaks):.2f} GiB"))
    return rows


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [key for name in sorted(set(old) | set(new))
                for key in _differences(old.get(name), new.get(name), f"{prefix}{name}.")]
    return [prefix.rstrip(".")] if old != new else []


def train(config: TrainConfig, resume: bool = False) -> Path:
    """Train as ``config`` says; returns the experiment folder (with ``model/`` inside).

    Under ``torchrun`` each process joins the process group (NCCL on GPUs, gloo on CPUs) first.
    """
    distributed, device = setup_distributed(config.train.device)
    try:
        return Trainer(config, distributed, device, resume).run()
    finally:
        cleanup_distributed()
