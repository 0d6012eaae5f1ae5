"""Training configuration: plain YAML into dataclasses, with ``--section.key=value`` overrides.

Every section is a dataclass; unknown keys and values of the wrong type fail with a
:class:`ConfigError` naming the key (``loss.margn``) and the valid keys. Command-line overrides
win over the file; their values are parsed as YAML (``--optim.lr=2e-3``, ``--model.options={channels: 64}``,
``--data.dev=null``). Free-form option mappings (``model.options``, ``loss.options``) are
checked by the encoder and loss builders, which also reject unknown names.

>>> config = load_config(None, ["--train.steps=10", "--data.train=train.jsonl"])
>>> config.train.steps, config.loss.kind
(10, 'multi_positive')
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from speakertrip.audio.augment import AugmentConfig
from speakertrip.errors import ConfigError, FormatError
from speakertrip.features import FeatureConfig
from speakertrip.plain_yaml import plain_data, write_yaml
from speakertrip.training.domains import check_domains


@dataclass
class DataConfig:
    """Manifests and trial list (JSONL from ``speakertrip prepare``), crops and loading."""

    train: str = ""
    dev: str | None = None
    dev_trials: str | None = None
    crop_seconds: float = 2.0
    dev_max_seconds: float | None = None
    workers: int = 4
    batches_per_epoch: int | None = None
    short_speakers: str = "repeat"


@dataclass
class ModelConfig:
    """The encoder (a name in ``speakertrip.models.ENCODERS``) and its builder options.

    ``init_from``: start from a speakertrip model directory or a SpeechBrain ``embedding_model.ckpt``.
    """

    encoder: str = "ecapa"
    options: dict = field(default_factory=dict)
    init_from: str | None = None


@dataclass
class LossConfig:
    """The loss (``speakertrip.losses.build_loss(kind, **options)``) and the P×K batch shape."""

    kind: str = "multi_positive"
    p: int = 64
    k: int = 4
    options: dict = field(default_factory=lambda: {"margin": 0.3, "hardest_negatives": 4})


@dataclass
class OptimConfig:
    """Optimiser: ``adam``, ``adamw`` or ``sgd``; ``lr`` is the peak learning rate of the schedule."""

    name: str = "adamw"
    lr: float = 2e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    betas: list = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class ScheduleConfig:
    """Learning rate: linear warmup, then ``cosine`` down to ``min_lr`` (or ``constant``), or ``cyclic``.

    ``cyclic``: triangular cycles of ``cycle_steps`` between ``min_lr`` and ``lr``, the peak multiplied
    by ``cycle_decay`` each cycle (0.5 = "triangular2"). ``warmup_steps`` < 1 is a fraction of all steps.
    """

    kind: str = "cosine"
    warmup_steps: float = 0.1
    min_lr: float = 1e-5
    cycle_steps: int = 2000
    cycle_decay: float = 1.0


@dataclass
class LoopConfig:
    """The loop: length (``epochs``, or ``steps`` when set), precision, checkpoints, validation, output.

    ``amp``: ``auto`` (bf16 on CUDA, fp32 on CPU), ``bf16`` or ``off``. ``validate_every`` steps
    (0: at the end of each epoch). ``checkpoint_every`` steps (0: each epoch end only).
    ``average_last``: epoch checkpoints averaged into the final model. A step with a non-finite loss
    or gradient changes no weight and is logged; ``max_bad_steps`` of them in a row stop the run.
    """

    exp_dir: str = "exp/run"
    epochs: int = 10
    steps: int | None = None
    grad_clip: float | None = 5.0
    amp: str = "auto"
    seed: int = 0
    device: str = "auto"
    log_every: int = 10
    validate_every: int = 0
    checkpoint_every: int = 0
    average_last: int = 3
    compile: bool = False
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
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> TrainConfig:
        config = _build(cls, values, source, "")
        check_domains(config, source)
        return config


CHOICES = {"optim.name": ("adam", "adamw", "sgd"), "schedule.kind": ("cosine", "constant", "cyclic"),
           "train.amp": ("auto", "bf16", "off"), "data.short_speakers": ("repeat", "drop")}


def _describe(kind: Any) -> str:
    return " or ".join(getattr(arg, "__name__", str(arg)) for arg in typing.get_args(kind)) \
        if typing.get_origin(kind) in (typing.Union, types.UnionType) else getattr(kind, "__name__", str(kind))


def _convert(value: Any, kind: Any, key: str, source: str) -> Any:
    """``value`` checked against the annotation ``kind``; ints widen to float, lists become tuples."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        arguments = typing.get_args(kind)
        if value is None and type(None) in arguments:
            return None
        concrete = [argument for argument in arguments if argument is not type(None)]
        if len(concrete) == 1 and value is not None:
            return _convert(value, concrete[0], key, source)
        for argument in arguments:
            if argument is type(None):
                continue
            try:
                return _convert(value, argument, key, source)
            except ConfigError:
                continue
    elif dataclasses.is_dataclass(kind):
        return _build(kind, value, source, key + ".")
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif kind is tuple or origin is tuple:
        if isinstance(value, (list, tuple)):
            return tuple(value)
    elif kind in (list, dict, str, bool):
        if isinstance(value, kind):
            return value
    elif origin is not None and isinstance(value, origin):  # Mapping[str, float] and the like
        return value
    raise ConfigError(f"{source}: key {key!r} must be {_describe(kind)}, got {type(value).__name__} {value!r}")


def _build(cls: type, values: Any, source: str, prefix: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source}: section {prefix.rstrip('.') or '(top level)'!r} must be a mapping, "
                          f"got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    names = [item.name for item in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(prefix + str(name) for name in unknown)}; "
                          f"valid keys{' in ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}")
    converted = {}
    for name, value in values.items():
        key = prefix + name
        converted[name] = _convert(value, hints[name], key, source)
        if key in CHOICES and converted[name] not in CHOICES[key]:
            raise ConfigError(f"{source}: key {key!r} must be one of {', '.join(CHOICES[key])}, not {value!r}")
    try:
        return cls(**converted)
    except ConfigError as error:
        raise ConfigError(f"{source}: section {prefix.rstrip('.')!r}: {error}") from None


def parse_overrides(arguments: Sequence[str]) -> dict[str, Any]:
    """``["--optim.lr=0.01", "--model.options.channels=64"]`` → a nested dict of YAML-parsed values."""
    nested: dict[str, Any] = {}
    for argument in arguments:
        if not argument.startswith("--") or "=" not in argument or "." not in argument.split("=", 1)[0]:
            raise ConfigError(f"override {argument!r} is not of the form --section.key=value")
        path, text = argument[2:].split("=", 1)
        try:
            value = yaml.safe_load(text) if text else ""
        except yaml.YAMLError as error:
            raise ConfigError(f"override {argument!r}: the value is not valid YAML ({error})") from None
        *parents, last = path.split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise ConfigError(f"override {argument!r} conflicts with another override of {parent!r}")
        target[last] = value
    return nested


def _merge(base: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


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
    return TrainConfig.from_dict(_merge(dict(values), parse_overrides(overrides)), source)


def save_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved config as YAML (loadable again with :func:`load_config`)."""
    return write_yaml(config.to_dict(), path)
