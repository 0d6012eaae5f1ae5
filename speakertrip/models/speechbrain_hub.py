"""Pretrained SpeechBrain speaker models in: a hub id or a folder in the hub's layout → a speakertrip model.

A SpeechBrain speaker repository (``speechbrain/spkrec-ecapa-voxceleb``, ``speechbrain/spkrec-xvect-voxceleb``)
holds ``hyperparams.yaml``, ``embedding_model.ckpt``, ``mean_var_norm_emb.ckpt``, ``classifier.ckpt`` and
``label_encoder.txt``. Verification needs the first two: the frontend (``Fbank``, sentence mean
normalisation) and the encoder's settings are read from ``hyperparams.yaml`` as data
(:mod:`speakertrip.models.safe_hyperparams`: nothing in it runs), the weights from the checkpoint
with ``weights_only=True``. The result embeds exactly as SpeechBrain's ``EncoderClassifier.encode_batch``
(then L2-normalised); ``embedding_norm=True`` also folds ``mean_var_norm_emb`` (``encode_batch(...,
normalize=True)``) into the last layer's bias.

Hub ids are fetched with ``huggingface_hub`` into its cache (``pip install 'speakertrip[hub]'``). A source
is fetched only when it says so: ``hf:owner/name`` (any owner), or ``owner/name`` whose owner is one of
:data:`KNOWN_PUBLISHERS` (``speechbrain/spkrec-ecapa-voxceleb``). Anything else is a local path, so a
mistyped folder (``typo/model``) is an error naming it, never a download of a stranger's repository.
The example downloads from the hub, so the tests skip it (they run without a network):

>>> import_speechbrain("speechbrain/spkrec-ecapa-voxceleb").embedding_dim   # doctest: +SKIP
192
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch

from speakertrip.errors import ConfigError, FormatError, SpeakertripError
from speakertrip.features import FeatureConfig
from speakertrip.models.artifact import load_state, load_torch_data, read_weights
from speakertrip.models.embedding_model import EmbeddingModel
from speakertrip.audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from speakertrip.models.safe_hyperparams import Tagged, read_hyperparams_file, resolve
from speakertrip.plain_yaml import write_yaml

HYPERPARAMS_FILE = "hyperparams.yaml"
EMBEDDING_FILE = "embedding_model.ckpt"
EMBEDDING_NORM_FILE = "mean_var_norm_emb.ckpt"
IMPORT_RECORD = "imported_from.yaml"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")
HUB_PREFIX = "hf:"  # makes any hub id explicit: hf:owner/name[@revision]
KNOWN_PUBLISHERS = frozenset({"speechbrain"})  # owners whose owner/name is taken as a hub id without hf:
HUB_URL = "https://huggingface.co"
MAX_FFT = 16384  # bounds on a hyperparams file's frontend, checked before anything is allocated
MAX_MELS = 512

FBANK = "speechbrain.lobes.features.Fbank"
INPUT_NORMALIZATION = "speechbrain.processing.features.InputNormalization"
# SpeechBrain's own defaults for what a hyperparams file leaves out.
FBANK_DEFAULTS = {"deltas": False, "context": False, "requires_grad": False, "sample_rate": 16000, "f_min": 0,
                  "f_max": None, "n_fft": 400, "n_mels": 40, "filter_shape": "triangular",
                  "param_change_factor": 1.0, "param_rand_factor": 0.0, "left_frames": 5, "right_frames": 5,
                  "win_length": 25, "hop_length": 10}
FBANK_FIXED = {"deltas": False, "context": False, "filter_shape": "triangular", "param_change_factor": 1.0}
NORM_DEFAULTS = {"mean_norm": True, "std_norm": True, "norm_type": "global", "avg_factor": None, "length_dim": 1,
                 "update_until_epoch": 2, "avoid_padding_norm": False, "epsilon": 1e-10, "device": "cpu"}
# Per SpeechBrain encoder class: speakertrip's encoder, and the settings that encoder has built in.
ENCODERS = {
    "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN": ("ecapa", {
        "activation": "torch.nn.ReLU", "kernel_sizes": [5, 3, 3, 3, 1], "dilations": [1, 2, 3, 4, 1],
        "groups": [1, 1, 1, 1, 1]}),
    "speechbrain.lobes.models.Xvector.Xvector": ("tdnn", {
        "activation": "torch.nn.LeakyReLU", "tdnn_blocks": 5, "tdnn_kernel_sizes": [5, 3, 3, 1, 1],
        "tdnn_dilations": [1, 2, 3, 1, 1]}),
}
ENCODER_FREE = {"input_size", "in_channels", "lin_neurons", "channels", "tdnn_channels", "attention_channels",
                "res2net_scale", "se_channels", "global_context", "dropout", "device"}


@dataclass(frozen=True)
class SpeechBrainSpec:
    """What a ``hyperparams.yaml`` says about the verification pipeline."""

    features: FeatureConfig
    encoder: str
    encoder_settings: dict[str, Any]
    embedding_norm: dict[str, Any] | None  # mean_var_norm_emb's settings, when the file has one


def hub_repo(source: str | Path) -> str | None:
    """The hub repository (``owner/name[@revision]``) that ``source`` asks to fetch, or None for a local path:
    ``hf:owner/name``, or ``owner/name`` of a known publisher that is not an existing path.

    >>> hub_repo("speechbrain/spkrec-ecapa-voxceleb"), hub_repo("hf:someone/model@v1"), hub_repo("typo/model")
    ('speechbrain/spkrec-ecapa-voxceleb', 'someone/model@v1', None)
    """
    if not isinstance(source, str):
        return None
    if source.startswith(HUB_PREFIX):
        repo = source[len(HUB_PREFIX):]
        if not HUB_ID.match(repo):
            raise ConfigError(f"{source}: expected {HUB_PREFIX}owner/name or {HUB_PREFIX}owner/name@revision")
        return repo
    if HUB_ID.match(source) and source.split("/")[0] in KNOWN_PUBLISHERS and not Path(source).exists():
        return source
    return None


def is_hub_id(source: str | Path) -> bool:
    """True when ``source`` is fetched from the hub (:func:`hub_repo`)."""
    return hub_repo(source) is not None


def check_local_source(source: str | Path) -> None:
    """SpeakertripError naming ``source`` when it is neither a hub id nor an existing path; for a path shaped
    like ``owner/name`` it says how to ask for the hub repository instead."""
    if is_hub_id(source) or Path(source).exists():
        return
    hint = ""
    if isinstance(source, str) and HUB_ID.match(source):
        hint = (f"; it is not fetched from the hub, as only {', '.join(sorted(KNOWN_PUBLISHERS))}/... ids are: "
                f"to download that repository write {HUB_PREFIX}{source}")
    raise SpeakertripError(f"{source}: no such folder{hint}")


def _module(hparams: dict[str, Any], key: str, targets: tuple[str, ...], path: Path) -> tuple[str, dict[str, Any]]:
    """``(target, resolved keyword arguments)`` of ``key: !new:<target>``; FormatError for anything else."""
    value = resolve(hparams.get(key), hparams)
    if not isinstance(value, Tagged) or value.kind != "new":
        raise FormatError(f"key {key!r} must be '!new:{targets[0]}' (a SpeechBrain speaker-verification "
                          "pipeline: compute_features, mean_var_norm, embedding_model)", path)
    if value.target not in targets:
        raise FormatError(f"{key}: unsupported model type {value.target!r}; speakertrip imports "
                          f"{', '.join(targets)}", path)
    if not isinstance(value.value, dict):
        raise FormatError(f"{key}: expected keyword arguments, got {value.value!r}", path)
    return value.target, dict(value.value)


def _settings(given: dict[str, Any], defaults: dict[str, Any], key: str, path: Path) -> dict[str, Any]:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise FormatError(f"{key}: unknown argument(s) {', '.join(unknown)}", path)
    return {**defaults, **given}


def _unsupported(key: str, name: str, value: Any, expected: Any, path: Path) -> FormatError:
    return FormatError(f"{key}: {name}={value!r} is not supported (speakertrip's encoder has {expected!r})", path)


def describe_speechbrain(hparams: dict[str, Any], path: Path) -> SpeechBrainSpec:
    """Check ``hparams`` against what speakertrip can reproduce exactly; FormatError names the key."""
    fbank = _settings(_module(hparams, "compute_features", (FBANK,), path)[1], FBANK_DEFAULTS, "compute_features",
                      path)
    for name, expected in FBANK_FIXED.items():
        if fbank[name] != expected:
            raise _unsupported("compute_features", name, fbank[name], expected, path)
    norm = _settings(_module(hparams, "mean_var_norm", (INPUT_NORMALIZATION,), path)[1], NORM_DEFAULTS,
                     "mean_var_norm", path)
    if norm["norm_type"] != "sentence" or not norm["mean_norm"] or norm["length_dim"] != 1:
        raise FormatError("mean_var_norm: only per-sentence mean normalisation (norm_type: sentence) is supported, "
                          f"not norm_type={norm['norm_type']!r}, mean_norm={norm['mean_norm']!r}", path)
    try:
        _check_sizes(fbank, path)
        rate = int(fbank["sample_rate"])
        features = FeatureConfig.speechbrain(
            sample_rate=rate, n_mels=int(fbank["n_mels"]), n_fft=int(fbank["n_fft"]),
            win_length=int(round(rate / 1000.0 * fbank["win_length"])),
            hop_length=int(round(rate / 1000.0 * fbank["hop_length"])),
            f_min=float(fbank["f_min"]), f_max=float(fbank["f_max"] or rate // 2), var_norm=bool(norm["std_norm"]))
    except (TypeError, ValueError) as error:
        raise FormatError(f"compute_features: {error}", path) from None
    target, settings = _module(hparams, "embedding_model", tuple(ENCODERS), path)
    encoder, built_in = ENCODERS[target]
    unknown = sorted(set(settings) - ENCODER_FREE - set(built_in))
    if unknown:
        raise FormatError(f"embedding_model: unknown argument(s) {', '.join(unknown)}", path)
    for name, expected in built_in.items():
        value = settings.get(name, expected)
        value = value.target if isinstance(value, Tagged) else value
        if value != expected:
            raise _unsupported("embedding_model", name, value, expected, path)
    embedding_norm = None
    if "mean_var_norm_emb" in hparams:
        embedding_norm = _settings(_module(hparams, "mean_var_norm_emb", (INPUT_NORMALIZATION,), path)[1],
                                   NORM_DEFAULTS, "mean_var_norm_emb", path)
    return SpeechBrainSpec(features, encoder, settings, embedding_norm)


def _check_sizes(fbank: dict[str, Any], path: Path) -> None:
    """FormatError unless the frontend's sizes are numbers within what a speaker model uses (before any
    filter bank or window is allocated from them)."""
    bounds = {"sample_rate": (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE), "n_fft": (16, MAX_FFT), "n_mels": (1, MAX_MELS),
              "win_length": (1, 1000), "hop_length": (1, 1000)}  # the last two in milliseconds
    for name, (low, high) in bounds.items():
        value = fbank[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise FormatError(f"compute_features: {name}={value!r} is outside {low}..{high}", path)
    if fbank["n_mels"] > fbank["n_fft"] // 2 + 1:
        raise FormatError(f"compute_features: n_mels={fbank['n_mels']} is over n_fft // 2 + 1 "
                          f"({fbank['n_fft'] // 2 + 1})", path)


def _check_encoder(model: EmbeddingModel, spec: SpeechBrainSpec, path: Path) -> None:
    """The checkpoint's shapes must agree with what ``hyperparams.yaml`` declares."""
    settings, options = spec.encoder_settings, model.encoder_options
    if spec.encoder == "ecapa":
        channels = options["channels"]
        declared = {"channels": settings.get("channels", [512, 512, 512, 512, 1536]),
                    "lin_neurons": settings.get("lin_neurons", 192)}
        found = {"channels": [channels] * 4 + [3 * channels], "lin_neurons": options["embedding_dim"]}
    else:
        declared = {"tdnn_channels": settings.get("tdnn_channels", [512, 512, 512, 512, 1500]),
                    "lin_neurons": settings.get("lin_neurons", 512)}
        found = {"tdnn_channels": [options["channels"]] * 4 + [options["stats_channels"]],
                 "lin_neurons": options["embedding_dim"]}
    for name, value in declared.items():
        value = list(value) if isinstance(value, (list, tuple)) else value
        if value != found[name]:
            raise FormatError(f"{HYPERPARAMS_FILE} declares {name}={value!r} but {EMBEDDING_FILE} holds "
                                  f"{found[name]!r}", path)


