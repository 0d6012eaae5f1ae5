"""Importing SpeechBrain hub folders: parity with SpeechBrain's EncoderClassifier, the hub cache, clear errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import speakertrip as st
from speakertrip.cli import main
from speakertrip.errors import FormatError, SpeakertripError
from speakertrip.models.padding import exact_padding
from speakertrip.models.speechbrain_hub import import_speechbrain
from speakertrip.testing import randomise_batch_norms

# The layout and frontend settings of speechbrain/spkrec-ecapa-voxceleb and spkrec-xvect-voxceleb
# (hyperparams.yaml as published), with smaller encoders so that the tests run in seconds.
ENCODER_YAML = {
    "ecapa": """\
embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: [64, 64, 64, 64, 192]
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: 16
    lin_neurons: 192

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: 192
    out_neurons: !ref <out_n_neurons>
""",
    "xvector": """\
embedding_model: !new:speechbrain.lobes.models.Xvector.Xvector
    in_channels: !ref <n_mels>
    activation: !name:torch.nn.LeakyReLU
    tdnn_blocks: 5
    tdnn_channels: [64, 64, 64, 64, 128]
    tdnn_kernel_sizes: [5, 3, 3, 1, 1]
    tdnn_dilations: [1, 2, 3, 1, 1]
    lin_neurons: 32

classifier: !new:speechbrain.lobes.models.Xvector.Classifier
    input_shape: [null, null, 32]
    activation: !name:torch.nn.LeakyReLU
    lin_blocks: 1
    lin_neurons: 32
    out_neurons: !ref <out_n_neurons>
""",
}
N_MELS = {"ecapa": 80, "xvector": 24}
HYPERPARAMS = """\
# ############################################################################
# Model: {kind} for Speaker verification
# ############################################################################

# Feature parameters
n_mels: {n_mels}

# Pretrain folder (HuggingFace)
pretrained_path: speechbrain/spkrec-{kind}-voxceleb

# Output parameters
out_n_neurons: 5

# Model params
compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

{encoder}
mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
        classifier: !ref <classifier>
        label_encoder: !ref <label_encoder>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
        classifier: !ref <pretrained_path>/classifier.ckpt
        label_encoder: !ref <pretrained_path>/label_encoder.txt
"""


def make_speechbrain_folder(folder: Path, kind: str, seed: int = 0) -> Path:
    """A hub-layout folder written by SpeechBrain's own classes with random weights (and BatchNorm statistics)."""
    from hyperpyyaml import load_hyperpyyaml

    folder.mkdir(parents=True, exist_ok=True)
    text = HYPERPARAMS.format(kind=kind, n_mels=N_MELS[kind], encoder=ENCODER_YAML[kind])
    (folder / "hyperparams.yaml").write_text(text)
    torch.manual_seed(seed)
    hparams = load_hyperpyyaml(text)  # our own test file: building its objects is what SpeechBrain does
    randomise_batch_norms(hparams["embedding_model"], seed)
    torch.save(hparams["embedding_model"].state_dict(), folder / "embedding_model.ckpt")
    torch.save(hparams["classifier"].state_dict(), folder / "classifier.ckpt")
    norm = hparams["mean_var_norm_emb"].train()
    dim = 192 if kind == "ecapa" else 32
    norm(torch.randn(16, 1, dim) * 0.3 + torch.linspace(-1, 1, dim), torch.ones(16))
    norm._save(folder / "mean_var_norm_emb.ckpt")
    hparams["label_encoder"].update_from_iterable([f"id{10001 + n}" for n in range(5)])
    hparams["label_encoder"].save(folder / "label_encoder.txt")
    return folder


def speechbrain_embeddings(folder: Path, waves: torch.Tensor, lengths: torch.Tensor, normalize: bool) -> torch.Tensor:
    """SpeechBrain's EncoderClassifier on the folder: encode_batch of each utterance, then L2 normalisation."""
    from speechbrain.inference.speaker import EncoderClassifier

    classifier = EncoderClassifier.from_hparams(source=str(folder), savedir=str(folder.parent / "sb_savedir"),
                                                overrides={"pretrained_path": str(folder)})
    from speechbrain.nnet.pooling import StatisticsPooling

    for module in classifier.modules():  # SpeechBrain adds 1e-5..9e-5 of random noise to the pooled mean even at
        if isinstance(module, StatisticsPooling):  # inference; speakertrip's pooling is exact (models/tdnn.py)
            module._get_gauss_noise = lambda shape, device="cpu": torch.zeros(shape, device=device)
    with torch.no_grad():  # one utterance at a time: SpeechBrain's padded rows depend on the padding
        embeddings = [classifier.encode_batch(wave[None, :length], normalize=normalize)
                      for wave, length in zip(waves, lengths.tolist())]
    return F.normalize(torch.cat(embeddings).squeeze(1), dim=-1)


