import numpy as np
import onnxruntime
import pytest
import torch

from speakertrip.cli import main
from speakertrip.models import EmbeddingModel
from speakertrip.extraction.export import ExportableFrontend, export_onnx
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.testing import tiny_model

LENGTHS = (4000, 16000, 37119)





def waveform(samples, seed=0):
    return 0.1 * torch.randn(1, samples, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", [FeatureConfig(n_mels=24), FeatureConfig.speechbrain(n_mels=24),
                                    FeatureConfig.kaldi(n_mels=24),
                                    FeatureConfig(n_mels=24, preemphasis=0.97, var_norm=True, window="hann")],
                         ids=["speakertrip", "speechbrain", "kaldi", "preemphasis-varnorm"])
def test_exportable_frontend_matches_the_frontend(config):
    for samples in (401, 16000, 16123):
        expected, _ = LogMelFrontend(config)(waveform(samples))
        found = ExportableFrontend(config)(waveform(samples))
        assert found.shape == expected.shape
        torch.testing.assert_close(found, expected, atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("encoder, options", [("ecapa", {"channels": 32}), ("tdnn", {"channels": 32, "stats_channels": 48})])
def test_onnx_matches_torch_for_several_lengths(tmp_path, encoder, options):
    model = tiny_model(encoder, options)
    path = export_onnx(model, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["waveform"]
    for index, samples in enumerate(LENGTHS):
        wave = waveform(samples, index)
        with torch.no_grad():
            expected = model(wave).numpy()
        found = session.run(["embedding"], {"waveform": wave.numpy()})[0]
        assert found.shape == expected.shape
        np.testing.assert_allclose(found, expected, atol=1e-4)


@pytest.mark.slow
def test_torchscript_and_cli_export(tmp_path, capsys):
    model = tiny_model(features=FeatureConfig.speechbrain(n_mels=24))
    model.save(tmp_path / "model")
    assert main(["export", "--model", str(tmp_path / "model"), "--onnx", str(tmp_path / "m.onnx"),
                 "--torchscript", str(tmp_path / "m.pt")]) == 0
    assert "m.onnx" in capsys.readouterr().out
    scripted = torch.jit.load(str(tmp_path / "m.pt"))
    session = onnxruntime.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for index, samples in enumerate(LENGTHS):
        wave = waveform(samples, index)
        with torch.no_grad():
            expected = model(wave).numpy()
            np.testing.assert_allclose(scripted(wave).numpy(), expected, atol=1e-4)
        np.testing.assert_allclose(session.run(None, {"waveform": wave.numpy()})[0], expected, atol=1e-4)
    assert main(["export", "--model", str(tmp_path / "model")]) == 2
    assert "--onnx" in capsys.readouterr().err
