"""The model artifact format: ``config.yaml`` + ``model.safetensors``, read and written as data.

Loading never runs code from a file: YAML is read with ``safe_load``, weights with safetensors
(or ``torch.load(weights_only=True)`` for ``.pt``/``.ckpt`` state dicts). A model's identity is a
digest of its config (``evaluation`` aside) and weights. The model class is
:class:`speakertrip.models.EmbeddingModel`; :func:`speakertrip.models.load_model` reads an artifact.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import typing
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from torch import nn

from speakertrip.atomic import atomic_write
from speakertrip.errors import ConfigError, FormatError, SpeakertripError
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.models.encoder import build_encoder
from speakertrip.plain_yaml import plain_data

ARTIFACT_FORMAT = "speakertrip-model"
ARTIFACT_VERSION = 1
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TORCH_WEIGHTS_FILE = "model.pt"
CONFIG_KEYS = ("format", "version", "features", "encoder", "embedding_dim", "evaluation")
ENCODER_KEYS = ("name", "options")


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write the artifact of ``model`` (an :class:`~speakertrip.models.EmbeddingModel`) into ``directory`` (created; both files replaced atomically, or
    neither when writing fails: SpeakertripError naming the folder, e.g. on a full disk).

    Weights holding NaN or infinity are refused (SpeakertripError naming them); nothing is written.
    """
    from safetensors.torch import save

    directory = Path(directory)
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    check_finite(state, directory, "the model")
    directory.mkdir(parents=True, exist_ok=True)
    config_text = yaml.safe_dump(plain_data(model.config), sort_keys=False)
    try:  # both files are complete before either replaces its old version
        with atomic_write(directory / WEIGHTS_FILE) as weights, atomic_write(directory / CONFIG_FILE, "w") as config:
            weights.write(save(state, metadata={"format": "pt"}))
            config.write(config_text)
    except OSError as error:
        raise SpeakertripError(f"{directory}: could not write the model artifact ({error.strerror or error}); "
                               "its previous files are unchanged") from error
    return directory


def check_finite(state: Mapping[str, Any], where: str | Path, what: str) -> None:
    """SpeakertripError naming ``where`` and the tensors when a (nested) state dict holds NaN or infinity."""
    bad = _nonfinite_tensors(state)
    if bad:
        raise SpeakertripError(f"{where}: {what} holds NaN or infinite values in {len(bad)} tensor(s) "
                               f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); refused, nothing written")


def _nonfinite_tensors(state: Mapping[str, Any]) -> list[str]:
    found = []
    for key, value in state.items():
        if isinstance(value, Mapping):
            found += [f"{key}.{name}" for name in _nonfinite_tensors(value)]
        elif isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            found.append(str(key))
    return found


def check_config(config: Any, source: str | Path = "config") -> None:
    """Raise FormatError naming ``source`` and the key for an unknown key or a value of the wrong type.

    ``evaluation`` may hold any keys (the trainer and calibration record more over time), but its
    thresholds and error rates must be finite numbers.
    """
    if not isinstance(config, Mapping) or config.get("format") != ARTIFACT_FORMAT:
        raise FormatError(f"not a speakertrip model config (expected 'format: {ARTIFACT_FORMAT}')", source)
    if config.get("version") != ARTIFACT_VERSION:
        raise FormatError(f"model format version {config.get('version')!r} is not supported "
                          f"(this speakertrip reads version {ARTIFACT_VERSION})", source)
    _check_keys(config, CONFIG_KEYS, "", source)
    for key in ("features", "encoder"):
        if not isinstance(config.get(key), Mapping):
            raise FormatError(f"key {key!r} is missing or not a mapping", source)
    encoder = config["encoder"]
    _check_keys(encoder, ENCODER_KEYS, "encoder.", source)
    if not isinstance(encoder.get("name"), str):
        raise FormatError("key 'encoder.name' is missing or not a string", source)
    if not isinstance(encoder.get("options") or {}, Mapping):
        raise FormatError(f"key 'encoder.options' must be a mapping, got {encoder['options']!r}", source)
    try:  # keys and types through the one option checker
        FeatureConfig.from_dict(config["features"], str(source))
    except ConfigError as error:
        raise FormatError(str(error).removeprefix(f"{source}: "), source) from None
    dim = config.get("embedding_dim")
    if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int)):
        raise FormatError(f"key 'embedding_dim' must be an int, got {dim!r}", source)
    evaluation = config.get("evaluation")
    if evaluation is not None and not isinstance(evaluation, Mapping):
        raise FormatError(f"key 'evaluation' must be a mapping, got {evaluation!r}", source)
    for key, value in (evaluation or {}).items():
        if (key in ("eer", "min_cllr", "cllr") or str(key).startswith("min_dcf") or str(key).endswith("threshold")) \
                and not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)):
            raise FormatError(f"key 'evaluation.{key}' must be a finite number, got {value!r}", source)


def _check_keys(values: Mapping[str, Any], valid: typing.Sequence[str], prefix: str, source: str | Path) -> None:
    unknown = sorted(str(key) for key in set(values) - set(valid))
    if unknown:
        raise FormatError(f"unknown key(s) {', '.join(repr(prefix + key) for key in unknown)}; valid keys"
                          f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(valid)}", source)