@pytest.mark.parametrize("kind", ["ecapa", "xvector"])
@pytest.mark.parametrize("embedding_norm", [False, True])
def test_import_matches_speechbrain_encode_batch(tmp_path, kind, embedding_norm):
    folder = make_speechbrain_folder(tmp_path / "hub", kind)
    torch.manual_seed(3)
    waves = torch.randn(3, 16000) * 0.1
    lengths = torch.tensor([16000, 16000, 12000])
    waves[2, 12000:] = 0
    model = import_speechbrain(folder, embedding_norm=embedding_norm)
    assert model.encoder_name == ("ecapa" if kind == "ecapa" else "tdnn")
    assert model.feature_config.n_mels == N_MELS[kind] and model.feature_config.mode == "speechbrain"
    with torch.no_grad(), exact_padding(model):  # what embedding does: a padded row as it is alone
        ours = model(waves, lengths)
        plain = import_speechbrain(folder)(waves, lengths)
    reference = speechbrain_embeddings(folder, waves, lengths, embedding_norm)
    torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-4)
    assert (ours - plain).abs().max() > (1e-2 if embedding_norm else -1)  # the folded mean_var_norm_emb counts


def hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """The huggingface_hub cache layout (models--owner--name/{refs/main, snapshots/<commit>/...}) holding ``folder``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)
    return cache


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """huggingface_hub offline, its cache in tmp_path: nothing can be downloaded, cached files are found."""
    constants = pytest.importorskip("huggingface_hub.constants")
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_hub_id_loads_from_the_hub_cache(tmp_path, offline_hub, monkeypatch):
    folder = make_speechbrain_folder(tmp_path / "hub", "ecapa")
    hub_cache(offline_hub, "speechbrain/spkrec-ecapa-voxceleb", folder)
    monkeypatch.chdir(tmp_path)  # no folder called speechbrain/ here: the string is a hub id
    model = st.load_model("speechbrain/spkrec-ecapa-voxceleb")
    assert isinstance(model, st.EmbeddingModel)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    expected = speechbrain_embeddings(folder, torch.from_numpy(wave)[None], torch.tensor([16000]), False)[0]
    np.testing.assert_allclose(model.embed(wave, sample_rate=16000), expected.numpy(), atol=1e-4)
    # the same through the command line, into an artifact that loads like any other
    assert main(["import", "speechbrain/spkrec-ecapa-voxceleb", "--out", str(tmp_path / "imported")]) == 0
    imported = st.load_model(tmp_path / "imported")
    assert imported.identity == model.identity
    record = (tmp_path / "imported" / "imported_from.yaml").read_text()
    assert "source: speechbrain/spkrec-ecapa-voxceleb" in record and "embedding_model.ckpt:" in record
    # a local folder in the hub layout works without any hub, for load_model and import alike
    assert st.load_model(folder).identity == model.identity


def test_hub_id_offline_and_not_cached_says_what_to_fetch(tmp_path, offline_hub, capsys):
    with pytest.raises(SpeakertripError, match=r"speechbrain/spkrec-xvect-voxceleb: no such folder; as a hub id: "
                       r"hyperparams.yaml is not in the hub cache.*fetch hyperparams.yaml, embedding_model.ckpt from "
                       r"https://huggingface.co/speechbrain/spkrec-xvect-voxceleb/tree/main into a folder"):
        st.load_model("speechbrain/spkrec-xvect-voxceleb")
    assert main(["import", "speechbrain/spkrec-xvect-voxceleb", "--out", str(tmp_path / "m")]) == 2
    assert "speakertrip import FOLDER --out MODEL" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_clear_errors(tmp_path):
    folder = make_speechbrain_folder(tmp_path / "hub", "xvector")
    hparams = (folder / "hyperparams.yaml").read_text()
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "embedding_model.ckpt").unlink()
    with pytest.raises(SpeakertripError, match=r"broken: missing embedding_model.ckpt"):
        import_speechbrain(broken)
    with pytest.raises(SpeakertripError, match=r"hub: missing mean_var_norm_emb.ckpt"):
        (folder / "mean_var_norm_emb.ckpt").rename(tmp_path / "aside.ckpt")
        import_speechbrain(folder, embedding_norm=True)
    with pytest.raises(SpeakertripError, match=r"nowhere: no such folder"):
        import_speechbrain(tmp_path / "nowhere")

    def rewritten(old: str, new: str) -> Path:
        (broken / "embedding_model.ckpt").write_bytes((folder / "embedding_model.ckpt").read_bytes())
        (broken / "hyperparams.yaml").write_text(hparams.replace(old, new))
        return broken

    with pytest.raises(FormatError, match=r"embedding_model: unsupported model type "
                                          r"'speechbrain.lobes.models.ResNet.ResNet'; speakertrip imports"):
        import_speechbrain(rewritten("Xvector.Xvector", "ResNet.ResNet"))
    with pytest.raises(FormatError, match=r"tdnn_dilations=\[1, 2, 4, 1, 1\] is not supported"):
        import_speechbrain(rewritten("tdnn_dilations: [1, 2, 3, 1, 1]", "tdnn_dilations: [1, 2, 4, 1, 1]"))
    with pytest.raises(FormatError, match=r"compute_features: deltas=True is not supported"):
        import_speechbrain(rewritten("n_mels: !ref <n_mels>", "n_mels: !ref <n_mels>\n    deltas: True"))
    with pytest.raises(FormatError, match=r"mean_var_norm: only per-sentence mean normalisation"):
        import_speechbrain(rewritten("norm_type: sentence", "norm_type: global"))
    with pytest.raises(FormatError, match=r"declares lin_neurons=64 but embedding_model.ckpt holds 32"):
        import_speechbrain(rewritten("    lin_neurons: 32\n\nclassifier", "    lin_neurons: 64\n\nclassifier"))
    with pytest.raises(SpeakertripError, match=r"embedding_model.ckpt: the checkpoint expects 24 mel bins, the "
                                               r"feature config has 40"):
        import_speechbrain(rewritten("n_mels: 24", "n_mels: 40"))
    # a hyperparams file that asks for code is refused before anything is built
    marker = tmp_path / "ran"
    for payload in (f"!apply:pathlib.Path.touch ['{marker}']",
                    f"!!python/object/apply:pathlib.Path.touch ['{marker}']"):
        with pytest.raises(FormatError, match=r"hyperparams.yaml: line 1: tag .* refused \(speakertrip reads a "
                                              r"hyperparams file as data and never runs its code\)"):
            import_speechbrain(rewritten("# ####", f"side_effect: {payload}\n# ####"))
    assert not marker.exists()
    (broken / "embedding_model.ckpt").write_bytes(pickle.dumps({"x": object()}))
    (broken / "hyperparams.yaml").write_text(hparams)
    with pytest.raises(FormatError, match=r"embedding_model.ckpt: not a state dict: the file is damaged or not a "
                                          r"torch file"):
        import_speechbrain(broken)


class RunsCode:
    """Pickled as a call of os.system: loading it unsafely would run a shell command."""

    def __reduce__(self):
        import os

        return os.system, ("true",)


def test_a_pickled_checkpoint_is_refused_in_one_line_that_never_suggests_loading_it(tmp_path, capsys):
    """Issue 30, item 8."""
    folder = make_speechbrain_folder(tmp_path / "hub", "xvector")
    torch.save({"weights": RunsCode()}, folder / "embedding_model.ckpt")
    with pytest.raises(FormatError) as caught:
        import_speechbrain(folder)
    message = str(caught.value)
    assert message == (f"{folder / 'embedding_model.ckpt'}: holds Python code (posix.system), not only tensors "
                       "and plain data: refused (loading it would run that code)")
    assert main(["import", str(folder), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "weights_only" not in err and "succeed" not in err


@pytest.mark.parametrize("source", ["typo/model", "someone/spkrec-ecapa-voxceleb", "typo/model@main"])
def test_a_missing_owner_name_path_is_never_fetched(tmp_path, monkeypatch, capsys, source):
    """Issue 30, item 13: only hf:owner/name or a known publisher's id goes to the hub."""
    import huggingface_hub

    def no_download(*args, **kwargs):
        raise AssertionError(f"tried to download {args}")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_download)
    monkeypatch.chdir(tmp_path)
    hint = f"{source}: no such folder; it is not fetched from the hub, as only speechbrain/... ids are: " \
           f"to download that repository write hf:{source}"
    for load in (st.load_model, import_speechbrain):
        with pytest.raises(SpeakertripError) as caught:
            load(source)
        assert str(caught.value) == hint
    assert main(["import", source, "--out", "m"]) == 2
    assert capsys.readouterr().err.strip().endswith(hint)


