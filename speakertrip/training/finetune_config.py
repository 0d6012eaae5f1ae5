"""The options of ``speakertrip finetune`` (no torch import: the command line reads the defaults).

They are checked where ``speakertrip train`` checks its config: each option that sets a TrainConfig key
(:data:`TRAIN_KEYS`) through ``TrainConfig.from_dict``, the others as the ``finetune.*`` keys of
``speakertrip.training.domains.DOMAINS`` (:func:`check_options`); errors name the option (``--lr``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from speakertrip.errors import ConfigError
from speakertrip.training.domains import check_domain

# The TrainConfig key that each option sets (the trainer's config, speakertrip.training.finetune.train_config).
TRAIN_KEYS = {"steps": "train.steps", "lr": "optim.lr", "min_lr": "schedule.min_lr", "warmup": "schedule.warmup_steps",
              "weight_decay": "optim.weight_decay", "speakers_per_batch": "loss.p", "utterances_per_speaker": "loss.k",
              "crop_seconds": "data.crop_seconds", "interpolation": "model.interpolation",
              "validate_every": "data.batches_per_epoch", "seed": "train.seed", "workers": "data.workers"}

# Defaults that differ by encoder. GE2E (Resemblyzer's LSTM, trained on real speech, no BatchNorm): only its
# projection learns, at a higher rate, on crops of one GE2E window; chosen on three splits of the real dev voices
# (scripts/bench_finetune.py --model resemblyzer; recipes/finetune/README.md).
ENCODER_DEFAULTS: dict[str, dict[str, Any]] = {
    "ge2e": {"steps": 100, "lr": 1e-3, "freeze_layers": 3, "crop_seconds": 1.6, "validate_every": 25, "patience": 2},
}


@dataclass
class FinetuneConfig:
    """Defaults for tens of speakers: at most 300 steps at a peak LR of 2e-4 (a tenth of training from
    scratch), 5 % warm-up, P=16 speakers × K=4 crops of 2 s, BatchNorm statistics frozen, validation every 50
    steps, patience 3, average of 3 (measured on real voices: recipes/finetune/README.md).

    ``dev_speakers``: speakers held out for dev when no dev set is given (a count, or a fraction below 1).
    ``freeze_layers``: the first N frame-level layers of the encoder keep their weights (and BatchNorm
    statistics). ``freeze_statistics``: every BatchNorm layer runs in inference mode while fine-tuning (the
    pretrained statistics normalise your data too, and stay as they are; weights still learn).
    ``source``: a manifest of source-domain data (e.g. what the model was trained on); ``source_speakers``
    of its speakers (default: as many as the training speakers) join the training set.
    ``source_statistics``: BatchNorm statistics are re-estimated on ``source`` data at every validation
    (training goes on with them) and in the final model: it keeps working on its original domain.
    ``interpolation``: the final weights are ``initial + interpolation × (fine-tuned − initial)``, a
    weight-space ensemble with the starting model (WiSE-FT); below 1 it forgets less of the original domain
    for part of the gain on yours (applied before the source statistics are re-estimated). Measured on three
    splits of real voices (recipes/finetune/README.md), ``source_statistics`` with ``lr=4e-4``: 0.58x EER on
    them, 1.15x on the original domain; with ``interpolation=0.7`` too, 0.60x and 1.04x.

    Each field is the option ``--field-name`` of the command; :func:`speakertrip.training.finetune.finetune`
    checks them all before it loads anything (see the module docstring).
    """

    steps: int = 300
    lr: float = 2e-4
    min_lr: float = 1e-5
    warmup: float = 0.05
    weight_decay: float = 1e-4
    speakers_per_batch: int = 16
    utterances_per_speaker: int = 4
    crop_seconds: float = 2.0
    margin: float = 0.3
    hardest_negatives: int = 4
    freeze_layers: int = 0
    freeze_statistics: bool = True
    dev_speakers: float = 0.2
    max_dev_trials: int = 20000
    source: str | None = None
    source_speakers: int | None = None
    source_statistics: bool = False
    interpolation: float = 1.0
    validate_every: int = 50
    patience: int = 3
    average_last: int = 3
    seed: int = 0
    device: str = "auto"
    workers: int = 2
    progress: bool = True

    @classmethod
    def for_encoder(cls, encoder: str | None, **options: Any) -> FinetuneConfig:
        """The defaults for ``encoder`` (an encoder name such as ``"ge2e"``; others and None: the class defaults)
        with ``options`` on top.

        >>> FinetuneConfig.for_encoder("ge2e", steps=50).lr, FinetuneConfig.for_encoder("ecapa").lr
        (0.001, 0.0002)
        """
        return cls(**{**ENCODER_DEFAULTS.get(encoder or "", {}), **options})


def option_name(field: str) -> str:
    """The command-line option of a :class:`FinetuneConfig` field: ``min_lr`` → ``--min-lr``."""
    return "--" + field.replace("_", "-")


def check_options(config: FinetuneConfig, source: str) -> None:
    """Check the options of fine-tuning alone (those not in :data:`TRAIN_KEYS`) against their ``finetune.*``
    ranges in DOMAINS, and that ``source_statistics`` has a ``source``."""
    for item in dataclasses.fields(config):
        if item.name not in TRAIN_KEYS:
            check_domain(f"finetune.{item.name}", getattr(config, item.name), source, option_name(item.name))
    if config.source_statistics and not config.source:
        raise ConfigError(f"{source}: --source-statistics re-estimates statistics on the source data: "
                          "give it with --source MANIFEST")