def declared_shapes(config: Mapping[str, Any], source: str | Path) -> tuple[dict[str, tuple[int, ...]], int]:
    """Tensor shapes and embedding size the (checked) config declares, found without allocating the
    encoder (it is built on PyTorch's ``meta`` device)."""
    try:
        features = FeatureConfig.from_dict(config["features"])
        frontend = LogMelFrontend(features)
        with torch.device("meta"):
            encoder = build_encoder(config["encoder"]["name"], features.n_mels, config["encoder"].get("options") or {})
    except ConfigError as error:
        raise FormatError(str(error), source) from None
    shapes = {f"frontend.{key}": tuple(value.shape) for key, value in frontend.state_dict().items()}
    shapes.update({f"encoder.{key}": tuple(value.shape) for key, value in encoder.state_dict().items()})
    return shapes, int(encoder.embedding_dim)


def weight_shapes(path: Path) -> dict[str, tuple[int, ...]] | None:
    """The shape of every tensor of a safetensors file, read from its header alone; None for other formats."""
    if path.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            return {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise FormatError(f"unreadable safetensors file: {error}", path) from None


def load_torch_data(path: str | Path, expected: str) -> Any:
    """What a torch file holds, read on the CPU with ``weights_only=True`` (never runs code from the file);
    an unreadable or unsafe file is a FormatError naming it and what was ``expected``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise FormatError(_unloadable(str(error), expected), path) from None


def _unloadable(message: str, expected: str) -> str:
    """One line for torch's many-line refusal, without its advice to load the file unsafely.

    >>> _unloadable("Weights only load failed. ... Unsupported global: GLOBAL os.system was not allowed", "x")
    'holds Python code (os.system), not only tensors and plain data: refused (loading it would run that code)'
    """
    code = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", message)
    if code:
        return (f"holds Python code ({code.group(1)}), not only tensors and plain data: refused (loading it would "
                "run that code)")
    if "Weights only load failed" in message:
        reason = re.search(r"(Unsupported [^\n.]*)", message)
        return f"not {expected}: the file is damaged or not a torch file ({reason.group(1) if reason else 'unreadable'})"
    first = message.strip().splitlines()[0] if message.strip() else "unreadable"
    return f"not {expected} readable as a torch file: {first}"


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file read with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise FormatError(f"unreadable safetensors file: {error}", path) from None
    state = load_torch_data(path, "a state dict")
    if not isinstance(state, Mapping) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise FormatError("expected a state dict (a mapping of names to tensors)", path)
    return dict(state)


def load_state(module: torch.nn.Module, state: Mapping[str, torch.Tensor], source: Path) -> None:
    """``module.load_state_dict(state)`` with one error listing missing, unexpected and misshapen tensors."""
    check_shapes({key: tuple(value.shape) for key, value in module.state_dict().items()},
                 {key: tuple(value.shape) for key, value in state.items()}, source)
    module.load_state_dict(state)


def check_shapes(expected: Mapping[str, tuple[int, ...]], found: Mapping[str, tuple[int, ...]], source: Path) -> None:
    """FormatError listing missing, unexpected and misshapen tensors of ``found`` against ``expected``."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{key} {found[key]} (expected {expected[key]})"
             for key in sorted(set(found) & set(expected)) if found[key] != expected[key]]
    problems = [f"{label}: {', '.join(items[:5])}" + (f" and {len(items) - 5} more" if len(items) > 5 else "")
                for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
                if items]
    if problems:
        raise FormatError("weights do not match the model config; " + "; ".join(problems), source)


def read_artifact(directory: str | Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The checked config and the weights of the artifact in ``directory``.

    The config is checked key by key and against the shapes in the weights' header before any
    weight is read (a config claiming ``channels: 4000`` fails without allocating anything).
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise SpeakertripError(f"{directory}: no model artifact here (expected {CONFIG_FILE} and {WEIGHTS_FILE}, "
                               "as written by `speakertrip train` or EmbeddingModel.save)")
    try:
        config = yaml.safe_load(config_path.read_text())
    except yaml.YAMLError as error:
        raise FormatError(f"invalid YAML: {error}", config_path) from None
    check_config(config, config_path)
    weights = next((directory / name for name in (WEIGHTS_FILE, TORCH_WEIGHTS_FILE) if (directory / name).is_file()),
                   None)
    if weights is None:
        raise SpeakertripError(f"{directory}: {CONFIG_FILE} found but no {WEIGHTS_FILE} (or {TORCH_WEIGHTS_FILE})")
    expected, embedding_dim = declared_shapes(config, config_path)
    header = weight_shapes(weights)
    if header is not None:
        check_shapes(expected, header, weights)
    if config.get("embedding_dim", embedding_dim) != embedding_dim:
        raise FormatError(f"key 'embedding_dim' is {config['embedding_dim']}, but the encoder it describes makes "
                          f"{embedding_dim}-d embeddings", config_path)
    state = read_weights(weights)
    check_shapes(expected, {key: tuple(value.shape) for key, value in state.items()}, weights)
    return config, state


def weights_stamp(state: Mapping[str, torch.Tensor]) -> tuple:
    """Changes whenever a tensor of ``state`` is written in place, replaced or moved to another device."""
    return tuple((key, value.data_ptr(), value._version, value.device) for key, value in state.items())


def identity_digest(config: Mapping[str, Any], state: Mapping[str, torch.Tensor]) -> str:
    """A hex digest of ``config`` (``evaluation`` aside) and every tensor of ``state``."""
    described = {key: value for key, value in config.items() if key != "evaluation"}
    digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode())
    for key in sorted(state):
        tensor = state[key].detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]
