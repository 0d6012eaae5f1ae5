"""Inference backends: each one's embeddings against float32's within its documented tolerance, what auto
resolves to, and the backend passed through embed, Verifier and serve."""

import numpy as np
import pytest
import torch

from speakertrip.cli import main
from speakertrip.data.embedding_store import load_store
from speakertrip.errors import ConfigError
from speakertrip.features import FeatureConfig
from speakertrip.models import embed_many
from speakertrip.models.backends import BACKEND_VARIABLE, native_bfloat16, resolve_backend
from speakertrip.testing import make_voxceleb_tree, speech_like, tiny_model, tiny_model_artifact
from speakertrip.verification import Verifier
from speakertrip.verification.service import ServiceSettings

pytestmark = pytest.mark.usefixtures("one_thread")

# the tolerances documented in speakertrip/models/backends.py (max |difference| of unit embeddings)
TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2, "int8": 3e-2, "onnxruntime": 1e-5, "eager": 1e-5}


@pytest.fixture(scope="module")
def model():
    return tiny_model(options={"channels": 64}, features=FeatureConfig(n_mels=40), seed=3)


@pytest.fixture(scope="module")
def waves():
    rng = np.random.default_rng(5)
    return [speech_like(i, float(rng.uniform(0.4, 1.6)), seed=i) for i in range(6)]


@pytest.fixture(scope="module")
def alone(model, waves):
    """Each wave through the model itself, alone, in float32: the reference."""
    with torch.inference_mode():
        return np.stack([model(torch.from_numpy(wave)[None]).numpy()[0] for wave in waves])


@pytest.mark.parametrize("backend", ["float32", "bfloat16", "int8", "onnxruntime", "eager"])
def test_each_backend_equals_float32_within_its_tolerance(model, waves, alone, backend):
    batched = embed_many(model, waves, sample_rate=16000, backend=backend, batch_seconds=3.0, num_threads=2)
    assert batched.dtype == np.float32 and batched.shape == alone.shape
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    assert np.abs(batched - alone).max() <= TOLERANCE[backend]
    scores, reference = batched @ batched.T, alone @ alone.T  # cosine scores move less than the coordinates
    assert np.abs(scores - reference).max() <= TOLERANCE[backend]
    one_by_one = np.stack([embed_many(model, [wave], sample_rate=16000, backend=backend)[0] for wave in waves])
    assert np.abs(one_by_one - batched).max() <= TOLERANCE[backend]  # padding costs no more than the precision


def test_auto_is_bfloat16_where_the_cpu_has_it_and_the_variable_overrides_it(model, monkeypatch):
    monkeypatch.delenv(BACKEND_VARIABLE, raising=False)
    assert resolve_backend(model, "auto", "cpu") == ("bfloat16" if native_bfloat16("cpu") else "float32")
    assert resolve_backend(tiny_model("tdnn"), "auto", "cpu") == "float32"  # no inference copy to lower
    monkeypatch.setenv(BACKEND_VARIABLE, "int8")
    assert resolve_backend(model, "auto") == "int8" and resolve_backend(model, "float32") == "float32"
    monkeypatch.setenv(BACKEND_VARIABLE, "fast")
    with pytest.raises(ConfigError, match=f"{BACKEND_VARIABLE}='fast' is not a backend; valid: auto, float32"):
        resolve_backend(model, "auto")


def test_bad_backends_are_one_line_errors(model):
    with pytest.raises(ConfigError, match="unknown backend 'fp8'; valid: auto, float32, bfloat16, int8, onnxruntime"):
        embed_many(model, [speech_like(0, 0.5)], sample_rate=16000, backend="fp8")
    with pytest.raises(ConfigError, match="backend 'int8' needs an ECAPA encoder.*'tdnn'.*use backend 'float32'"):
        resolve_backend(tiny_model("tdnn"), "int8")
    with pytest.raises(ConfigError, match="unknown backend 'fp8'"):
        Verifier(model, store="unused.db", threshold=0.5, backend="fp8")
    with pytest.raises(ConfigError, match="unknown backend 'fp8'"):
        ServiceSettings(model="m", store="s.db", backend="fp8")


def test_non_ecapa_encoders_run_float32_and_onnxruntime(waves):
    tdnn = tiny_model("tdnn")
    exact = embed_many(tdnn, waves[:3], sample_rate=16000, backend="float32")
    np.testing.assert_allclose(embed_many(tdnn, waves[:3], sample_rate=16000, backend="onnxruntime"), exact,
                               atol=TOLERANCE["onnxruntime"])


def test_backend_through_verifier_and_the_embed_command(tmp_path, capsys):
    root = make_voxceleb_tree(tmp_path / "vox", num_speakers=2, sessions=1, utterances_per_session=2,
                              trial_list=False)
    files = sorted((root / "wav").rglob("*.wav"))
    artifact = tiny_model_artifact(tmp_path / "model")
    scores = {}
    for backend in ("float32", "int8"):
        verifier = Verifier(artifact, store=tmp_path / f"{backend}.db", threshold=0.5, backend=backend)
        verifier.enroll("alice", files[:1])
        scores[backend] = verifier.verify("alice", files[1]).score
        verifier.store.close()
    assert scores["int8"] == pytest.approx(scores["float32"], abs=TOLERANCE["int8"])
    for backend in ("float32", "bfloat16"):
        assert main(["embed", "--model", str(artifact), "--data", str(root / "wav"), "--out",
                     str(tmp_path / f"{backend}.npz"), "--device", "cpu", "--backend", backend]) == 0
    exact, low = load_store(tmp_path / "float32.npz"), load_store(tmp_path / "bfloat16.npz")
    assert exact.keys == low.keys
    assert np.abs(exact.embeddings - low.embeddings).max() <= TOLERANCE["bfloat16"]