def _fold_embedding_norm(model: EmbeddingModel, spec: SpeechBrainSpec, path: Path) -> None:
    """Fold ``mean_var_norm_emb`` (global mean, optionally std) into the encoder's last affine layer."""
    settings = spec.embedding_norm or {}
    if settings.get("norm_type") != "global" or not settings.get("mean_norm", True):
        raise FormatError(f"mean_var_norm_emb: only global normalisation can be folded in, not {settings!r}", path)
    stats = load_torch_data(path, "a statistics file")
    if not isinstance(stats, Mapping) or not isinstance(stats.get("glob_mean"), torch.Tensor):
        raise FormatError("expected SpeechBrain InputNormalization statistics (a mapping with 'glob_mean')", path)
    mean = stats["glob_mean"].reshape(-1).float()
    std = stats["glob_std"].reshape(-1).float().clamp(min=settings["epsilon"]) if settings["std_norm"] else None
    layer = model.encoder.fc.conv if spec.encoder == "ecapa" else model.encoder.blocks[-1].w
    if mean.numel() != model.embedding_dim:
        raise FormatError(f"glob_mean has {mean.numel()} values for a {model.embedding_dim}-d embedding", path)
    with torch.no_grad():
        layer.bias -= mean
        if std is not None:
            layer.bias /= std
            layer.weight /= std.reshape(-1, *([1] * (layer.weight.dim() - 1)))


