"""A NaN-bearing file in the training data: every step it touches is skipped, nothing non-finite is saved."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import soundfile as sf
import torch

from speakertrip.data.manifest import Utterance, read_manifest, write_manifest
from speakertrip.errors import SpeakertripError
from speakertrip.training.averaging import average_snapshots
from speakertrip.training.checkpoint import load_checkpoint, save_checkpoint
from speakertrip.training.config import load_config
from speakertrip.training.guard import NonFiniteTrainingError
from speakertrip.training.trainer import train

TINY = {"channels": 16, "attention_channels": 8, "se_channels": 8, "embedding_dim": 16}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.testing import make_voxceleb_tree

    root = tmp_path_factory.mktemp("nan_corpus")
    tree = make_voxceleb_tree(root / "vox", num_speakers=4, sessions=2, utterances_per_session=2,
                              duration=(0.6, 0.9), seed=5, trial_list=False)
    utterances = read_manifest(prepare_voxceleb(tree, root / "data", workers=1, progress=False)["utts"])
    nan_file = root / "nan.wav"
    sf.write(nan_file, np.full(12000, np.nan, np.float32), 16000, subtype="FLOAT")
    poisoned = [Utterance("id10001/nan/00001.wav", "id10001", str(nan_file), 0.75, 16000, 12000), *utterances]
    return {"clean": write_manifest(utterances, root / "clean.jsonl"),
            "poisoned": write_manifest(poisoned, root / "poisoned.jsonl"),
            "all_nan": write_manifest([Utterance(f"{u.utt_id}", u.spk_id, str(nan_file), 0.75, 16000, 12000)
                                       for u in utterances], root / "all_nan.jsonl"),
            "nan_file": str(nan_file)}


def config_for(manifest, exp_dir, *extra):
    return load_config(None, [f"--data.train={manifest}", "--data.crop_seconds=0.4", "--data.workers=0",
                              "--data.batches_per_epoch=4", "--features.n_mels=24", "--model.encoder=ecapa",
                              f"--model.options={json.dumps(TINY)}", "--loss.p=4", "--loss.k=2",
                              "--loss.options={margin: 0.3, hardest_negatives: 2}", f"--train.exp_dir={exp_dir}",
                              "--train.epochs=2", "--train.log_every=2", "--train.average_last=2",
                              "--train.progress=false", *extra])


def all_finite(state) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_nan_file_skips_its_steps_and_the_model_stays_finite(corpus, tmp_path, capsys, optimizer):
    exp = train(config_for(corpus["poisoned"], tmp_path / "exp", f"--optim.name={optimizer}", "--train.epochs=1"))
    records = [json.loads(line) for line in (exp / "metrics.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r["kind"] == "skipped"]
    assert skipped, "the batches holding the NaN file must be skipped"
    assert all(r["nonfinite_inputs"] == [corpus["nan_file"]] for r in skipped)
    assert sum(r["skipped_steps"] for r in records if r["kind"] == "step") == len(skipped)
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "step")
    assert re.search(rf"^skipped steps +{len(skipped)} ", (exp / "summary.txt").read_text(), re.M)
    for checkpoint in (exp / "checkpoints").glob("*.pt"):
        assert all_finite(load_checkpoint(checkpoint)["model"]), checkpoint
    from speakertrip.models import load_model

    model = load_model(exp / "model")
    assert all_finite(model.state_dict())
    embedding = model.embed(np.random.default_rng(0).standard_normal(8000).astype(np.float32) * 0.1, 16000)
    assert np.isfinite(embedding).all()


def test_skipped_step_changes_no_weight_and_no_batchnorm_statistic(corpus, tmp_path):
    """Training only on NaN crops for fewer steps than the limit: the weights equal the initial ones."""
    config = config_for(corpus["all_nan"], tmp_path / "exp", "--train.epochs=1", "--train.max_bad_steps=100")
    from speakertrip.training.averaging import build_model

    torch.manual_seed(config.train.seed)
    initial = build_model(config).state_dict()
    exp = train(config)
    final = load_checkpoint(exp / "checkpoints" / "last.pt")["model"]
    for key, value in initial.items():
        assert torch.equal(final[f"model.{key}"], value), key


def test_consecutive_bad_steps_stop_the_run_naming_the_file(corpus, tmp_path):
    with pytest.raises(NonFiniteTrainingError, match=r"3 consecutive .* non-finite samples in .*nan\.wav"):
        train(config_for(corpus["all_nan"], tmp_path / "exp", "--train.max_bad_steps=3", "--train.log_every=1"))


def test_nothing_non_finite_is_saved_or_averaged(corpus, tmp_path):
    config = config_for(corpus["clean"], tmp_path / "exp")
    from speakertrip.training.averaging import build_model

    model = build_model(config)
    good = tmp_path / "good.pt"
    save_checkpoint({"model": model.state_dict(), "step": 1}, good)
    before = good.read_bytes()
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(SpeakertripError, match=r"good\.pt: the model of this checkpoint holds NaN"):
        save_checkpoint({"model": model.state_dict(), "step": 2}, good)
    assert good.read_bytes() == before
    with pytest.raises(SpeakertripError, match=r"model.*holds NaN.*nothing written"):
        model.save(tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()
    bad = tmp_path / "bad.pt"
    torch.save({"model": model.state_dict(), "step": 3}, bad)
    with pytest.raises(SpeakertripError, match=r"bad\.pt: snapshot holds NaN"):
        average_snapshots(config, [good, bad])
