"""Command-line overrides: a value replaces what its path names, ``+=`` merges, ``--section=null`` switches off."""

from __future__ import annotations

import pytest

from speakertrip.cli import build_parser
from speakertrip.errors import ConfigError
from speakertrip.training.config import Override, apply_overrides, load_config, parse_overrides

RECIPE = """
data: {train: train.jsonl, workers: 8}
augment:
  musan: data/musan
  rirs: data/RIRS_NOISES
  weights: {none: 1.0, reverb: 1.0, noise: 1.0, music: 1.0, babble: 1.0}
model: {encoder: ecapa, options: {channels: 512, embedding_dim: 192}}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(RECIPE)
    return path


def test_section_null_switches_augmentation_off(recipe):
    assert load_config(recipe).augment.rirs == "data/RIRS_NOISES"
    assert load_config(recipe, ["--augment=null"]).augment is None
    # switched off, then back on with only the keys given after it
    config = load_config(recipe, ["--augment=null", "--augment.weights={none: 1.0}"])
    assert config.augment.weights == {"none": 1.0} and config.augment.musan is None and config.augment.rirs is None


def test_a_mapping_replaces_the_files_mapping(recipe):
    """The issue's case: one override gives clean-only training, no RIR folder asked for."""
    config = load_config(recipe, ["--augment.weights={none: 1.0}"])
    assert config.augment.weights == {"none": 1.0}
    config = load_config(recipe, ["--model.options={channels: 64}"])
    assert config.model.options == {"channels": 64}


def test_merge_is_asked_for_with_plus_equals(recipe):
    config = load_config(recipe, ["--model.options+={channels: 1024}", "--augment.weights+={reverb: 0}"])
    assert config.model.options == {"channels": 1024, "embedding_dim": 192}
    assert config.augment.weights == {"none": 1.0, "reverb": 0, "noise": 1.0, "music": 1.0, "babble": 1.0}
    # a dotted path keeps the mapping's other keys, in the file and in the defaults alike
    assert load_config(recipe, ["--model.options.channels=64"]).model.options == {"channels": 64, "embedding_dim": 192}
    assert load_config(None, ["--loss.options.margin=0.2"]).loss.options == {"margin": 0.2, "hardest_negatives": 4}
    # merging into nothing sets the mapping
    assert load_config(None, ["--model.options+={channels: 32}"]).model.options == {"channels": 32}


def test_overrides_apply_in_order_and_leave_their_input_alone():
    values = {"model": {"options": {"channels": 512}}}
    overrides = parse_overrides(["--model.options.channels=64", "--model.options={embedding_dim: 8}",
                                 "--model.options+={channels: 16}"])
    assert apply_overrides(values, overrides) == {"model": {"options": {"embedding_dim": 8, "channels": 16}}}
    assert values == {"model": {"options": {"channels": 512}}}
    assert overrides[2] == Override(("model", "options"), {"channels": 16}, True, "--model.options+={channels: 16}")


@pytest.mark.parametrize("override,message", [
    ("--data=null", r"'--data=null': section 'data' cannot be switched off; optional sections: augment"),
    ("--loss.options+=0.3", r"\+= merges a mapping \(\{key: value, ...\}\), got float 0.3"),
    ("--optim.lr.peak=1", r"'--optim.lr.peak=1': optim.lr is 0.002, not a section"),
    ("--model..encoder=tdnn", r"is not of the form --section.key=value, --section=null"),
    ("--augment", r"'--augment' is not of the form"),
    ("--augment=fast", r"section 'augment' must be a mapping, got str"),
])
def test_bad_overrides_fail_naming_the_override(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_train_help_documents_replace_merge_and_null(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    text = capsys.readouterr().out
    assert "REPLACES the file's mapping" in text and "--section.key+={...}" in text and "--augment=null" in text
