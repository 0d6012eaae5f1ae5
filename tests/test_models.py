"""Encoders, EmbeddingModel, artifacts and SpeechBrain checkpoints."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import yaml

from speakertrip.errors import ConfigError, FormatError, SpeakertripError
from speakertrip.models import EmbeddingModel, load_model, load_speechbrain_checkpoint
from speakertrip.features import FeatureConfig
from speakertrip.models import ENCODERS, build_encoder
from speakertrip.models.tdnn import MaskedStatisticsPooling
from speakertrip.testing import randomise_batch_norms

SMALL = {"ecapa": {"channels": 32, "embedding_dim": 24, "attention_channels": 16, "se_channels": 16},
         "tdnn": {"channels": 32, "stats_channels": 48, "embedding_dim": 24}}


def small_model(name: str = "ecapa", n_mels: int = 24, **evaluation) -> EmbeddingModel:
    torch.manual_seed(0)
    return EmbeddingModel(FeatureConfig(n_mels=n_mels), name, SMALL[name], evaluation).eval()


def test_registry_names_and_errors():
    assert ENCODERS.names() == ["ecapa", "ge2e", "tdnn"]
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnet'; valid names: ecapa, ge2e, tdnn"):
        build_encoder("resnet", 40)
    with pytest.raises(ConfigError, match=r"encoder .ecapa.: unknown option .chanels.; valid options: channels, "):
        build_encoder("ecapa", 40, {"chanels": 64})
    with pytest.raises(ConfigError, match=r"encoder 'tdnn': key 'channels' must be int, got str '64'"):
        build_encoder("tdnn", 40, {"channels": "64"})
    with pytest.raises(ConfigError, match=r"encoder 'tdnn': key 'channels' must be int, got bool"):
        build_encoder("tdnn", 40, {"channels": True})
    with pytest.raises(ConfigError, match=r"multiple of res2net_scale"):
        build_encoder("ecapa", 40, {"channels": 36})
    assert build_encoder("ecapa", 40, {"dropout": 0}).embedding_dim == 192  # int accepted for float


@pytest.mark.parametrize("name,channels,parameters", [("ecapa", 512, 6.19e6), ("ecapa", 1024, 20.77e6),
                                                      ("tdnn", 512, 4.38e6)])
def test_published_sizes(name, channels, parameters):
    encoder = build_encoder(name, 80, {"channels": channels})
    count = sum(p.numel() for p in encoder.parameters())
    assert abs(count - parameters) / parameters < 0.01
    assert encoder.embedding_dim == {"ecapa": 192, "tdnn": 512}[name]


@pytest.mark.parametrize("name", ["ecapa", "tdnn"])
def test_embeddings_unit_norm_and_padding_ignored(name):
    model = small_model(name)
    waves = torch.randn(3, 8000) * 0.1
    lengths = torch.tensor([8000, 5000, 3000])
    garbage = waves.clone()
    for row, length in enumerate(lengths):
        waves[row, length:] = 0
        garbage[row, length:] = torch.randn(8000 - length)  # must not leak into the embedding
    with torch.no_grad():
        clean, noisy = model(waves, lengths), model(garbage, lengths)
    assert clean.shape == (3, 24) and clean.dtype == torch.float32
    torch.testing.assert_close(clean.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(clean, noisy, rtol=0, atol=1e-6)
    # a row alone, unpadded, gets the embedding it had in the batch (the full-length row)
    with torch.no_grad():
        torch.testing.assert_close(model(waves[:1]), clean[:1], rtol=1e-4, atol=1e-5)


def test_masked_statistics_pooling_against_loop_and_speechbrain():
    from speechbrain.nnet.pooling import StatisticsPooling

    x = torch.randn(4, 30, 5, dtype=torch.float64)
    lengths = torch.tensor([30, 17, 2, 9])
    pooled = MaskedStatisticsPooling(eps=0.0)(x, lengths)
    for row, length in enumerate(lengths):
        valid = x[row, :length]
        torch.testing.assert_close(pooled[row, 0], torch.cat([valid.mean(0), valid.std(0)]))
    reference = StatisticsPooling()(x.float(), lengths.float() / 30)  # adds noise up to 9e-5 to the mean
    torch.testing.assert_close(MaskedStatisticsPooling()(x.float(), lengths), reference, rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", ["ecapa", "tdnn"])
def test_artifact_round_trip(tmp_path, name):
    model = small_model(name, eer=0.05, eer_threshold=np.float32(0.61), **{"min_dcf_0.01": 0.3})
    waves = torch.randn(2, 6000) * 0.1
    with torch.no_grad():
        before = model(waves, torch.tensor([6000, 4000]))
    model.save(tmp_path / "model")
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["config.yaml", "model.safetensors"]
    loaded = load_model(tmp_path / "model")
    assert not loaded.training
    with torch.no_grad():
        after = loaded(waves, torch.tensor([6000, 4000]))
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert loaded.config == model.config | {"evaluation": {"eer": 0.05, "eer_threshold": pytest.approx(0.61),
                                                            "min_dcf_0.01": 0.3}}
    assert loaded.threshold == pytest.approx(0.61) and loaded.sample_rate == 16000
    assert loaded.identity == model.identity
    raw = (tmp_path / "model" / "model.safetensors").read_bytes()  # safetensors: u64 header size, JSON, data
    header = yaml.safe_load(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert set(header) - {"__metadata__"} == set(model.state_dict())


def test_identity_tracks_weights_and_config_not_evaluation():
    first, second = small_model("ecapa"), small_model("ecapa", eer=0.1)
    assert first.identity == second.identity and len(first.identity) == 32
    with torch.no_grad():
        second.encoder.fc.conv.bias[0] += 1e-3  # in place: the cached digest must notice
    assert second.identity != first.identity
    other_features = EmbeddingModel(FeatureConfig(n_mels=24, mean_norm=False), "ecapa", SMALL["ecapa"])
    other_features.load_state_dict(first.state_dict())
    assert other_features.identity != first.identity


def test_load_model_errors(tmp_path):
    with pytest.raises(SpeakertripError, match=r"no model artifact here \(expected config.yaml"):
        load_model(tmp_path)
    model = small_model("tdnn")
    directory = model.save(tmp_path / "m")
    config = yaml.safe_load((directory / "config.yaml").read_text())
    config["encoder"]["name"] = "resnet"
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(FormatError, match=r"config.yaml: unknown encoder 'resnet'; valid names: ecapa, ge2e, tdnn"):
        load_model(directory)
    config["encoder"] = {"name": "tdnn", "options": SMALL["tdnn"] | {"embedding_dim": 16}}
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(FormatError, match=r"model.safetensors: weights do not match.*wrong shape: encoder.blocks.16"):
        load_model(directory)
    (directory / "config.yaml").write_text("format: something-else\n")
    with pytest.raises(FormatError, match=r"not a speakertrip model config"):
        load_model(directory)
    (directory / "config.yaml").write_text("features: [unclosed\n")
    with pytest.raises(FormatError, match=r"config.yaml: invalid YAML"):
        load_model(directory)


def _speechbrain_reference(waves: torch.Tensor, ecapa) -> torch.Tensor:
    from speechbrain.lobes.features import Fbank
    from speechbrain.processing.features import InputNormalization

    features = Fbank(n_mels=80)(waves)
    features = InputNormalization(norm_type="sentence", std_norm=False)(features, torch.ones(len(waves)))
    return torch.nn.functional.normalize(ecapa(features).squeeze(1), dim=-1)


def test_speechbrain_ecapa_checkpoint_loads(tmp_path):
    from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

    torch.manual_seed(1)
    # the encoder of spkrec-ecapa-voxceleb, saved the way SpeechBrain's checkpointer saves it
    ecapa = ECAPA_TDNN(80, channels=[1024, 1024, 1024, 1024, 3072], lin_neurons=192).eval()
    randomise_batch_norms(ecapa, seed=1)  # non-trivial BatchNorm statistics, as in a trained model
    torch.save(ecapa.state_dict(), tmp_path / "embedding_model.ckpt")
    model = load_speechbrain_checkpoint(tmp_path / "embedding_model.ckpt").eval()
    assert model.encoder_name == "ecapa" and model.embedding_dim == 192
    assert model.encoder_options == {"channels": 1024, "embedding_dim": 192, "attention_channels": 128,
                                     "se_channels": 128, "res2net_scale": 8, "global_context": True}
    assert model.feature_config.mode == "speechbrain" and model.feature_config.n_mels == 80
    waves = torch.randn(2, 12000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(model(waves), _speechbrain_reference(waves, ecapa), rtol=1e-4, atol=1e-4)
    model.save(tmp_path / "fine_tune_start")  # and it becomes an ordinary artifact
    assert load_model(tmp_path / "fine_tune_start").identity == model.identity


def test_speechbrain_checkpoint_errors(tmp_path):
    torch.save({"linear.weight": torch.zeros(2, 2)}, tmp_path / "other.ckpt")
    with pytest.raises(FormatError, match=r"other.ckpt: not a SpeechBrain ECAPA_TDNN or Xvector state dict"):
        load_speechbrain_checkpoint(tmp_path / "other.ckpt")
    (tmp_path / "evil.ckpt").write_bytes(pickle.dumps({"x": object()}))
    with pytest.raises(FormatError, match=r"evil.ckpt: not a state dict: the file is damaged or not a torch file"):
        load_speechbrain_checkpoint(tmp_path / "evil.ckpt")
    with pytest.raises(SpeakertripError, match=r"missing.ckpt: no such checkpoint file"):
        load_speechbrain_checkpoint(tmp_path / "missing.ckpt")
    tdnn = build_encoder("tdnn", 24, SMALL["tdnn"])
    torch.save(tdnn.state_dict(), tmp_path / "xvector.ckpt")
    with pytest.raises(ConfigError, match=r"expects 24 mel bins, the feature config has 80"):
        load_speechbrain_checkpoint(tmp_path / "xvector.ckpt", FeatureConfig())
    assert load_speechbrain_checkpoint(tmp_path / "xvector.ckpt").encoder_options == SMALL["tdnn"]
