"""The training loop: P×K crops → augmentation and features on the device → encoder → triplet loss.

One process per device; ``torchrun --nproc_per_node N -m speakertrip train CONFIG`` runs DDP with
the sampler sharded by speaker and mining over the batch gathered from every rank. Checkpoints
hold everything a resumed run needs to continue exactly (model, optimiser, sampler position,
RNG states; the learning rate is a function of the step). The experiment folder gets the
resolved ``config.yaml``, ``metrics.jsonl``, ``checkpoints/`` (``last.pt``, ``best.pt``,
snapshots for averaging), ``curves.png`` and ``model/`` (the averaged, validated artifact).

>>> from speakertrip.training.config import load_config
>>> config = load_config("recipes/voxceleb/conf/ecapa_triplet.yaml", ["--train.epochs=1"])  # doctest: +SKIP
>>> train(config)                                                                           # doctest: +SKIP
PosixPath('exp/ecapa_triplet')
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from speakertrip.errors import ConfigError
from speakertrip.training.averaging import build_model, export_model, list_snapshots, snapshot_path
from speakertrip.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from speakertrip.training.config import TrainConfig, save_config
from speakertrip.training.distributed import Distributed, cleanup_distributed, gather_batch, setup_distributed
from speakertrip.training.guard import NonFiniteGuard
from speakertrip.training.metrics_log import MetricsLog, plot_curves
from speakertrip.training.schedule import build_optimizer, learning_rate, set_learning_rate, warmup_steps

INACTIVE_FRACTION = 0.01  # below this active-triplet fraction the loss has (almost) nothing to learn from


class TrainingModule(nn.Module):
    """The embedding model and the loss in one module, so that DDP averages the gradients of both
    (an AAM head has weights) and the cross-rank gather happens inside ``forward``."""

    def __init__(self, model: nn.Module, criterion: nn.Module):
        super().__init__()
        self.model, self.criterion = model, criterion

    def forward(self, waveforms: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor,
                amp_dtype: torch.dtype | None) -> torch.Tensor:
        """waveforms (B, T) float32, lengths (B,), labels (B,) → the scalar loss (float32)."""
        device_type = waveforms.device.type
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            embeddings = self.model(waveforms, lengths)
        with torch.autocast(device_type, enabled=False):
            embeddings, labels = gather_batch(embeddings.float(), labels)
            return self.criterion(embeddings, labels)


class ActivityWatch:
    """Says once when the active-triplet fraction has stayed below ``INACTIVE_FRACTION`` for
    ``patience`` steps after ``warmup`` (DESIGN.md: the mean over all negatives stops learning so).

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
        from speakertrip.data.datasets import CropDataset, collate_crops
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
        workers = config.data.workers
        self.loader = DataLoader(self.dataset, batch_sampler=self.sampler, collate_fn=collate_crops,
                                 num_workers=workers, pin_memory=device.type == "cuda",
                                 prefetch_factor=4 if workers else None,
                                 generator=torch.Generator().manual_seed(loop.seed))  # leaves the global RNG alone
        self.augmenter = Augmenter(config.augment, num_speakers, config.features.sample_rate, loop.seed) \
            if config.augment else None
        num_classes = self.augmenter.num_labels if self.augmenter else num_speakers

        self.model = build_model(config)
        if config.model.init_from and not resume:
            from speakertrip.models.artifact import initialise

            initialise(self.model, config.model.init_from)
        criterion = build_loss(config.loss.kind, embedding_dim=self.model.embedding_dim, num_classes=num_classes,
                               **config.loss.options)
        self.module = TrainingModule(self.model, criterion).to(device)
        if loop.compile:  # in place, so that state-dict keys (checkpoints, snapshots) stay the same
            self.model.encoder.compile()
        self.wrapped: nn.Module = self.module
        if distributed.enabled:
            self.wrapped = nn.parallel.DistributedDataParallel(
                self.module, device_ids=[device] if device.type == "cuda" else None)
        self.optimizer = build_optimizer(self.module.parameters(), config.optim)
        self.guard = NonFiniteGuard(self.module, self.optimizer, loop.max_bad_steps)
        self.amp_dtype = torch.bfloat16 if loop.amp == "bf16" or (loop.amp == "auto" and device.type == "cuda") \
            else None

        self.steps_per_epoch = self.sampler.batches_per_epoch
        self.total_steps = loop.steps if loop.steps is not None else loop.epochs * self.steps_per_epoch
        if self.total_steps < 1:
            raise ConfigError(f"nothing to train: train.steps / train.epochs give {self.total_steps} steps")
        self.batch_size = distributed.world_size * config.loss.p * config.loss.k
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best: dict[str, Any] = {}
        torch.manual_seed(loop.seed + distributed.rank)  # different dropout / SpecAugment draws per rank

    # ---------------------------------------------------------------- state
    def state(self) -> dict[str, Any]:
        return {"model": self.module.state_dict(), "optimizer": self.optimizer.state_dict(),
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "rng": rng_state(), "best": dict(self.best), "skipped_steps": self.guard.skipped,
                "config": self.config.to_dict()}

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
        if self.dist.is_main:  # rank 0's RNG continues exactly; other ranks (not saved) get fresh streams
            restore_rng_state(checkpoint["rng"])
        else:
            torch.manual_seed(self.config.train.seed + self.dist.rank + 7919 * self.step)

    def save(self, name: str = "last.pt") -> None:
        if self.dist.is_main:
            save_checkpoint(self.state(), self.checkpoints / name)

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
        self._window: list[dict[str, torch.Tensor]] = []
        self._window_start = time.perf_counter()
        self.activity = ActivityWatch(warmup_steps(self.config.schedule, self.total_steps),
                                      max(2 * loop.log_every, self.total_steps // 20))
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (main and loop.progress), unit="step",
                   desc="train", dynamic_ncols=True)
        started = time.perf_counter()
        while self.step < self.total_steps:
            self.sampler.set_epoch(self.epoch, start_batch=self.batch_in_epoch)
            for batch, items in zip(self.loader, self.sampler):  # the sampler replays the loader's batches
                self.train_step(batch, [self.dataset.utterances[index].path for index, _ in items])
                bar.update(1)
                if self.step % loop.log_every == 0 or self.step == self.total_steps:
                    bar.set_postfix(self.log_window(), refresh=False)
                end_of_epoch = self.batch_in_epoch == self.steps_per_epoch
                if loop.validate_every and self.step % loop.validate_every == 0 and not end_of_epoch:
                    self.validate()
                if loop.checkpoint_every and self.step % loop.checkpoint_every == 0 and not end_of_epoch:
                    self.save()
                if self.step >= self.total_steps:
                    break
            if self.batch_in_epoch == self.steps_per_epoch:
                self.end_epoch()
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
        if self.augmenter is not None:  # its draws are a function of (seed, rank, step): exact on resume
            self.augmenter.rng = np.random.default_rng([self.config.train.seed, self.dist.rank, self.step])
            waveforms, labels = self.augmenter(waveforms, labels, lengths)
        set_learning_rate(self.optimizer, learning_rate(self.step, self.total_steps, self.config.optim.lr,
                                                        self.config.schedule))
        self.module.train()
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

    def log_window(self) -> dict[str, str]:
        """Write the mean of the steps since the last log (one device sync); returns the progress-bar fields."""
        if not self._window:
            return {}
        elapsed = time.perf_counter() - self._window_start
        good = ~self.guard.window_flags()  # means over the steps that were not skipped (NaN if none was)
        keys = [key for key in self._window[-1] if all(key in record for record in self._window)]
        values = [torch.where(good, torch.stack([r[key].float() for r in self._window]), 0.0).sum() / good.sum()
                  for key in keys]
        numbers = torch.cat([torch.stack(values), (~good).float()]).tolist()  # the one host read
        means = dict(zip(keys, numbers[:len(keys)]))
        means["skipped_steps"] = len(self.report_skipped(self.guard.collect([bool(v) for v in numbers[len(keys):]])))
        means["lr"] = self.optimizer.param_groups[0]["lr"]
        means["utt_per_s"] = len(self._window) * self.batch_size / max(elapsed, 1e-9)
        self._window, self._window_start = [], time.perf_counter()
        if self.dist.is_main:
            self.log.write(kind="step", step=self.step, epoch=self.epoch, **means)
        self.watch_active_fraction(means.get("active_fraction"))
        shown = {"loss": f"{means['loss']:.4f}", "lr": f"{means['lr']:.2e}", "utt/s": f"{means['utt_per_s']:.0f}"}
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
        """Dev EER/minDCF on rank 0 (others wait); keeps ``best.pt`` by EER."""
        if self.dev is None:
            return
        from speakertrip.training.validation import validate

        if self.dist.is_main:
            metrics = validate(self.model, self.dev, self.config.data.dev_trials, device=self.device)
            self.log.write(kind="validation", step=self.step, epoch=self.epoch, **metrics)
            tqdm.write(f"step {self.step}: dev EER {100 * metrics['eer']:.2f} %, "
                       f"minDCF(0.01) {metrics['min_dcf_0.01']:.3f}")
            if not self.best or metrics["eer"] < self.best["eer"]:
                self.best = {"eer": metrics["eer"], "step": self.step}
                self.save("best.pt")
        self.dist.barrier()

    def finish(self, seconds: float) -> Path:
        """Average the last snapshots into ``model/``, plot the curves, print a summary table."""
        if not self.dist.is_main:
            return self.exp_dir
        snapshots = list_snapshots(self.checkpoints)[-max(1, self.config.train.average_last):]
        model_dir, evaluation = export_model(self.config, snapshots, self.exp_dir / "model", device=self.device)
        records = self.log.read()
        plot_curves(records, self.exp_dir / "curves.png")
        last = next((r for r in reversed(records) if r.get("kind") == "step"), {})
        rows = [("steps", f"{self.step} ({self.epoch} epochs of {self.steps_per_epoch})"),
                ("batch", f"{self.config.loss.p * self.dist.world_size} speakers x {self.config.loss.k}"),
                ("final loss", f"{last.get('loss', math.nan):.4f}"),
                *([("skipped steps", f"{self.guard.skipped} (non-finite loss or gradient; see metrics.jsonl)")]
                  if self.guard.skipped else []),
                ("time", f"{seconds:.1f} s")]
        if "eer" in evaluation:
            rows += [("dev EER (averaged model)", f"{100 * evaluation['eer']:.2f} %"),
                     ("dev minDCF(0.01)", f"{evaluation['min_dcf_0.01']:.4f}"),
                     ("EER threshold", f"{evaluation['eer_threshold']:.4f}")]
        rows.append(("model", str(model_dir)))
        width = max(len(name) for name, _ in rows)
        print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))
        return self.exp_dir


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
