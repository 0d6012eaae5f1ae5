"""Fine-tuning a model on a few tens of your own speakers: head-free, with the multi-positive triplet loss.

A triplet loss has no classifier head, so a pretrained encoder (your own artifact, a SpeechBrain
hub model) is fine-tuned as it is from the first step. :func:`finetune`:

1. loads the model (any ``st.load_model`` source) and saves it as ``<out>/initial_model``;
2. reads the data (a VoxCeleb-layout folder or a manifest), holds out dev speakers (or takes a dev
   set), writes ``<out>/data/{train,dev}.jsonl`` and ``dev_trials.txt`` (every target pair, sampled
   non-target pairs); optionally mixes in source-domain speakers (``source``) against forgetting;
3. trains with the regular trainer (``init_from`` the initial model, a low learning rate, a short
   warm-up, BatchNorm statistics frozen, optionally the first encoder layers frozen), validating every
   ``validate_every`` steps and stopping when the dev EER has not improved for ``patience`` validations;
4. averages the last snapshots up to the best validation into ``<out>/model``, optionally moved back
   toward the initial weights (``interpolation``, WiSE-FT), records its dev EER and thresholds in the
   artifact and reports the dev EER before and after. With
   ``source_statistics`` the BatchNorm statistics follow the source data: re-estimated on source crops
   at every validation and in the final model.

Resumable like ``speakertrip train``: ``resume=True`` continues from ``<out>/checkpoints/last.pt``.

Even a few steps on a tiny tree take over 10 s (training, validation, averaging), so the tests skip the
example (``tests/test_finetune.py`` runs it):

>>> finetune("exp/model", "my_speakers/", "exp/finetuned").eer_after   # doctest: +SKIP
0.041
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from speakertrip.audio.io import load_audio
from speakertrip.data.items import read_items
from speakertrip.data.manifest import BadEntriesError, Utterance, read_manifest, write_manifest
from speakertrip.data.split import choose_speakers, hold_out_speakers, make_trials, split_by_speakers, write_trials
from speakertrip.errors import AudioError, ConfigError, SpeakertripError
from speakertrip.models.speechbrain_hub import is_hub_id
from speakertrip.plain_yaml import plain_data
from speakertrip.training.averaging import SNAPSHOT_PATTERN, list_snapshots
from speakertrip.training.batchnorm import batch_norms, reestimate_batchnorm
from speakertrip.training.finetune_config import TRAIN_KEYS, FinetuneConfig, check_options, option_name
from speakertrip.training.config import TrainConfig
from speakertrip.training.trainer import Trainer

SOURCE_PREFIX = "source:"  # speaker and utterance ids of mixed-in source-domain data
OPTIONS_SOURCE = "fine-tuning options"  # where a bad option's error says it came from
SUMMARY_FILE = "finetune.json"
SOURCES_FILE = "sources.json"  # in <out>/data: the --model, --data and --dev a run was started with
MIN_SECONDS = 0.25  # shorter files are left out of fine-tuning, with a warning (a 0.1 s file is mostly padding)


@dataclass
class FinetuneResult:
    """What :func:`finetune` did: the artifact, dev EER (fractions) before and after, the split."""

    exp_dir: Path
    model_dir: Path
    eer_before: float
    eer_after: float
    best_step: int
    steps: int
    train_speakers: int
    dev_speakers: int
    source_speakers: int

    def to_dict(self) -> dict[str, Any]:
        return {key: str(value) if isinstance(value, Path) else value for key, value in dataclasses.asdict(self).items()}


def _source_utterances(path: str, count: int, seed: int) -> list[Utterance]:
    utterances = read_manifest(path)
    chosen = choose_speakers((u.spk_id for u in utterances), count, seed + 1)
    return [dataclasses.replace(u, utt_id=SOURCE_PREFIX + u.utt_id, spk_id=SOURCE_PREFIX + u.spk_id)
            for u in utterances if u.spk_id in chosen]


def _utterances(source: str | Path) -> list[Utterance]:
    """The utterances of a folder or manifest; unreadable files are one error that says what to do here."""
    try:
        return read_items(source).utterances()
    except BadEntriesError as error:
        listed = "; ".join(f"{utt_id}: {reason}" for utt_id, reason in error.problems[:3])
        raise SpeakertripError(f"{source}: {len(error.problems)} audio file(s) cannot be read ({listed}"
                               f"{', ...' if len(error.problems) > 3 else ''}); fix or remove them, or write a "
                               f"manifest without them (`speakertrip prepare voxceleb --root {source} --out DIR "
                               "--skip-bad`) and pass DIR/utts.jsonl") from None


def usable_utterances(utterances: list[Utterance], source: str | Path) -> list[Utterance]:
    """``utterances`` without the files fine-tuning cannot learn from: shorter than MIN_SECONDS, silent or
    holding NaN (each file is decoded once). A warning says how many were left out, with examples, and
    which speakers lost every file."""
    kept, dropped = [], []
    for utterance in utterances:
        try:
            load_audio(utterance.path, min_duration=MIN_SECONDS)
        except AudioError as error:
            dropped.append((utterance, str(error)))
        else:
            kept.append(utterance)
    if dropped:
        lost = sorted({u.spk_id for u, _ in dropped} - {u.spk_id for u in kept})
        warnings.warn(f"{source}: left out {len(dropped)} of {len(utterances)} audio files that fine-tuning cannot "
                      f"learn from (e.g. {'; '.join(reason for _, reason in dropped[:2])})"
                      + (f"; no usable file left for speaker(s) {', '.join(lost[:10])}, left out" if lost else ""),
                      stacklevel=3)
    return kept


def _record_sources(path: Path, model: str | Path, data: str | Path, dev: str | Path | None,
                    resume: bool) -> None:
    """Write what a run fine-tunes (at its start) or check that ``--resume`` names the same (ConfigError)."""
    given = {name: None if value is None else str(value) if is_hub_id(value) else str(Path(value).resolve())
             for name, value in (("model", model), ("data", data), ("dev", dev))}
    if not resume:
        path.write_text(json.dumps(given, indent=2) + "\n")
        return
    if not path.is_file():  # a run started before the sources were recorded
        return
    recorded = json.loads(path.read_text())
    for name, value in given.items():
        if recorded.get(name) != value and (name != "dev" or value is not None):
            raise ConfigError(f"--resume: the run in {path.parent.parent} fine-tunes --model {recorded['model']} on "
                              f"--data {recorded['data']}" + (f" (--dev {recorded['dev']})" if recorded.get("dev")
                                                               else "")
                              + f", not --{name} {value}; resume with the same ones, or choose another --out")


def prepare_finetune_data(data: str | Path, out: Path, config: FinetuneConfig,
                          dev: str | Path | None = None) -> dict[str, Path]:
    """Write ``out/{train,dev}.jsonl`` and ``out/dev_trials.txt``; returns their paths by name.

    ``data`` and ``dev`` are read by :func:`speakertrip.data.items.read_items`: an audio folder in the VoxCeleb
    layout (a file's speaker is its first folder under it) or a manifest.
    """
    utterances = usable_utterances(_utterances(data), data)
    if dev is not None:
        dev_set = usable_utterances(_utterances(dev), dev)
        train, _ = split_by_speakers(utterances, {u.spk_id for u in dev_set})  # a dev speaker never trains
    else:
        train, dev_set = hold_out_speakers(utterances, config.dev_speakers, config.seed)
    train_speakers = len({u.spk_id for u in train})
    if train_speakers < 2:
        raise ConfigError(f"{data}: {train_speakers} training speaker(s) left after holding out the dev set; "
                          "a triplet needs at least 2")
    if config.source:
        train += _source_utterances(config.source, config.source_speakers or train_speakers, config.seed)
    return {"train": write_manifest(train, out / "train.jsonl"), "dev": write_manifest(dev_set, out / "dev.jsonl"),
            "dev_trials": write_trials(make_trials(dev_set, config.max_dev_trials, config.seed),
                                       out / "dev_trials.txt")}


def train_config(config: FinetuneConfig, out: Path, initial: Path, model: nn.Module | None = None,
                 data: dict[str, Path] | None = None, speakers: int | None = None) -> TrainConfig:
    """The trainer's config for fine-tuning ``model`` (an ``EmbeddingModel``) on ``data`` (``speakers`` speakers).

    Built by ``TrainConfig.from_dict`` with the same checks as ``speakertrip train``'s config, after the
    options of fine-tuning alone (:func:`check_options`); errors name the option (``--lr``). Without
    ``model`` and ``data`` the defaults stand in: :func:`finetune` calls it so before it loads anything.
    An "epoch" is ``validate_every`` steps: the trainer validates, snapshots and checkpoints at each.
    """
    check_options(config, OPTIONS_SOURCE)
    paths = {name: str(path) for name, path in (data or {}).items()}
    values: dict[str, Any] = {
        "data": {"train": paths.get("train", ""), "dev": paths.get("dev"), "dev_trials": paths.get("dev_trials"),
                 "crop_seconds": config.crop_seconds, "workers": config.workers,
                 "batches_per_epoch": config.validate_every},
        "model": {"init_from": str(initial), "interpolation": config.interpolation},
        "loss": {"kind": "multi_positive", "p": min(config.speakers_per_batch, speakers or config.speakers_per_batch),
                 "k": config.utterances_per_speaker,
                 "options": {"margin": config.margin, "hardest_negatives": config.hardest_negatives}},
        "optim": {"name": "adamw", "lr": config.lr, "weight_decay": config.weight_decay},
        "schedule": {"kind": "cosine", "warmup_steps": config.warmup, "min_lr": config.min_lr},
        "train": {"exp_dir": str(out), "epochs": 1, "steps": config.steps, "seed": config.seed,
                  "device": config.device, "validate_every": 0, "checkpoint_every": 0,
                  "average_last": config.average_last + config.patience, "progress": config.progress,
                  "log_every": min(10, config.validate_every)}}
    if model is not None:
        values["features"] = plain_data(model.feature_config)
        values["model"].update(encoder=model.encoder_name, options=dict(model.encoder_options))
    names = {key: option_name(option) for option, key in TRAIN_KEYS.items()}
    return TrainConfig.from_dict(values, OPTIONS_SOURCE, names)


def frame_layers(encoder: nn.Module) -> list[nn.Module]:
    """The encoder's frame-level layers in order (before pooling): ECAPA's blocks, the x-vector's TDNN layers,
    or what the encoder lists itself (``frame_layers()``: GE2E's LSTM layers)."""
    from speechbrain.nnet.CNN import Conv1d

    if hasattr(encoder, "frame_layers"):
        return list(encoder.frame_layers())
    if hasattr(encoder, "mfa"):  # ECAPA-TDNN: TDNN block, 3 SE-Res2Net blocks, then the MFA layer
        return [*encoder.blocks, encoder.mfa]
    layers: list[nn.ModuleList] = []
    for block in encoder.blocks:  # x-vector: (conv, activation, batch norm) per layer, then pooling
        if isinstance(block, Conv1d):
            layers.append(nn.ModuleList())
        elif not layers:
            break
        if not block.__class__.__name__.endswith("Pooling"):
            layers[-1].append(block)
        else:
            break
    return list(layers)


def freeze_layers(encoder: nn.Module, count: int) -> tuple[int, list[nn.Module]]:
    """Freeze the weights of the first ``count`` frame-level layers; returns the parameters frozen and the
    layers' BatchNorm modules (to keep in inference mode: their statistics stay the pretrained model's)."""
    layers = frame_layers(encoder)
    if count > len(layers):
        raise ConfigError(f"freeze_layers={count}, but the encoder has {len(layers)} frame-level layers")
    frozen = 0
    for layer in layers[:count]:
        for parameter in layer.parameters():
            parameter.requires_grad_(False)
            frozen += parameter.numel()
    return frozen, [module for layer in layers[:count] for module in batch_norms(layer)]


class FinetuneTrainer(Trainer):
    """The trainer, plus frozen early layers or BatchNorm statistics, a stop when the dev EER has not improved
    for ``patience`` validations (an equal EER counts as improved), and an average of the snapshots up to the
    best validation. With ``source_statistics``, BatchNorm statistics are re-estimated on source crops at each
    validation (training then goes on with them, frozen by default) and once more in the final model."""

    def __init__(self, train: TrainConfig, options: FinetuneConfig, *args: Any, **kwargs: Any):
        self.options = options
        super().__init__(train, *args, **kwargs)
        if options.source_statistics:
            self.batchnorm_data = read_manifest(options.source)

    def prepare_model(self) -> None:
        """Freeze the first layers before DDP wraps the model (DDP would wait for their gradients)."""
        _, self.fixed_norms = freeze_layers(self.model.encoder, self.options.freeze_layers)
        if self.options.freeze_statistics:
            self.fixed_norms = batch_norms(self.model)

    def set_train_mode(self) -> None:
        super().set_train_mode()
        for norm in self.fixed_norms:  # normalise with the pretrained statistics, and leave them as they are
            norm.eval()

    def stop_if_stale(self) -> None:
        best = self.best.get("step")
        if best is not None and self.step - best >= self.options.patience * self.options.validate_every:
            self.total_steps = self.step  # the loop ends here; finish() averages up to the best step

    def validate(self) -> None:
        if self.batchnorm_data:  # train on, validate and snapshot with the statistics the final model will have
            reestimate_batchnorm(self.model, self.batchnorm_data, self.config.data.crop_seconds,
                                 self.config.features.sample_rate, self.device, seed=self.step)
        super().validate()
        self.stop_if_stale()

    def improves(self, eer: float) -> bool:
        """A tie counts as progress: a small dev set saturates (every rank decides on rank 0's EER)."""
        return eer <= self.best["eer"]

    def load(self, path: Path) -> None:
        super().load(path)
        self.stop_if_stale()

    def finish(self, seconds: float) -> Path:
        if self.dist.is_main and self.best:
            snapshots = list_snapshots(self.checkpoints)
            step = lambda path: int(SNAPSHOT_PATTERN.search(path.name).group(1))  # noqa: E731
            keep = [path for path in snapshots if step(path) <= self.best["step"]][-self.options.average_last:]
            for path in snapshots:
                if path not in keep:
                    path.unlink()
        return super().finish(seconds)


def without_statistics_options(config: FinetuneConfig, model: nn.Module) -> FinetuneConfig:
    """``config`` as it applies to ``model``: a model without BatchNorm (GE2E) has no statistics to freeze or
    re-estimate, so ``freeze_statistics`` and ``source_statistics`` are switched off, with a note saying so."""
    if batch_norms(model) or not (config.freeze_statistics or config.source_statistics):
        return config
    print(f"note: the {getattr(model, 'encoder_name', 'model')} encoder has no BatchNorm layers: the statistics "
          "options (--freeze-statistics, --source-statistics) do not apply"
          + (" (--source data still join training)" if config.source_statistics else ""), flush=True)
    return dataclasses.replace(config, freeze_statistics=False, source_statistics=False)


def _load(model: str | Path) -> nn.Module:
    """``load_model(model)``; a file that cannot be read is an error naming it and why (not a traceback)."""
    from speakertrip.models import load_model

    try:
        return load_model(model)
    except OSError as error:
        raise SpeakertripError(f"{error.filename or model}: cannot read the model: "
                               f"{error.strerror or error}") from None


def finetune(model: str | Path, data: str | Path, out: str | Path, config: FinetuneConfig | None = None,
             dev: str | Path | None = None, resume: bool = False) -> FinetuneResult:
    """Fine-tune ``model`` on the speakers of ``data`` into ``<out>/model``; see the module docstring.

    Parameters
    ----------
    model : an artifact folder, a SpeechBrain hub id or hub-layout folder (anything ``st.load_model`` reads)
    data : a VoxCeleb-layout folder or a manifest of your speakers
    out : the experiment folder (``initial_model/``, ``data/``, ``checkpoints/``, ``model/``, ``finetune.json``)
    dev : a separate dev set (folder or manifest); by default ``config.dev_speakers`` speakers are held out
    resume : continue the run in ``out``
    """
    from speakertrip.models import load_model
    from speakertrip.training.distributed import cleanup_distributed, setup_distributed
    from speakertrip.evaluation.recording import validate

    config = config or FinetuneConfig()
    out = Path(out)
    initial, data_dir = out / "initial_model", out / "data"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a new folder (or the folder of a run to --resume)")
    train_config(config, out, initial)  # every option checked before anything is loaded, read or written
    if resume:
        if not (initial / "config.yaml").is_file() or not (data_dir / "dev_trials.txt").is_file():
            raise ConfigError(f"--resume: {out} holds no fine-tuning run (initial_model/ and data/ are missing)")
        _record_sources(data_dir / SOURCES_FILE, model, data, dev, resume=True)
        start = load_model(initial)
        paths = {name: data_dir / file for name, file in
                 (("train", "train.jsonl"), ("dev", "dev.jsonl"), ("dev_trials", "dev_trials.txt"))}
    else:
        if (out / "checkpoints" / "last.pt").is_file():
            raise ConfigError(f"{out} already holds a run (checkpoints/last.pt): pass --resume to continue it, "
                              "or choose another --out")
        start = _load(model)
        paths = prepare_finetune_data(data, data_dir, config, dev)
        _record_sources(data_dir / SOURCES_FILE, model, data, dev, resume=False)
        start.save(initial)
    config = without_statistics_options(config, start)
    train_utts = read_manifest(paths["train"])
    speakers = {u.spk_id for u in train_utts}
    source_speakers = sum(spk.startswith(SOURCE_PREFIX) for spk in speakers)
    dev_utts = read_manifest(paths["dev"])
    distributed, device = setup_distributed(config.device)
    try:
        start.to(device)
        before = validate(start, dev_utts, paths["dev_trials"], device=device)["eer"]
        start.to("cpu")
        train = train_config(config, out, initial, start, paths, len(speakers))
        trainer = FinetuneTrainer(train, config, distributed, device, resume)
        trainer.run()
    finally:
        cleanup_distributed()
    after = load_model(out / "model").evaluation
    result = FinetuneResult(out, out / "model", before, float(after.get("eer", float("nan"))),
                            int(trainer.best.get("step", trainer.step)), trainer.step,
                            len(speakers) - source_speakers, len({u.spk_id for u in dev_utts}), source_speakers)
    (out / SUMMARY_FILE).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return result
