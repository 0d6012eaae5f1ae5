"""Training config (YAML → dataclasses, overrides), schedules, checkpoints, averaging, the metrics log."""

from __future__ import annotations

import math
import pickle

import pytest
import torch

from speakertrip.errors import ConfigError, FormatError, SpeakertripError
from speakertrip.training.checkpoint import (average_state_dicts, interpolate_state_dicts, load_checkpoint,
                                            save_checkpoint)
from speakertrip.training.config import ScheduleConfig, TrainConfig, load_config, save_config
from speakertrip.training.metrics_log import MetricsLog
from speakertrip.training.schedule import learning_rate

YAML = """
data: {train: train.jsonl, crop_seconds: 1.5}
model: {encoder: ecapa, options: {channels: 64, embedding_dim: 128}}
optim: {lr: 1e-3}
train: {epochs: 3}
"""


@pytest.fixture
def config_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(YAML)
    return path


def test_file_then_overrides(config_file):
    config = load_config(config_file, ["--train.epochs=5", "--model.options.channels=32", "--data.dev=null",
                                       "--augment.weights={none: 1.0}", "--optim.betas=[0.8, 0.9]"])
    assert isinstance(config, TrainConfig)
    assert config.train.epochs == 5 and config.data.crop_seconds == 1.5
    assert config.optim.lr == 1e-3  # YAML 1.1 reads "1e-3" as a string: converted for float keys
    assert config.model.options == {"channels": 32, "embedding_dim": 128}  # merged, not replaced
    assert config.augment.weights == {"none": 1.0} and config.optim.betas == [0.8, 0.9]
    assert config.data.dev is None and config.loss.kind == "multi_positive"


def test_resolved_config_round_trip(config_file, tmp_path):
    config = load_config(config_file, ["--augment.weights={none: 1.0}", "--features.n_mels=40"])
    again = load_config(save_config(config, tmp_path / "resolved.yaml"))
    assert again == config and again.to_dict() == config.to_dict()


@pytest.mark.parametrize("override,message", [
    ("--loss.margn=0.2", r"unknown key\(s\) loss.margn; valid keys in loss: kind, p, k, options"),
    ("--trian.epochs=2", r"unknown key\(s\) trian; valid keys: data, features, augment, model"),
    ("--train.epochs=2.5", r"key 'train.epochs' must be int, got float 2.5"),
    ("--train.epochs=true", r"key 'train.epochs' must be int, got bool True"),
    ("--optim.lr=fast", r"key 'optim.lr' must be float, got str 'fast'"),
    ("--data.train=[a, b]", r"key 'data.train' must be str, got list"),
    ("--features.n_mels=x", r"key 'features.n_mels' must be int"),
    ("--features.bogus=1", r"unknown key\(s\) features.bogus; valid keys in features: sample_rate"),
    ("--features.mode=mfcc", r"section 'features': invalid feature config: mode 'mfcc'"),
    ("--optim.name=lamb", r"key 'optim.name' must be one of adam, adamw, sgd, not 'lamb'"),
    ("--model=ecapa", r"section 'model' must be a mapping, got str"),
    ("model.encoder=ecapa", r"override 'model.encoder=ecapa' is not of the form --section.key=value"),
    ("--model.options.channels=[1,", r"the value is not valid YAML"),
])
def test_bad_overrides_name_the_key(config_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, [override])


