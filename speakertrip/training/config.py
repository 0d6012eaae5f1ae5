"""Training configuration: plain YAML into dataclasses, with ``--section.key=value`` overrides.

Every section is a dataclass; unknown keys and values of the wrong type fail with a
:class:`ConfigError` naming the key (``loss.margn``) and the valid keys. Command-line overrides
win over the file; their values are parsed as YAML (``--optim.lr=2e-3``, ``--data.dev=null``).
A value replaces what its path names: ``--model.options={channels: 64}`` replaces the file's
options, ``--model.options.channels=64`` or ``--model.options+={channels: 64}`` (merge) keep the
others; ``--augment=null`` switches the optional ``augment`` section off. Free-form option
mappings (``model.options``, ``loss.options``) are checked by the encoder and loss builders,
which also reject unknown names.

>>> config = load_config(None, ["--train.steps=10", "--data.train=train.jsonl"])
>>> config.train.steps, config.loss.kind
(10, 'multi_positive')
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping, Sequence

import yaml

from speakertrip.audio.augment import AugmentConfig
from speakertrip.errors import ConfigError, FormatError
from speakertrip.features import FeatureConfig
from speakertrip.options import build_dataclass
from speakertrip.plain_yaml import plain_data, write_yaml
from speakertrip.training.domains import check_domains


@dataclass
class DataConfig:
    """Manifests and trial list (JSONL from ``speakertrip prepare``), crops and loading."""

    train: str = ""
    dev: str | None = None
    dev_trials: str | None = None
    crop_seconds: float = 2.0
    workers: int = 4
    batches_per_epoch: int | None = None
    short_speakers: Literal["repeat", "drop"] = "repeat"


@dataclass
class ModelConfig:
    """The encoder (a name in ``speakertrip.models.ENCODERS``) and its builder options.

    ``init_from``: start from a speakertrip model directory or a SpeechBrain ``embedding_model.ckpt``.
    ``interpolation``: the final model's weights are ``init_from + interpolation × (average − init_from)``,
    a weight-space ensemble of the trained model with its start (WiSE-FT); 1 (the default) keeps the average.
    """

    encoder: str = "ecapa"
    options: dict = field(default_factory=dict)
    init_from: str | None = None
    interpolation: float = 1.0


@dataclass
class LossConfig:
    """The loss (``speakertrip.losses.build_loss(kind, **options)``) and the P×K batch shape."""

    kind: str = "multi_positive"
    p: int = 64
    k: int = 4
    options: dict = field(default_factory=lambda: {"margin": 0.3, "hardest_negatives": 4})


@dataclass
class OptimConfig:
    """Optimiser: ``adam``, ``adamw`` or ``sgd``; ``lr`` is the peak learning rate of the schedule.

    ``momentum`` and ``nesterov`` are read by ``sgd`` only, ``betas`` by ``adam`` and ``adamw`` only (:attr:`READS`);
    left unset (None) they take the defaults in :attr:`READS`. Setting one the optimiser does not read is an error.
    """

    READS: ClassVar[dict[str, dict[str, Any]]] = {
        "sgd": {"momentum": 0.9, "nesterov": True}, "adam": {"betas": (0.9, 0.999)}, "adamw": {"betas": (0.9, 0.999)}}

    name: Literal["adam", "adamw", "sgd"] = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float | None = None
    nesterov: bool | None = None
    betas: list | None = None

    def settings(self) -> dict[str, Any]:
        """The keys ``name`` reads besides ``lr`` and ``weight_decay``, an unset one at its default.

        >>> OptimConfig(name="sgd", momentum=0.5).settings()
        {'momentum': 0.5, 'nesterov': True}
        """
        return {key: default if getattr(self, key) is None else getattr(self, key)
                for key, default in self.READS[self.name].items()}


@dataclass
class ScheduleConfig:
    """Learning rate: linear warmup, then ``cosine`` down to ``min_lr`` (or ``constant``), or ``cyclic``.

    ``cyclic``: triangular cycles of ``cycle_steps`` between ``min_lr`` and ``lr``, the peak multiplied
    by ``cycle_decay`` each cycle (0.5 = "triangular2"). ``warmup_steps`` < 1 is a fraction of all steps.
    """

    kind: Literal["cosine", "constant", "cyclic"] = "cosine"
    warmup_steps: float = 0.1
    min_lr: float = 1e-5
    cycle_steps: int = 2000
    cycle_decay: float = 1.0


@dataclass
class LoopConfig:
    """The loop: length (``epochs``, or ``steps`` when set), precision, checkpoints, validation, output.

    ``amp``: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``off``. ``compile``: ``torch.compile`` the
    encoder; ``auto`` on CUDA only (inductor's first compile on a CPU takes minutes). ``validate_every`` steps
    (0: at the end of each epoch). ``checkpoint_every`` steps (0: each epoch end only).
    ``average_last``: epoch checkpoints averaged into the final model. A step with a non-finite loss
    or gradient changes no weight and is logged; ``max_bad_steps`` of them in a row stop the run.
    """

    exp_dir: str = "exp/run"
    epochs: int = 10
    steps: int | None = None
    grad_clip: float | None = 5.0
    amp: Literal["auto", "bf16", "off"] = "auto"
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    validate_every: int = 0
    checkpoint_every: int = 0
    average_last: int = 3
    compile: bool | Literal["auto"] = False
    progress: bool = True
    max_bad_steps: int = 10


@dataclass
class TrainConfig:
    """Everything ``speakertrip train`` reads; see ``recipes/voxceleb/conf/*.yaml``."""

    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    augment: AugmentConfig | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: LoopConfig = field(default_factory=LoopConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain values (the resolved config saved in the experiment folder)."""
        return {item.name: plain_data(getattr(self, item.name)) for item in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config",
                  names: Mapping[str, str] | None = None) -> TrainConfig:
        """The one way a config is built from values: types, then ranges and rules (:func:`check_domains`).

        ``names``: how the user wrote a key, for errors (``speakertrip finetune``'s ``--lr`` for ``optim.lr``).
        """
        config = build_dataclass(cls, values, source)
        check_domains(config, source, names)
        return config



@dataclass(frozen=True)
class Override:
    """One ``--path=value`` from the command line; ``merge`` for ``--path+=mapping``."""

    path: tuple[str, ...]
    value: Any
    merge: bool = False
    text: str = ""


def parse_overrides(arguments: Sequence[str]) -> list[Override]:
    """``["--optim.lr=0.01", "--augment=null", "--loss.options+={margin: 0.2}"]`` → :class:`Override` s.

    Values are YAML. ``--section=null`` switches an optional section off; ``--path+={...}`` merges a
    mapping into the one already there instead of replacing it.

    >>> [(o.path, o.value, o.merge) for o in parse_overrides(["--augment=null", "--model.options+={channels: 64}"])]
    [(('augment',), None, False), (('model', 'options'), {'channels': 64}, True)]
    """
    parsed = []
    for argument in arguments:
        name, equals, text = argument[2:].partition("=")
        merge = name.endswith("+")
        path = tuple(name.removesuffix("+").split("."))
        if not argument.startswith("--") or not equals or not all(path):
            raise ConfigError(f"override {argument!r} is not of the form --section.key=value, --section=null "
                              "or --section.key+={mapping} (merge)")
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {argument!r}: the value is not valid YAML ({error})") from None
        if merge and not isinstance(value, Mapping):
            raise ConfigError(f"override {argument!r}: += merges a mapping ({{key: value, ...}}), "
                              f"got {type(value).__name__} {value!r}")
        parsed.append(Override(path, value, merge, argument))
    return parsed


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``extra`` merged in, mappings recursively (neither input is changed)."""
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _optional_sections() -> tuple[str, ...]:
    hints = typing.get_type_hints(TrainConfig)
    return tuple(name for name, kind in hints.items() if type(None) in typing.get_args(kind))


def apply_overrides(values: Mapping[str, Any], overrides: Sequence[Override]) -> dict[str, Any]:
    """The config values with each override applied in order: the value replaces what its path names.

    A path walks into the file's sections (``--model.options.channels=64`` keeps the other options);
    a section switched off (``null``) comes back with only the keys given after it.
    """
    result = dict(values)
    for override in overrides:
        target = result
        for depth, key in enumerate(override.path[:-1]):
            inner = target.get(key)
            if inner is None:
                inner = {}
            elif not isinstance(inner, Mapping):
                raise ConfigError(f"override {override.text!r}: {'.'.join(override.path[:depth + 1])} is "
                                  f"{inner!r}, not a section")
            target[key] = dict(inner)
            target = target[key]
        last = override.path[-1]
        if override.value is None and len(override.path) == 1 and last not in _optional_sections():
            raise ConfigError(f"override {override.text!r}: section {last!r} cannot be switched off; "
                              f"optional sections: {', '.join(_optional_sections())}")
        if override.merge and isinstance(target.get(last), Mapping):
            target[last] = _merge(target[last], override.value)
        else:
            target[last] = override.value
    return result


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML config (or only defaults when ``path`` is None) and apply command-line overrides."""
    values: Any = {}
    source = "command line"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as error:
            raise FormatError(f"invalid YAML: {error}", path) from None
        if not isinstance(values, Mapping):
            raise ConfigError(f"{path}: expected a mapping of sections (data, model, loss, ...)")
        source = str(path) + (" + command line" if overrides else "")
    defaults = TrainConfig().to_dict()  # so that a path like --loss.options.margin reaches a default mapping
    values = {name: {**defaults[name], **section} if isinstance(defaults.get(name), dict)
              and isinstance(section, Mapping) else section for name, section in {**defaults, **values}.items()}
    return TrainConfig.from_dict(apply_overrides(values, parse_overrides(overrides)), source)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    return write_yaml(config.to_dict(), path)
