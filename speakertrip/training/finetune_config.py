"""The options of ``speakertrip finetune`` (no torch import: the command line reads the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from speakertrip.errors import ConfigError


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

    def __post_init__(self) -> None:
        if self.steps < 1 or self.validate_every < 1 or self.patience < 1 or self.average_last < 1:
            raise ConfigError("steps, validate_every, patience and average_last must be >= 1")
        if not self.lr > 0 or self.dev_speakers <= 0 or self.freeze_layers < 0:
            raise ConfigError("lr and dev_speakers must be positive, freeze_layers >= 0")
        if not 0 < self.interpolation <= 1:
            raise ConfigError(f"interpolation must be in (0, 1], got {self.interpolation}")
        if self.source_statistics and not self.source:
            raise ConfigError("source_statistics (--source-statistics) re-estimates statistics on the source data: "
                              "give it with source (--source MANIFEST)")
