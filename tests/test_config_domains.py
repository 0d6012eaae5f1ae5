"""One table of ranges (DOMAINS) for `speakertrip train` and `speakertrip finetune`; optimiser keys that the
chosen optimiser does not read are refused instead of ignored."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from speakertrip.cli import main
from speakertrip.errors import ConfigError
from speakertrip.testing import make_voxceleb_tree
from speakertrip.training.config import TrainConfig, load_config
from speakertrip.training.domains import DOMAINS
from speakertrip.training.finetune import finetune
from speakertrip.training.finetune_config import FinetuneConfig
from speakertrip.training.schedule import build_optimizer


def test_every_domain_names_a_real_config_field():
    """A key removed from a config dataclass must leave DOMAINS too (``data.dev_max_seconds`` once stayed)."""
    sections = {"finetune": FinetuneConfig}
    for section in dataclasses.fields(TrainConfig):
        kind = typing.get_type_hints(TrainConfig)[section.name]
        sections[section.name] = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
    fields = {f"{name}.{item.name}" for name, cls in sections.items() for item in dataclasses.fields(cls)}
    assert sorted(set(DOMAINS) - fields) == []


# ---- optimiser keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, key, optimiser", [
    (["--optim.name=adam", "--optim.momentum=0.5"], "optim.momentum", "adam"),
    (["--optim.momentum=0.9"], "optim.momentum", "adamw"),  # the default optimiser
    (["--optim.name=adamw", "--optim.nesterov=false"], "optim.nesterov", "adamw"),
    (["--optim.name=sgd", "--optim.betas=[0.9, 0.99]"], "optim.betas", "sgd"),
])
def test_a_key_the_optimiser_does_not_read_is_refused(overrides, key, optimiser):
    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    message = str(error.value)
    assert f"key {key!r}" in message and f"optimiser {optimiser!r}" in message and "\n" not in message


def test_inapplicable_optimiser_key_in_a_file_names_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim: {name: sgd, lr: 0.1, betas: [0.9, 0.99]}\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'optim.betas' .*optimiser 'sgd'"):
        load_config(path)


def test_optimiser_defaults_and_given_keys_reach_the_optimiser():
    parameters = [torch.nn.Parameter(torch.zeros(2))]
    sgd = build_optimizer(parameters, load_config(None, ["--optim.name=sgd"]).optim)
    assert sgd.defaults["momentum"] == 0.9 and sgd.defaults["nesterov"] is True
    sgd = build_optimizer(parameters, load_config(None, ["--optim.name=sgd", "--optim.momentum=0.5",
                                                         "--optim.nesterov=false"]).optim)
    assert sgd.defaults["momentum"] == 0.5 and sgd.defaults["nesterov"] is False
    for name in ("adam", "adamw"):
        adam = build_optimizer(parameters, load_config(None, [f"--optim.name={name}"]).optim)
        assert adam.defaults["betas"] == (0.9, 0.999)
        given = load_config(None, [f"--optim.name={name}", "--optim.betas=[0.8, 0.9]"])
        adam = build_optimizer(parameters, given.optim)
        assert adam.defaults["betas"] == (0.8, 0.9)


# ---- finetune goes through the same checks, before any work -----------------------------------------
@pytest.fixture(scope="module")
def speakers(tmp_path_factory):
    return make_voxceleb_tree(tmp_path_factory.mktemp("domains") / "corpus", num_speakers=3, sessions=1,
                              utterances_per_session=2, duration=(0.3, 0.4), trial_list=False)


@pytest.mark.parametrize("options, message", [
    (["--lr", "5e-6"], "--min-lr (1e-05) must not exceed --lr (5e-06)"),
    (["--lr", "-1"], "--lr must be > 0, got -1.0"),
    (["--crop-seconds", "-1"], "--crop-seconds must be > 0, got -1.0"),
    (["--steps", "0"], "--steps must be >= 1, got 0"),
    (["--validate-every", "0"], "--validate-every must be >= 1, got 0"),
    (["--interpolation", "1.5"], "--interpolation must be in (0, 1], got 1.5"),
    (["--patience", "0"], "--patience must be >= 1, got 0"),
    (["--average-last", "0"], "--average-last must be >= 1, got 0"),
    (["--dev-speakers", "0"], "--dev-speakers must be > 0, got 0.0"),
    (["--freeze-layers", "-1"], "--freeze-layers must be >= 0, got -1"),
    (["--source-statistics"], "--source-statistics"),
])
def test_finetune_refuses_bad_options_before_any_work(speakers, tmp_path, capsys, options, message):
    """A one-line error, exit 2, before the model is loaded (it does not even exist) or anything is written."""
    out = tmp_path / "ft"
    status = main(["finetune", "--model", str(tmp_path / "no_model"), "--data", str(speakers), "--out", str(out),
                   *options])
    captured = capsys.readouterr()
    assert status == 2 and not captured.out
    assert captured.err.startswith("speakertrip finetune: error: ") and captured.err.count("\n") == 1
    assert message in captured.err
    assert not out.exists()


def test_finetune_python_api_checks_the_options_first(speakers, tmp_path):
    with pytest.raises(ConfigError, match=r"--min-lr \(0.001\) must not exceed --lr \(0.0002\)"):
        finetune(tmp_path / "no_model", speakers, tmp_path / "ft", FinetuneConfig(min_lr=1e-3))
    with pytest.raises(ConfigError, match=r"--source-speakers must be >= 1, got 0"):
        finetune(tmp_path / "no_model", speakers, tmp_path / "ft", FinetuneConfig(source="s.jsonl", source_speakers=0))
    assert not (tmp_path / "ft").exists()
