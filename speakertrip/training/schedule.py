"""Optimisers and learning-rate schedules as pure functions of the step (nothing to checkpoint)."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from speakertrip.training.config import OptimConfig, ScheduleConfig


def build_optimizer(parameters: Iterable[torch.nn.Parameter], config: OptimConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum, Nesterov) with the config's weight decay; unset keys at their defaults.

    Adam and AdamW are fused: one kernel per step, which also takes the non-finite guard's
    ``found_inf`` flag and skips the update on the device (:mod:`speakertrip.training.guard`).
    """
    parameters, settings = list(parameters), config.settings()
    if config.name == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=settings["momentum"],
                               nesterov=settings["nesterov"], weight_decay=config.weight_decay)
    optimizer = torch.optim.AdamW if config.name == "adamw" else torch.optim.Adam
    return optimizer(parameters, lr=config.lr, betas=tuple(settings["betas"]), weight_decay=config.weight_decay,
                     fused=True)


def warmup_steps(config: ScheduleConfig, total_steps: int) -> int:
    """``warmup_steps`` below 1 is a fraction of ``total_steps``."""
    if config.warmup_steps < 1:
        return int(round(config.warmup_steps * total_steps))
    return int(config.warmup_steps)


def learning_rate(step: int, total_steps: int, peak: float, config: ScheduleConfig) -> float:
    """The learning rate for optimiser step ``step`` (0-based) of ``total_steps``.

    >>> config = ScheduleConfig(kind="cosine", warmup_steps=10, min_lr=0.0)
    >>> [round(learning_rate(s, 111, 1.0, config), 3) for s in (0, 9, 10, 60, 110)]
    [0.1, 1.0, 1.0, 0.5, 0.0]
    """
    warmup = warmup_steps(config, total_steps)
    if step < warmup:
        return peak * (step + 1) / warmup
    if config.kind == "constant":
        return peak
    if config.kind == "cosine":
        progress = (step - warmup) / max(1, total_steps - warmup - 1)
        return config.min_lr + (peak - config.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    cycle, position = divmod(step - warmup, config.cycle_steps)
    top = config.min_lr + (peak - config.min_lr) * config.cycle_decay ** cycle
    rise = 1 - abs(2 * position / config.cycle_steps - 1)  # 0 → 1 → 0 over a cycle
    return config.min_lr + (top - config.min_lr) * rise


def set_learning_rate(optimizer: torch.optim.Optimizer, value: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = value