def required_files(embedding_norm: bool = False) -> tuple[str, ...]:
    """The files of a hub repository that the import reads."""
    return (HYPERPARAMS_FILE, EMBEDDING_FILE) + ((EMBEDDING_NORM_FILE,) if embedding_norm else ())


def speechbrain_folder(source: str | Path, embedding_norm: bool = False,
                       cache_dir: str | Path | None = None) -> Path:
    """The local folder of ``source`` (fetched into the hub cache for a hub id), checked for the files it needs."""
    check_local_source(source)
    repo = hub_repo(source)
    folder = Path(fetch_from_hub(repo, required_files(embedding_norm), cache_dir) if repo else source)
    if not folder.is_dir():
        raise SpeakertripError(f"{folder}: no such folder (expected a SpeechBrain model folder with "
                               f"{' and '.join(required_files(embedding_norm))}, or a hub id like "
                               "speechbrain/spkrec-ecapa-voxceleb)")
    missing = [name for name in required_files(embedding_norm) if not (folder / name).is_file()]
    if missing:
        raise SpeakertripError(f"{folder}: missing {', '.join(missing)} (a SpeechBrain model folder holds "
                               f"{', '.join(required_files(True))}; fetch them from the model's hub page)")
    return folder


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
                                device: str | torch.device = "cpu") -> EmbeddingModel:
    """An :class:`EmbeddingModel` holding a SpeechBrain ``embedding_model.ckpt`` (ECAPA_TDNN or Xvector).

    The encoder's size is read from the tensor shapes (spkrec-ecapa-voxceleb: ECAPA C=1024,
    80 mels, 192-d). Features default to ``FeatureConfig.speechbrain(n_mels=...)``, what
    SpeechBrain's recipes compute, so the embeddings match SpeechBrain's before fine-tuning.

    >>> import tempfile
    >>> from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    >>> path = Path(tempfile.mkdtemp()) / "embedding_model.ckpt"
    >>> torch.save(ECAPA_TDNN(24, channels=[32, 32, 32, 32, 96], lin_neurons=16).state_dict(), path)  # as SpeechBrain saves it
    >>> model = load_speechbrain_checkpoint(path)
    >>> model.encoder_options["channels"], model.embedding_dim
    (32, 16)
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
    model = EmbeddingModel(feature_config, name, options)
    load_state(model.encoder, state, path)
    return model.to(device)


def import_speechbrain(source: str | Path, embedding_norm: bool = False,
                       cache_dir: str | Path | None = None) -> EmbeddingModel:
    """A SpeechBrain speaker model (hub id, or a folder in the hub's layout) as a speakertrip model, in eval mode.

    Parameters
    ----------
    source : ``"speechbrain/spkrec-ecapa-voxceleb"`` (``@revision`` optional) or a local folder
    embedding_norm : also apply ``mean_var_norm_emb`` (what ``encode_batch(normalize=True)`` does);
        SpeechBrain's own verification (``verify_batch``) does not
    cache_dir : the huggingface_hub cache for hub ids (default: its own, ``HF_HUB_CACHE``)
    """
    folder = speechbrain_folder(source, embedding_norm, cache_dir)
    hparams_path = folder / HYPERPARAMS_FILE
    spec = describe_speechbrain(read_hyperparams_file(hparams_path), hparams_path)
    model = load_speechbrain_checkpoint(folder / EMBEDDING_FILE, spec.features)
    _check_encoder(model, spec, hparams_path)
    if embedding_norm:
        _fold_embedding_norm(model, spec, folder / EMBEDDING_NORM_FILE)
    return model.eval()


def import_to_artifact(source: str | Path, out: str | Path, embedding_norm: bool = False,
                       cache_dir: str | Path | None = None) -> tuple[EmbeddingModel, Path]:
    """Import ``source`` and save it as a speakertrip artifact in ``out``, with ``imported_from.yaml``
    (the source and the SHA-256 of each file read); returns the model and ``out``."""
    folder = speechbrain_folder(source, embedding_norm, cache_dir)
    model = import_speechbrain(folder, embedding_norm)
    out = model.save(out)
    files = {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in required_files(embedding_norm)}
    write_yaml({"source": str(source), "folder": str(folder.resolve()), "embedding_norm": embedding_norm,
                "sha256": files}, out / IMPORT_RECORD)
    return model, out


def fetch_from_hub(repo_id: str, files: tuple[str, ...], cache_dir: str | Path | None = None) -> Path:
    """Download ``files`` of the hub repository ``repo_id`` (``owner/name[@revision]``) into the huggingface_hub
    cache; returns the snapshot folder. Offline, the files already cached are used; a missing one is an error
    that says what to fetch and where to put it."""
    repo, _, revision = repo_id.partition("@")
    where = (f"fetch {', '.join(files)} from {HUB_URL}/{repo}/tree/{revision or 'main'} into a folder and give "
             "that folder instead of the hub id (`speakertrip import FOLDER --out MODEL`, or st.load_model(FOLDER))")
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:
        raise SpeakertripError(f"{repo}: downloading from the hub needs huggingface_hub "
                               f"(pip install 'speakertrip[hub]'); or {where}") from None
    paths = []
    for name in files:
        try:
            paths.append(Path(hf_hub_download(repo, name, revision=revision or None, cache_dir=cache_dir)))
        except LocalEntryNotFoundError:
            raise SpeakertripError(f"{repo}: no such folder; as a hub id: {name} is not in the hub cache and the "
                                   f"hub cannot be reached (offline?); {where}") from None
        except RepositoryNotFoundError:
            raise SpeakertripError(f"{repo}: no such folder, nor a repository on the hub (or it is private/gated)") \
                from None
        except EntryNotFoundError:
            raise SpeakertripError(f"{repo}: the repository has no {name}; is it a SpeechBrain speaker model?") \
                from None
        except OSError as error:  # HTTP and connection errors
            raise SpeakertripError(f"{repo}: could not download {name} ({error}); {where}") from None
    return paths[0].parent
