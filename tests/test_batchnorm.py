"""BatchNorm statistics re-estimated on audio crops, against the moments computed by hand."""

from __future__ import annotations

import pytest
import torch

import speakertrip as st
from speakertrip.data.manifest import read_manifest
from speakertrip.testing import make_voxceleb_tree, tiny_model_artifact
from speakertrip.training.batchnorm import batch_norms, crop_batches, reestimate_batchnorm


@pytest.fixture(scope="module")
def utterances(tmp_path_factory):
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    root = tmp_path_factory.mktemp("bn")
    tree = make_voxceleb_tree(root / "vox", num_speakers=3, sessions=2, utterances_per_session=2,
                              duration=(0.3, 1.0), trial_list=False)
    with pytest.warns(UserWarning, match="no train/test split"):
        return read_manifest(prepare_voxceleb(tree, root / "data", workers=1, progress=False)["utts"])


def test_crops_are_reproducible_and_full_length(utterances):
    first = list(crop_batches(utterances, 0.5, 16000, batch_size=5, seed=3))
    again = list(crop_batches(utterances, 0.5, 16000, batch_size=5, seed=3))
    assert [len(batch) for batch in first] == [5, 5, 2] and all(batch.shape[1] == 8000 for batch in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], next(crop_batches(utterances, 0.5, 16000, batch_size=5, seed=4)))
    assert all(batch.abs().amax(dim=1).min() > 0 for batch in first)  # short files repeated, not zero-padded


def test_statistics_are_the_moments_of_the_crops(utterances, tmp_path):
    model = st.load_model(tiny_model_artifact(tmp_path / "model"))
    norms = batch_norms(model)
    weights = {name: value.clone() for name, value in model.named_parameters()}
    for norm in norms:
        norm.running_mean.fill_(5.0)
    seen = []
    hook = norms[0].register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].detach()))
    crops = reestimate_batchnorm(model, utterances, 0.5, 16000, limit=10, seed=1)
    hook.remove()
    assert crops == 10 and not model.training
    activations = torch.cat(seen)  # the first BatchNorm's input does not depend on any statistics
    channels = activations.transpose(0, 1).reshape(activations.shape[1], -1)
    torch.testing.assert_close(norms[0].running_mean, channels.mean(dim=1), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(norms[0].running_var, channels.var(dim=1), rtol=1e-3, atol=1e-5)
    assert all((norm.running_mean != 5.0).all() for norm in norms)
    assert all(torch.equal(value, weights[name]) for name, value in model.named_parameters())