def test_bad_file_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("loss: {kind: triplet, marginn: 0.3}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key\(s\) loss.marginn"):
        load_config(path)
    path.write_text("loss: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: section 'loss' must be a mapping, got list"):
        load_config(path)
    path.write_text("loss: {kind: [\n")
    with pytest.raises(FormatError, match=r"bad.yaml: invalid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"missing.yaml: no such config file"):
        load_config(tmp_path / "missing.yaml")


def test_cosine_schedule_against_formula():
    config = ScheduleConfig(kind="cosine", warmup_steps=0.1, min_lr=1e-4)
    total, peak = 200, 2e-3
    for step in range(total):
        if step < 20:
            expected = peak * (step + 1) / 20
        else:
            expected = 1e-4 + (peak - 1e-4) * 0.5 * (1 + math.cos(math.pi * (step - 20) / (total - 20 - 1)))
        assert learning_rate(step, total, peak, config) == pytest.approx(expected)
    assert learning_rate(total - 1, total, peak, config) == pytest.approx(1e-4)


def test_cyclic_and_constant_schedules():
    cyclic = ScheduleConfig(kind="cyclic", warmup_steps=0, min_lr=0.0, cycle_steps=10, cycle_decay=0.5)
    values = [learning_rate(step, 100, 1.0, cyclic) for step in range(30)]
    assert values[:11] == pytest.approx([0, .2, .4, .6, .8, 1, .8, .6, .4, .2, 0])
    assert max(values[10:20]) == pytest.approx(0.5) and max(values[20:30]) == pytest.approx(0.25)
    constant = ScheduleConfig(kind="constant", warmup_steps=4)
    assert [learning_rate(s, 50, 1.0, constant) for s in (0, 3, 4, 49)] == [0.25, 1.0, 1.0, 1.0]


def test_average_state_dicts_against_loop():
    states = [{"w": torch.randn(3, 2), "bn.num_batches_tracked": torch.tensor(i)} for i in range(4)]
    averaged = average_state_dicts(states)
    expected = torch.zeros(3, 2)
    for state in states:
        expected += state["w"] / 4
    torch.testing.assert_close(averaged["w"], expected)
    assert averaged["bn.num_batches_tracked"].item() == 3


def test_checkpoint_atomic_and_weights_only(tmp_path):
    state = {"model": {"w": torch.ones(2)}, "step": 3, "rng": {"torch": torch.get_rng_state()}}
    path = save_checkpoint(state, tmp_path / "ckpt" / "last.pt")
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary left behind
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.ones(2))
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"model": object()}))
    with pytest.raises(FormatError, match=r"evil.pt: not a speakertrip checkpoint: the file is damaged or not a torch file"):
        load_checkpoint(evil)


def test_metrics_log_resume_drops_repeated_steps(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in (2, 4, 6):
        log.write(kind="step", step=step, loss=1.0 / step)
    resumed = MetricsLog(tmp_path / "metrics.jsonl", resume_step=4)
    resumed.write(kind="step", step=6, loss=0.5)
    assert [(r["step"], r["loss"]) for r in resumed.read()] == [(2, 0.5), (4, 0.25), (6, 0.5)]


@pytest.mark.parametrize("name", ["ecapa_triplet", "ecapa_batchhard", "tdnn_triplet", "ecapa_aam", "ecapa_hybrid"])
def test_recipe_configs_load_and_build(name):
    from pathlib import Path

    from speakertrip.losses import build_loss
    from speakertrip.models import build_encoder

    path = Path(__file__).resolve().parents[1] / "recipes" / "voxceleb" / "conf" / f"{name}.yaml"
    config = load_config(path)
    assert config.train.exp_dir == f"exp/{name}" and config.loss.p * config.loss.k == 256
    encoder = build_encoder(config.model.encoder, config.features.n_mels, config.model.options)
    build_loss(config.loss.kind, embedding_dim=encoder.embedding_dim, num_classes=5994, **config.loss.options)


def test_interpolate_state_dicts_against_a_loop():
    generator = torch.Generator().manual_seed(3)
    start = {"w": torch.randn(4, 3, generator=generator), "half": torch.randn(5, generator=generator).half(),
             "count": torch.tensor(7)}
    end = {"w": torch.randn(4, 3, generator=generator), "half": torch.randn(5, generator=generator).half(),
           "count": torch.tensor(11)}
    mixed = interpolate_state_dicts(start, end, 0.3)
    for row in range(4):
        for column in range(3):
            a, b = float(start["w"][row, column]), float(end["w"][row, column])
            assert float(mixed["w"][row, column]) == pytest.approx(a + 0.3 * (b - a), rel=1e-6, abs=1e-7)
    assert mixed["half"].dtype == torch.float16 and int(mixed["count"]) == 11
    torch.testing.assert_close(interpolate_state_dicts(start, end, 1.0)["w"], end["w"])
    with pytest.raises(SpeakertripError, match=r"different tensors: \['extra'\]"):
        interpolate_state_dicts(start, {**end, "extra": torch.zeros(1)}, 0.5)


def test_interpolation_needs_a_start_and_a_weight_in_range():
    with pytest.raises(ConfigError, match=r"'model.interpolation' \(0.5\) .* set 'model.init_from'"):
        TrainConfig.from_dict({"model": {"interpolation": 0.5}})
    with pytest.raises(ConfigError, match=r"'model.interpolation' must be in \(0, 1\], got 0"):
        TrainConfig.from_dict({"model": {"interpolation": 0, "init_from": "exp/model"}})
    assert TrainConfig.from_dict({"model": {"interpolation": 0.7, "init_from": "m"}}).model.interpolation == 0.7
