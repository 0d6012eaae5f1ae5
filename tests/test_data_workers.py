"""data.workers above the cores this process may use is lowered to them, with one line saying so."""

from __future__ import annotations

import os

import pytest
import torch

from speakertrip.corpora.voxceleb import prepare_voxceleb
from speakertrip.testing import make_voxceleb_tree
from speakertrip.training.config import load_config
from speakertrip.training.distributed import Distributed
from speakertrip.training.trainer import Trainer


@pytest.mark.parametrize("asked,cores,used", [(8, 2, 2), (1, 2, 1), (0, 1, 0)])
def test_workers_never_exceed_the_cores(tmp_path, monkeypatch, capsys, asked, cores, used):
    tree = make_voxceleb_tree(tmp_path / "vox", num_speakers=2, sessions=1, utterances_per_session=2,
                              duration=(0.3, 0.4), trial_list=False)
    manifest = prepare_voxceleb(tree, tmp_path / "data", workers=1, progress=False)["utts"]
    config = load_config(None, [f"--data.train={manifest}", f"--data.workers={asked}", "--loss.p=2", "--loss.k=2",
                                "--features.n_mels=24", "--model.options={channels: 16, embedding_dim: 8}",
                                f"--train.exp_dir={tmp_path / 'exp'}"])
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    trainer = Trainer(config, Distributed(), torch.device("cpu"))
    assert trainer.loader.num_workers == used
    said = f"data.workers {asked} lowered to {used}: the cores this process may use\n" if used < asked else ""
    assert capsys.readouterr().out == said