def test_hub_ids_are_explicit_or_from_a_known_publisher(tmp_path, monkeypatch):
    from speakertrip.models.speechbrain_hub import hub_repo

    monkeypatch.chdir(tmp_path)
    assert hub_repo("speechbrain/spkrec-ecapa-voxceleb") == "speechbrain/spkrec-ecapa-voxceleb"
    assert hub_repo("hf:someone/model@v2") == "someone/model@v2"
    assert hub_repo("someone/model") is None and hub_repo(Path("speechbrain/x")) is None
    (tmp_path / "speechbrain" / "local").mkdir(parents=True)
    assert hub_repo("speechbrain/local") is None  # an existing path is always the local folder
    with pytest.raises(SpeakertripError, match=r"hf:nobody: expected hf:owner/name or hf:owner/name@revision"):
        hub_repo("hf:nobody")


def test_hf_prefix_fetches_any_owner_from_the_hub_cache(tmp_path, offline_hub, monkeypatch):
    folder = make_speechbrain_folder(tmp_path / "hub", "ecapa")
    hub_cache(offline_hub, "someone/ecapa", folder)
    monkeypatch.chdir(tmp_path)
    assert st.load_model("hf:someone/ecapa").identity == st.load_model(folder).identity


def _chain(kind: str, levels: int = 9) -> str:
    """Ten of the previous level at each of ``levels`` levels: 10**levels leaves once expanded."""
    if kind == "alias":
        lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
        lines += [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, levels + 1)]
        return "\n".join(lines) + f"\nbomb: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN\n    x: *l{levels}\n"
    lines = ["l0: xxxxxxxxxx"] + [f"l{n}: !ref {f'<l{n - 1}>' * 10}" for n in range(1, levels + 1)]
    return "\n".join(lines) + f"\nbomb: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN\n    x: !ref <l{levels}>\n"


