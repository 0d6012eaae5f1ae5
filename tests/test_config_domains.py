"""Optimiser keys that the chosen optimiser does not read are refused instead of ignored."""

from __future__ import annotations

import pytest
import torch

from speakertrip.errors import ConfigError
from speakertrip.training.config import load_config
from speakertrip.training.schedule import build_optimizer


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
