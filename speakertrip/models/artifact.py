"""Model artifacts as data: ``config.yaml`` + ``model.safetensors``; SpeechBrain checkpoints in.

Loading never runs code from a file: YAML is read with ``safe_load``, weights with safetensors
(or ``torch.load(weights_only=True)`` for ``.pt``/``.ckpt`` state dicts).
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import torch
import yaml

from speakertrip.atomic import atomic_write
from speakertrip.errors import ConfigError, FormatError, SpeakertripError
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.models.embedding_model import ARTIFACT_FORMAT, ARTIFACT_VERSION, EmbeddingNetwork
from speakertrip.models.encoder import build_encoder
from speakertrip.plain_yaml import plain_data

CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "model.safetensors"
TORCH_WEIGHTS_FILE = "model.pt"
Network = TypeVar("Network", bound=EmbeddingNetwork)
CONFIG_KEYS = ("format", "version", "features", "encoder", "embedding_dim", "evaluation")
ENCODER_KEYS = ("name", "options")


def save_model(model: EmbeddingNetwork, directory: str | Path) -> Path:
    """Write the artifact of ``model`` into ``directory`` (created; both files replaced atomically, or
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


def model_from_config(config: Any, source: str | Path = "config",
                      network_class: type[Network] = EmbeddingNetwork) -> Network:
    """Build an untrained ``network_class`` (an :class:`EmbeddingNetwork`) from an artifact config.

    Every key and type is checked first (:func:`check_config`); errors name ``source`` and the key.
    """
    check_config(config, source)
    encoder = config["encoder"]
    try:
        return network_class(FeatureConfig.from_dict(config["features"]), encoder["name"],
                             encoder.get("options") or {}, config.get("evaluation") or {})
    except ConfigError as error:
        raise FormatError(str(error), source) from None


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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a torch file read with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as error:
            raise FormatError(f"unreadable safetensors file: {error}", path) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch raises many types for a bad or unsafe file
        raise FormatError(f"not a state dict loadable with weights_only=True: {error}", path) from None
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


def load_network(directory: str | Path, device: str | torch.device = "cpu",
                 network_class: type[Network] = EmbeddingNetwork) -> Network:
    """Read an artifact written by :meth:`EmbeddingNetwork.save`; returns the network in eval mode.

    ``st.load_model`` (:func:`speakertrip.extraction.load_model`) is this with the class that embeds files.
    """
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.is_file():
        raise SpeakertripError(f"{directory}: no model artifact here (expected {CONFIG_FILE} and {WEIGHTS_FILE}, "
                               "as written by `speakertrip train` or EmbeddingNetwork.save)")
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
    if header is not None:  # before anything is allocated: a config claiming channels: 4000 fails here
        check_shapes(expected, header, weights)
    if config.get("embedding_dim", embedding_dim) != embedding_dim:
        raise FormatError(f"key 'embedding_dim' is {config['embedding_dim']}, but the encoder it describes makes "
                          f"{embedding_dim}-d embeddings", config_path)
    model = model_from_config(config, config_path, network_class)
    load_state(model, read_weights(weights), weights)
    return model.to(device).eval()


def _speechbrain_encoder(state: Mapping[str, torch.Tensor], source: Path) -> tuple[str, int, dict[str, Any]]:
    """(encoder name, n_mels, options) matching the shapes of a SpeechBrain ECAPA or x-vector state dict."""
    shape = lambda key: tuple(state[key].shape)  # noqa: E731
    if "asp_bn.norm.weight" in state and "blocks.0.conv.conv.weight" in state:
        channels, n_mels = shape("blocks.0.conv.conv.weight")[:2]
        options = {"channels": channels, "embedding_dim": shape("fc.conv.weight")[0],
                   "attention_channels": shape("asp.tdnn.conv.conv.weight")[0],
                   "se_channels": shape("blocks.1.se_block.conv1.conv.weight")[0],
                   "res2net_scale": channels // shape("blocks.1.res2net_block.blocks.0.conv.conv.weight")[0],
                   "global_context": shape("asp.tdnn.conv.conv.weight")[1] == 9 * channels}
        return "ecapa", n_mels, options
    if "blocks.0.conv.weight" in state and "blocks.16.w.weight" in state:
        channels, n_mels = shape("blocks.0.conv.weight")[:2]
        options = {"channels": channels, "stats_channels": shape("blocks.12.conv.weight")[0],
                   "embedding_dim": shape("blocks.16.w.weight")[0]}
        return "tdnn", n_mels, options
    raise FormatError("not a SpeechBrain ECAPA_TDNN or Xvector state dict "
                      "(expected keys like 'blocks.0.conv.conv.weight' and 'asp_bn.norm.weight')", source)


def load_speechbrain_checkpoint(path: str | Path, feature_config: FeatureConfig | None = None,
                                device: str | torch.device = "cpu",
                                network_class: type[Network] = EmbeddingNetwork) -> Network:
    """An :class:`EmbeddingNetwork` (or ``network_class``) holding a SpeechBrain ``embedding_model.ckpt`` (ECAPA_TDNN or Xvector).

    The encoder's size is read from the tensor shapes (spkrec-ecapa-voxceleb: ECAPA C=1024,
    80 mels, 192-d). Features default to ``FeatureConfig.speechbrain(n_mels=...)``, what
    SpeechBrain's recipes compute, so the embeddings match SpeechBrain's before fine-tuning.

    >>> model = load_speechbrain_checkpoint("spkrec-ecapa-voxceleb/embedding_model.ckpt")  # doctest: +SKIP
    >>> model.encoder_options["channels"], model.embedding_dim  # doctest: +SKIP
    (1024, 192)
    """
    path = Path(path)
    if not path.is_file():
        raise SpeakertripError(f"{path}: no such checkpoint file")
    state = read_weights(path)
    name, n_mels, options = _speechbrain_encoder(state, path)
    feature_config = feature_config or FeatureConfig.speechbrain(n_mels=n_mels)
    if feature_config.n_mels != n_mels:
        raise ConfigError(f"{path}: the checkpoint expects {n_mels} mel bins, the feature config has "
                          f"{feature_config.n_mels}")
    model = network_class(feature_config, name, options)
    load_state(model.encoder, state, path)
    return model.to(device)


def initialise(model: EmbeddingNetwork, source: str | Path) -> None:
    """Load ``model.init_from``: a speakertrip model directory (all weights) or a SpeechBrain
    ``embedding_model.ckpt`` (encoder weights)."""
    source = Path(source)
    if source.is_dir():
        load_state(model, load_network(source).state_dict(), source)
    elif source.is_file():
        load_state(model.encoder, read_weights(source), source)
    else:
        raise ConfigError(f"model.init_from: {source} is neither a model directory nor a checkpoint file")
