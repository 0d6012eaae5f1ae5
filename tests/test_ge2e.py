"""GE2E and Resemblyzer's shipped weights: parity with the resemblyzer package itself (CPU), its windows and
features, the import, training from scratch, fine-tuning, export, the Verifier and serve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

import speakertrip as st
from speakertrip.cli import main
from speakertrip.errors import FormatError, SpeakertripError
from speakertrip.features import FeatureConfig, LogMelFrontend
from speakertrip.models import ENCODERS, load_model
from speakertrip.models import resemblyzer as importer
from speakertrip.testing import make_voxceleb_tree, speech_like

resemblyzer = pytest.importorskip("resemblyzer")  # in the dev extra; the parity tests need the package itself
from resemblyzer.audio import normalize_volume, wav_to_mel_spectrogram  # noqa: E402

LOUD_RMS = 0.1  # -20 dBFS: above Resemblyzer's -30 dBFS target, so its volume normalisation leaves it as it is


def loud(wave: np.ndarray) -> np.ndarray:
    return (wave * LOUD_RMS / np.sqrt(np.mean(wave ** 2))).astype(np.float32)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def model():
    return load_model("resemblyzer")


@pytest.fixture(scope="module")
def package():
    return resemblyzer.VoiceEncoder("cpu", verbose=False)


def test_window_starts_are_resemblyzers_partial_slices(model, package):
    lengths = [0, 1, 159, 160, 25599, 25600, 19199 + 160 * 77, 19200 + 160 * 77, *range(0, 120000, 373)]
    ours = model.encoder.window_starts(torch.tensor([n // 160 + 1 for n in lengths]))
    for n, row in zip(lengths, ours.tolist()):
        _, mel_slices = package.compute_partial_slices(n, rate=1.3, min_coverage=0.75)
        assert [start for start in row if start >= 0] == [s.start for s in mel_slices], n


def test_frontend_is_wav_to_mel_spectrogram_with_the_silence_after_the_end():
    wave = loud(speech_like(1, 1.23))
    features, frames = LogMelFrontend(FeatureConfig.ge2e())(torch.from_numpy(wave)[None])
    reference = wav_to_mel_spectrogram(np.pad(wave, (0, 800)))  # Resemblyzer pads the last window with zeros
    assert int(frames[0]) == len(wave) // 160 + 1 == len(wav_to_mel_spectrogram(wave))
    count = min(len(reference), features.shape[1])
    np.testing.assert_allclose(features[0, :count].numpy(), reference[:count], rtol=0, atol=1e-5 * reference.max())


def test_embeddings_equal_voice_encoder_embed_utterance(model, package):
    # shorter than a window, one window, either side of a third window's coverage limit, several windows
    for samples in (4800, 25600, 19199 + 160 * 77 * 2, 19200 + 160 * 77 * 2, 70000):
        wave = loud(speech_like(samples % 7, samples / 16000))
        assert cosine(model.embed(wave, sample_rate=16000), package.embed_utterance(wave)) >= 0.9999, samples


def test_quiet_audio_is_raised_as_resemblyzers_normalize_volume_does(model, package):
    wave = 0.002 * speech_like(3, 2.7)  # about -54 dBFS
    reference = package.embed_utterance(normalize_volume(wave, -30, increase_only=True).astype(np.float32))
    assert cosine(model.embed(wave, sample_rate=16000), reference) >= 0.9999
    assert cosine(model.embed(wave, sample_rate=16000), package.embed_utterance(wave)) < 0.9999  # it matters


def test_a_file_embeds_the_same_alone_and_in_a_batch(model):
    waves = [loud(speech_like(speaker, seconds)) for speaker, seconds in ((1, 0.7), (2, 2.2), (3, 4.9), (4, 3.1))]
    batch = model.embed_batch(waves, sample_rate=16000, batch_seconds=60)
    for wave, row in zip(waves, batch):
        np.testing.assert_allclose(row, model.embed(wave, sample_rate=16000), atol=2e-6)


def test_import_command_writes_the_same_model_with_its_record(model, tmp_path, capsys):
    assert "ge2e" in ENCODERS.names()
    assert main(["import", "resemblyzer", "--out", str(tmp_path / "r")]) == 0
    assert "ge2e" in capsys.readouterr().out
    imported = load_model(tmp_path / "r")
    assert imported.identity == model.identity and imported.embedding_dim == 256
    record = yaml.safe_load((tmp_path / "r" / "imported_from.yaml").read_text())
    import hashlib
    import importlib.metadata

    weights = importer.pretrained_path()
    assert record["sha256"] == {"pretrained.pt": hashlib.sha256(weights.read_bytes()).hexdigest()}
    assert record["package_version"] == importlib.metadata.version("resemblyzer")


def test_without_the_package_one_line_names_the_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(importer.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SpeakertripError, match=r"pip install 'speakertrip\[resemblyzer\]'"):
        load_model("resemblyzer")
    assert main(["import", "resemblyzer", "--out", str(tmp_path / "r")]) != 0
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "speakertrip[resemblyzer]" in message


def test_bad_checkpoints_are_format_errors_naming_the_file(tmp_path):
    torch.save({"step": 1}, tmp_path / "no_state.pt")
    with pytest.raises(FormatError, match="no_state.pt.*model_state"):
        importer.import_resemblyzer(tmp_path / "no_state.pt")
    state = {name: value[:8] if name.startswith("linear") else value
             for name, value in importer.import_resemblyzer().encoder.state_dict().items()}
    torch.save({"model_state": state}, tmp_path / "shapes.pt")
    with pytest.raises(FormatError, match="shapes.pt.*wrong shape: linear.bias"):
        importer.import_resemblyzer(tmp_path / "shapes.pt")
    torch.save({"model_state": {"lstm": FeatureConfig()}}, tmp_path / "code.pt")  # a class: refused by weights_only
    with pytest.raises(FormatError, match="code.pt.*refused"):
        importer.import_resemblyzer(tmp_path / "code.pt")


@pytest.mark.slow  # exporting the LSTM takes ~10 s
def test_onnx_export_matches_the_model(model, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    from speakertrip.extraction.export import export_onnx

    session = onnxruntime.InferenceSession(str(export_onnx(model, tmp_path / "m.onnx")))
    for wave in (0.002 * speech_like(1, 0.8), loud(speech_like(2, 3.7))):  # quiet (raised) and loud, two lengths
        exported = session.run(None, {"waveform": wave.astype(np.float32)[None]})[0][0]
        assert cosine(exported, model.embed(wave, sample_rate=16000)) >= 0.9999


def test_verifier_scores_are_cosines_of_embed(model, tmp_path):
    waves = {speaker: [loud(speech_like(speaker, 2.0, seed=seed)) for seed in range(3)] for speaker in (1, 2)}
    verifier = st.Verifier(model, store=tmp_path / "s.db", threshold=0.8)
    verifier.enroll("one", waves[1][:2], sample_rate=16000)
    centroid = np.mean([model.embed(wave, sample_rate=16000) for wave in waves[1][:2]], axis=0)
    for speaker in (1, 2):
        result = verifier.verify("one", waves[speaker][2], sample_rate=16000)
        expected = cosine(centroid, model.embed(waves[speaker][2], sample_rate=16000))
        assert result.score == pytest.approx(expected, abs=1e-5)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_voxceleb_tree(tmp_path_factory.mktemp("ge2e") / "vox", num_speakers=6, sessions=2,
                              utterances_per_session=3, duration=(1.7, 2.2), seed=5)


@pytest.mark.parametrize("loss", ["multi_positive", pytest.param("aam", marks=pytest.mark.slow)])
def test_train_a_ge2e_encoder_from_scratch(tree, tmp_path, loss):
    from speakertrip.corpora.voxceleb import prepare_voxceleb
    from speakertrip.training.config import load_config
    from speakertrip.training.trainer import train

    data = prepare_voxceleb(tree, tmp_path / "data", progress=False)
    options = {"margin": 0.3, "hardest_negatives": 2} if loss == "multi_positive" else {}
    overrides = {"data.train": str(data["train"]), "data.crop_seconds": 1.0, "data.workers": 0,
                 "data.batches_per_epoch": 2, **{f"features.{k}": v for k, v in FeatureConfig.ge2e().to_dict().items()},
                 "model.encoder": "ge2e", "model.options": {"hidden_size": 16, "num_layers": 2, "embedding_dim": 8},
                 "loss.kind": loss, "loss.p": 3, "loss.k": 2, "loss.options": options, "optim.lr": 0.003,
                 "train.exp_dir": str(tmp_path / "exp"), "train.epochs": 1, "train.progress": False}
    exp = train(load_config(None, [f"--{key}={yaml.safe_dump(value, default_flow_style=True).strip()}"
                                   .removesuffix("\n...") for key, value in overrides.items()]))
    trained = load_model(exp / "model")
    assert trained.encoder_name == "ge2e" and trained.feature_config.mode == "ge2e"
    assert trained.embed(speech_like(1, 1.5), sample_rate=16000).shape == (8,)


@pytest.mark.slow  # the full 1.4 M-parameter LSTM, a few steps on the CPU
def test_finetune_resemblyzer_says_the_statistics_options_do_not_apply(tree, tmp_path, capsys):
    initial = load_model("resemblyzer").encoder.state_dict()
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    source = prepare_voxceleb(tree, tmp_path / "source", progress=False)["utts"]
    code = main(["finetune", "--model", "resemblyzer", "--data", str(tree / "wav"), "--out", str(tmp_path / "run"),
                 "--steps", "2", "--validate-every", "1", "--speakers-per-batch", "3", "--utterances-per-speaker", "2",
                 "--crop-seconds", "1.6", "--dev-speakers", "2", "--freeze-layers", "2", "--workers", "0",
                 "--source", str(source), "--source-speakers", "2", "--source-statistics", "--no-progress"])
    assert code == 0
    out = capsys.readouterr().out
    assert "ge2e encoder has no BatchNorm layers: the statistics options" in out
    tuned = load_model(tmp_path / "run" / "model")
    assert "batchnorm_crops" not in tuned.evaluation and np.isfinite(tuned.evaluation["eer"])
    state = tuned.encoder.state_dict()
    for name, value in initial.items():
        frozen = name.endswith(("_l0", "_l1"))
        assert torch.equal(state[name], value) == frozen, name


@pytest.mark.slow  # a real server process, started and stopped
def test_serve_resemblyzer_matches_the_verifier(model, tmp_path):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from serve_helpers import Server, wav_bytes

    enrolment, test = wav_bytes(1, 2.0, seed=1), wav_bytes(1, 2.0, seed=2)
    with Server("--model", "resemblyzer", "--store", tmp_path / "s.db", "--threshold", 0.8,
                log=tmp_path / "log") as server:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            enrolled = client.post("/speakers/alice/enroll", files=[("audio", ("a.wav", enrolment, "audio/wav"))])
            assert enrolled.status_code == 200, enrolled.text
            answer = client.post("/speakers/alice/verify", files=[("audio", ("t.wav", test, "audio/wav"))]).json()
    verifier = st.Verifier(model, store=tmp_path / "local.db", threshold=0.8)
    (tmp_path / "a.wav").write_bytes(enrolment)
    (tmp_path / "t.wav").write_bytes(test)
    verifier.enroll("alice", [tmp_path / "a.wav"])
    assert answer["score"] == pytest.approx(verifier.verify("alice", tmp_path / "t.wav").score, abs=1e-4)
    assert answer["threshold"] == 0.8
