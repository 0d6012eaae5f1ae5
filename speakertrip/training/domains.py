"""The allowed range of every numeric training-config key, checked when the config is loaded.

A value outside its range (a negative learning rate, Adam betas of 2 and 3, ``data.workers: -1``,
NaN anywhere) fails with a ConfigError naming the key and the range, before any training starts.
This is the one table of ranges: ``speakertrip finetune`` builds its TrainConfig through the same
``TrainConfig.from_dict``, and its options of fine-tuning alone are the ``finetune.*`` keys here
(fields of :class:`speakertrip.training.finetune_config.FinetuneConfig`).

>>> check_domain("optim.lr", -1e-3, "command line")
Traceback (most recent call last):
...
speakertrip.errors.ConfigError: command line: key 'optim.lr' must be > 0, got -0.001
>>> check_domain("optim.betas", (0.9, 0.999), "config.yaml")
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from speakertrip.errors import ConfigError


@dataclass(frozen=True)
class Range:
    """``low`` .. ``high`` (None: unbounded); ``open_low``/``open_high`` exclude the bound."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value < self.low or (self.open_low and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.open_high and value == self.high))

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.open_low else '>='} {self.low:g}"
        return f"in {'(' if self.open_low else '['}{self.low:g}, {self.high:g}{')' if self.open_high else ']'}"


POSITIVE = Range(0, open_low=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, open_high=True)  # [0, 1)
ANY = Range()  # any finite number

# Scalars, and for tuple-valued keys the range of each element; PAIRS must also be ordered (low <= high).
DOMAINS: dict[str, Range] = {
    "data.crop_seconds": POSITIVE, "data.workers": NON_NEGATIVE,
    "data.batches_per_epoch": AT_LEAST_ONE,
    "features.sample_rate": AT_LEAST_ONE, "features.n_fft": AT_LEAST_ONE, "features.win_length": AT_LEAST_ONE,
    "features.hop_length": AT_LEAST_ONE, "features.n_mels": AT_LEAST_ONE, "features.f_min": NON_NEGATIVE,
    "features.f_max": POSITIVE, "features.preemphasis": FRACTION, "features.log_floor": POSITIVE,
    "features.waveform_scale": POSITIVE, "features.dither": NON_NEGATIVE,
    "features.spec_time_masks": NON_NEGATIVE, "features.spec_time_width": NON_NEGATIVE,
    "features.spec_freq_masks": NON_NEGATIVE, "features.spec_freq_width": NON_NEGATIVE,
    "augment.weights": NON_NEGATIVE, "augment.noise_snr": ANY, "augment.music_snr": ANY, "augment.babble_snr": ANY,
    "augment.babble_speakers": AT_LEAST_ONE, "augment.speed_factors": POSITIVE,
    "model.interpolation": Range(0, 1, open_low=True), "loss.p": AT_LEAST_ONE, "loss.k": AT_LEAST_ONE,
    "optim.lr": POSITIVE, "optim.weight_decay": NON_NEGATIVE, "optim.momentum": FRACTION, "optim.betas": FRACTION,
    "schedule.warmup_steps": NON_NEGATIVE, "schedule.min_lr": NON_NEGATIVE, "schedule.cycle_steps": AT_LEAST_ONE,
    "schedule.cycle_decay": Range(0, 1, open_low=True),
    "train.epochs": AT_LEAST_ONE, "train.steps": AT_LEAST_ONE, "train.grad_clip": POSITIVE,
    "train.seed": Range(0, 2**32 - 1), "train.log_every": AT_LEAST_ONE, "train.validate_every": NON_NEGATIVE,
    "train.checkpoint_every": NON_NEGATIVE, "train.average_last": AT_LEAST_ONE, "train.max_bad_steps": AT_LEAST_ONE,
    "finetune.dev_speakers": POSITIVE, "finetune.max_dev_trials": Range(2), "finetune.freeze_layers": NON_NEGATIVE,
    "finetune.source_speakers": AT_LEAST_ONE, "finetune.patience": AT_LEAST_ONE, "finetune.average_last": AT_LEAST_ONE,
}
PAIRS = {"augment.noise_snr", "augment.music_snr", "augment.babble_snr", "augment.babble_speakers"}
LENGTHS = {"optim.betas": 2, **{key: 2 for key in PAIRS}}


def check_domain(key: str, value: Any, source: str, name: str | None = None) -> None:
    """Raise ConfigError when the numeric ``value`` of ``key`` lies outside ``DOMAINS[key]`` (None passes).

    ``name``: how the user wrote the key, for the message (finetune's ``--lr`` for ``optim.lr``).
    """
    domain = DOMAINS.get(key)
    if domain is None or value is None:
        return
    label = name or f"key {key!r}"
    if isinstance(value, dict):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
        if key in LENGTHS and len(items) != LENGTHS[key]:
            raise ConfigError(f"{source}: {label} needs {LENGTHS[key]} values, got {list(value)!r}")
    else:
        items = [value]
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (int, float)):
            raise ConfigError(f"{source}: {label} must hold numbers, got {item!r}")
        if item not in domain:
            shown = f"{item!r}" if len(items) == 1 and not isinstance(value, (list, tuple, dict)) else \
                f"{item!r} in {value!r}"
            raise ConfigError(f"{source}: {label} must be {domain}, got {shown}")
    if key in PAIRS and items[0] > items[1]:
        raise ConfigError(f"{source}: {label} is a (low, high) range, got low > high: {list(value)!r}")


def check_domains(config: Any, source: str, names: Mapping[str, str] | None = None) -> None:
    """Check every numeric key of a built TrainConfig (nested dataclasses) against :data:`DOMAINS`, and the
    rules between keys: the schedule's floor ``schedule.min_lr`` does not exceed its peak ``optim.lr``, an
    interpolation below 1 has a start to interpolate from (``model.init_from``), and no optimiser key is
    set that ``optim.name`` does not read (``OptimConfig.READS``). ``names``: how the user wrote a key."""
    names = names or {}
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        if dataclasses.is_dataclass(values):
            for item in dataclasses.fields(values):
                key = f"{section.name}.{item.name}"
                check_domain(key, getattr(values, item.name), source, names.get(key))
    if config.schedule.min_lr > config.optim.lr:
        floor, peak = names.get("schedule.min_lr", "key 'schedule.min_lr'"), names.get("optim.lr", "'optim.lr'")
        raise ConfigError(f"{source}: {floor} ({config.schedule.min_lr:g}) must not exceed {peak} "
                          f"({config.optim.lr:g}), the peak learning rate")
    if config.model.interpolation < 1 and not config.model.init_from:
        raise ConfigError(f"{source}: key 'model.interpolation' ({config.model.interpolation:g}) moves the final "
                          "weights toward the starting model: set 'model.init_from' too")
    optim, reads = config.optim, config.optim.READS
    for key in sorted(set().union(*reads.values()) - set(reads[optim.name])):
        if getattr(optim, key) is not None:
            readers = [name for name, keys in reads.items() if key in keys]
            raise ConfigError(f"{source}: key 'optim.{key}' does not apply to optimiser {optim.name!r} (it is read "
                              f"by {' and '.join(readers)} only): remove the key, or set optim.name to {readers[0]}")