@pytest.mark.parametrize("payload, message", [
    (_chain("alias"), "expand to more than 100000 values"),
    (_chain("ref"), "expand to more than 100000 values or 1000000 characters"),
    ("n: !ref 9 ** 9 ** 9\n", r"9 \*\* 387420489 is over the bound"),
    ("n: !ref (2 ** 62) * (2 ** 62) * (2 ** 62)\n", "a number in a reference is over the bound"),
    ("deep: " + "[" * 100_000 + "]" * 100_000 + "\n", "nests too deeply"),
    ("deep: " + "[" * 60 + "]" * 60 + "\n", r"nests too deeply \(at most 50 levels\)"),
    ("x: " + "y" * (1 << 20) + "\n", "bytes is over the 1048576 a hyperparams file may have"),
])
def test_hostile_hyperparams_are_refused_quickly(tmp_path, payload, message):
    """Issue 30, items 5 and 7: alias and reference bombs, huge arithmetic, deep nesting, a huge file."""
    folder = make_speechbrain_folder(tmp_path / "hub", "xvector")
    hparams = (folder / "hyperparams.yaml").read_text()
    if "!ref" in payload or "bomb" in payload:  # an argument of the encoder, which the importer resolves
        key = "bomb" if "bomb" in payload else "n"
        hparams = hparams.replace("    in_channels: !ref <n_mels>",
                                  f"    in_channels: !ref <n_mels>\n    extra: !ref <{key}>")
    (folder / "hyperparams.yaml").write_text(hparams.replace("# ####", payload + "# ####", 1))
    with pytest.raises(FormatError, match=message):  # before the fix: minutes and gigabytes
        import_speechbrain(folder)


def test_non_utf8_hyperparams_and_huge_sizes_are_one_line_errors(tmp_path, capsys):
    """Issue 30, items 5 and 7: bytes that are not UTF-8; an n_fft of 1e9 is refused before anything is built."""
    folder = make_speechbrain_folder(tmp_path / "hub", "xvector")
    hparams = (folder / "hyperparams.yaml").read_text()
    (folder / "hyperparams.yaml").write_bytes(hparams.encode() + b"\nname: caf\xe9\n")
    assert main(["import", str(folder), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "hyperparams.yaml: line" in err and "not UTF-8 text (byte 0xe9" in err and len(err.strip().splitlines()) == 1
    fbank = "compute_features: !new:speechbrain.lobes.features.Fbank"
    for name, value in (("n_fft", "1000000000"), ("n_mels", "100000"), ("sample_rate", "999983"),
                        ("hop_length", "0")):
        edited = hparams.replace("\nn_mels: 24\n", f"\nn_mels: {value}\n") if name == "n_mels" else \
            hparams.replace(fbank, f"{fbank}\n    {name}: {value}")
        (folder / "hyperparams.yaml").write_text(edited)
        with pytest.raises(FormatError, match=rf"compute_features: {name}={value} is outside"):
            import_speechbrain(folder)
