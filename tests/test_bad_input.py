"""Bad input never poisons and never crashes (issue 12): each case ends in a one-line error naming the file,
line or key (exit 2 from the CLI, a SpeakertripError from Python) and changes nothing stored."""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import subprocess
import sys
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

import speakertrip as st
from speakertrip.cli import main
from speakertrip.errors import ConfigError, FormatError, SpeakertripError
from speakertrip.testing import make_voxceleb_tree, speech_like, tiny_model_artifact
from speakertrip.training.config import TrainConfig, load_config
from speakertrip.training.domains import DOMAINS
from speakertrip.verification.enrolment_store import StoreNotFoundError
from speakertrip.verification.stores import open_store
from speakertrip.verification.verifier import Verifier

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def enrolled(tmp_path_factory):
    """A model, two wavs and a store with alice enrolled from one of them."""
    base = tmp_path_factory.mktemp("bad_input")
    model = tiny_model_artifact(base / "model", threshold=0.5)
    for number, name in enumerate(("a.wav", "b.wav")):
        sf.write(base / name, speech_like(number, 1.0), 16000)
    assert main(["enroll", "--model", str(model), "--store", str(base / "s.db"), "alice", str(base / "a.wav")]) == 0
    return base


def run(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---- 2. config values outside their domain -----------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("--schedule.min_lr=-1", "key 'schedule.min_lr' must be >= 0, got -1.0"),
    ("--optim.lr=-1e-3", "key 'optim.lr' must be > 0, got -0.001"),
    ("--optim.weight_decay=-1", "key 'optim.weight_decay' must be >= 0, got -1.0"),
    ("--optim.betas=[2,3]", "key 'optim.betas' must be in [0, 1), got 2 in [2, 3]"),
    ("--data.workers=-1", "key 'data.workers' must be >= 0, got -1"),
    ("--optim.lr=.nan", "key 'optim.lr' must be > 0, got nan"),
    ("--train.grad_clip=.inf", "key 'train.grad_clip' must be > 0, got inf"),
    ("--optim.betas=[0.9]", "key 'optim.betas' needs 2 values"),
    ("--schedule.min_lr=0.1", "key 'schedule.min_lr' (0.1) must not exceed 'optim.lr' (0.002)"),
    ("--features.dither=-0.5", "key 'features.dither' must be >= 0"),
])
def test_config_values_outside_their_domain(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [override])
    assert str(error.value) == f"command line: {message}" or message in str(error.value)


def test_every_numeric_config_key_has_a_domain():
    def numeric(kind) -> bool:
        arguments = typing.get_args(kind)
        return any(numeric(a) for a in arguments) if arguments else kind in (int, float)

    keys = []
    for section in dataclasses.fields(TrainConfig):
        kind = typing.get_type_hints(TrainConfig)[section.name]
        cls = next((a for a in typing.get_args(kind) if dataclasses.is_dataclass(a)), kind)
        keys += [f"{section.name}.{name}" for name, hint in typing.get_type_hints(cls).items() if numeric(hint)]
    assert len(keys) > 30
    assert sorted(set(keys) - set(DOMAINS)) == []
    assert load_config(None, []).optim.lr > 0  # the defaults pass


def test_config_file_domain_error_names_the_file(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("optim:\n  lr: -0.001\n")
    with pytest.raises(ConfigError, match=rf"{path}: key 'optim.lr' must be > 0"):
        load_config(path)


# ---- 3. enrolment stores that are missing or read-only ------------------------------------------
def test_missing_store_is_never_created_except_by_enrolment(enrolled, tmp_path, capsys):
    model, typo = enrolled / "model", tmp_path / "typo.db"
    status, out, err = run(capsys, "identify", "--model", model, "--store", typo, enrolled / "a.wav")
    assert status == 2 and f"{typo}: no enrolment store here (the file does not exist)" in err and not out
    status, _, err = run(capsys, "verify", "--model", model, "--store", typo, "alice", enrolled / "a.wav")
    assert status == 2 and "does not exist" in err
    status, _, err = run(capsys, "speakers", "--store", typo)
    assert status == 2 and "does not exist" in err
    assert not typo.exists()
    verifier = Verifier(model, typo)
    for call in (lambda: verifier.verify("alice", enrolled / "a.wav"), lambda: verifier.identify(enrolled / "a.wav"),
                 verifier.speakers, lambda: verifier.remove("alice")):
        with pytest.raises(StoreNotFoundError, match="does not exist"):
            call()
    with pytest.raises(StoreNotFoundError):
        open_store(typo)
    assert not typo.exists()
    assert verifier.enroll("bob", enrolled / "b.wav") == 1 and typo.exists()
    assert verifier.speakers() == ["bob"]


def read_only_runner(directory: Path) -> list[str] | None:
    """A command prefix under which ``directory`` is read-only: permissions for a normal user; for root
    (whom permissions do not stop) a read-only bind mount in a private mount namespace; None if neither."""
    if os.geteuid() != 0:
        for path in directory.iterdir():
            path.chmod(0o444)
        directory.chmod(0o555)
        return []
    if shutil.which("unshare") is None:
        return None
    probe = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {directory} {directory}"],
                           capture_output=True)
    if probe.returncode != 0:
        return None
    return ["unshare", "-m", "sh", "-c", f'mount --bind -o ro {directory} {directory} && exec "$@"', "sh"]


def test_a_cli_enrolment_folds_its_log_into_the_file(enrolled, tmp_path):
    # a copy of s.db alone must hold alice: the command closed its store (the write-ahead log checkpointed)
    assert not (enrolled / "s.db-wal").exists() or (enrolled / "s.db-wal").stat().st_size == 0
    shutil.copy(enrolled / "s.db", tmp_path / "copy.db")
    assert main(["speakers", "--store", str(tmp_path / "copy.db")]) == 0


@pytest.mark.slow
def test_read_only_store_reads_and_refuses_enrolment(enrolled, tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(enrolled / "s.db", folder / "s.db")
    before = (folder / "s.db").read_bytes()
    prefix = read_only_runner(folder)
    if prefix is None:
        pytest.skip("cannot make a read-only folder here (root without mount namespaces)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    def cli(*argv):
        done = subprocess.run([*prefix, sys.executable, "-m", "speakertrip", *map(str, argv)], env=env,
                              capture_output=True, text=True, timeout=300)
        return done.returncode, done.stdout, done.stderr

    try:
        store, model = folder / "s.db", enrolled / "model"
        status, out, err = cli("speakers", "--store", store)
        assert status == 0 and "alice" in out, err
        status, out, err = cli("verify", "--model", model, "--store", store, "alice", enrolled / "a.wav")
        assert status == 0 and out.startswith("accepted alice"), err
        status, out, err = cli("identify", "--model", model, "--store", store, enrolled / "a.wav")
        assert status == 0 and "alice" in out, err
        status, out, err = cli("enroll", "--model", model, "--store", store, "bob", enrolled / "b.wav")
        assert status == 2 and f"{store}: the enrolment store is read-only" in err and "Traceback" not in err
        assert sorted(p.name for p in folder.iterdir()) == ["s.db"] and store.read_bytes() == before
    finally:
        folder.chmod(0o755)


# ---- 4. thresholds and artifact values ---------------------------------------------------------------
@pytest.mark.parametrize("threshold", [math.nan, math.inf, -math.inf, "0.5", True])
def test_non_finite_or_non_numeric_threshold_is_refused(enrolled, threshold):
    with pytest.raises(ConfigError, match="threshold must be a finite number"):
        Verifier(enrolled / "model", enrolled / "s.db", threshold=threshold)


def test_cli_threshold_nan_is_an_error(enrolled, capsys):
    status, out, err = run(capsys, "verify", "--model", enrolled / "model", "--store", enrolled / "s.db",
                           "--threshold", "nan", "alice", enrolled / "a.wav")
    assert status == 2 and "threshold must be a finite number, got nan" in err and not out


def edited_artifact(enrolled, tmp_path, edit) -> Path:
    directory = tmp_path / "edited"
    shutil.copytree(enrolled / "model", directory)
    config = yaml.safe_load((directory / "config.yaml").read_text())
    edit(config)
    (directory / "config.yaml").write_text(yaml.safe_dump(config))
    return directory


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["evaluation"].update(eer_threshold=math.nan), "key 'evaluation.eer_threshold' must be a finite "
                                                               "number, got nan"),
    (lambda c: c["evaluation"].update(eer_threshold="abc"), "key 'evaluation.eer_threshold' must be a finite number"),
    (lambda c: c["features"].update(n_mels="forty"), "key 'features.n_mels' must be int, got str 'forty'"),
    (lambda c: c.update(colour="blue"), "unknown key(s) 'colour'; valid keys: format, version"),
    (lambda c: c["encoder"].update(colour="blue"), "unknown key(s) 'encoder.colour'; valid keys under encoder"),
    (lambda c: c["features"].update(n_melz=40), "unknown key(s) features.n_melz; valid keys in features"),
    (lambda c: c.update(embedding_dim=7), "key 'embedding_dim' is 7, but the encoder it describes makes 192-d"),
    (lambda c: c.update(embedding_dim="192"), "key 'embedding_dim' must be an int"),
    (lambda c: c.update(evaluation=[1]), "key 'evaluation' must be a mapping"),
])
def test_artifact_config_keys_and_types(enrolled, tmp_path, edit, message):
    directory = edited_artifact(enrolled, tmp_path, edit)
    with pytest.raises(FormatError) as error:
        st.load_model(directory)
    assert str(error.value).startswith(f"{directory / 'config.yaml'}: ") and message in str(error.value)


def test_artifact_evaluation_may_hold_new_keys(enrolled, tmp_path):
    directory = edited_artifact(enrolled, tmp_path, lambda c: c["evaluation"].update(
        calibration={"scale": 4.0, "offset": -1.0}, dev_trials="dev.txt"))
    assert st.load_model(directory).threshold == 0.5


def test_artifact_sizes_are_checked_against_the_header_before_allocating(enrolled, tmp_path, monkeypatch):
    directory = edited_artifact(enrolled, tmp_path, lambda c: c["encoder"]["options"].update(channels=4000))

    def must_not_build(*args, **kwargs):
        raise AssertionError("the model was built before its shapes were checked")

    monkeypatch.setattr("speakertrip.models.loading.EmbeddingModel.from_config", must_not_build)
    with pytest.raises(FormatError, match=r"model.safetensors: weights do not match the model config; wrong shape: "
                                          r"encoder\.asp\.conv\.conv\.bias \(96,\) \(expected \(12000,\)\)"):
        st.load_model(directory)


def test_artifact_frontend_sizes_are_bounded_before_allocating(enrolled, tmp_path):
    directory = edited_artifact(enrolled, tmp_path, lambda c: c["features"].update(n_fft=10**9, win_length=400))
    with pytest.raises(FormatError, match=r"config.yaml: .*n_fft 1000000000 is larger than 16384"):
        st.load_model(directory)  # it tried a 160 GB allocation before


# ---- 5. trial lists, preparation, audio ------------------------------------------------------------
def test_trial_list_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_bytes("\ufeff1 a b\n0 a c\n".encode())
    trials = st.scoring.read_trials(path)
    assert trials.format == "voxceleb" and trials.enroll == ["a", "a"] and trials.labels.tolist() == [True, False]


def test_repeated_trials_warn_with_their_count_and_dedupe_when_asked(tmp_path):
    path = tmp_path / "trials.txt"
    path.write_text("1 a b\n0 a c\n1 a b\n\n1 a b\n")
    with pytest.warns(UserWarning, match=r"trials.txt: 2 repeated trial\(s\) .* first at line 3"):
        assert len(st.scoring.read_trials(path)) == 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trials = st.scoring.read_trials(path, dedupe=True)
    assert list(zip(trials.enroll, trials.test)) == [("a", "b"), ("a", "c")]
    path.write_text("1 a b\n0 a b\n")
    with pytest.raises(FormatError, match=r"trials.txt:2: the same trial as line 1 with the opposite label"):
        st.scoring.read_trials(path)


@pytest.mark.parametrize("text", ["1 id1/a.wav\n0 id2/b.wav\n", "id1/a.wav target\nid2/b.wav nontarget\n"])
def test_two_column_label_key_file_is_recognised(tmp_path, text):
    path = tmp_path / "keys.txt"
    path.write_text(text)
    with pytest.raises(FormatError, match=r"keys.txt:1: two columns of a label and one key: .*\(expected voxceleb"):
        st.scoring.read_trials(path)


@pytest.fixture()
def corpus(tmp_path):
    return make_voxceleb_tree(tmp_path / "vox", num_speakers=5, sessions=2, utterances_per_session=2,
                              duration=(0.5, 0.8), trial_list=False)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_prepare_rejects_non_finite_float_files_without_deep(corpus, tmp_path, capsys, value):
    bad = sorted((corpus / "wav" / "id10001").rglob("*.wav"))[0]
    signal = speech_like(0, 0.6)
    signal[100:110] = value
    sf.write(bad, signal, 16000, subtype="FLOAT")
    status, _, err = run(capsys, "prepare", "voxceleb", "--root", corpus, "--out", tmp_path / "data", "--workers", 1)
    assert status == 2 and f"{bad}: contains NaN or infinite samples (10 of 9600)" in err
    assert not (tmp_path / "data" / "utts.jsonl").exists()
    status, out, _ = run(capsys, "prepare", "voxceleb", "--root", corpus, "--out", tmp_path / "data", "--workers", 1,
                         "--skip-bad", "--test-speakers", 2)
    assert status == 0 and "dropped 1 bad files (--skip-bad), listed in" in out
    kept = st.data.read_manifest(tmp_path / "data" / "utts.jsonl")
    assert len(kept) == 19 and str(bad) not in {u.path for u in kept}


def test_prepare_reads_only_float_files(corpus, tmp_path, monkeypatch):
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    sf.write(sorted((corpus / "wav").rglob("*.wav"))[0], speech_like(0, 0.6), 16000, subtype="FLOAT")
    read = []
    monkeypatch.setattr("speakertrip.data.manifest.check_finite_samples", read.append)
    prepare_voxceleb(corpus, tmp_path / "data", workers=1, progress=False, test_speakers=2)
    assert len(read) == 1  # the 19 16-bit PCM files keep the header-only path


def test_prepare_without_trial_lists_says_so_and_offers_a_split(corpus, tmp_path):
    from speakertrip.corpora.voxceleb import prepare_voxceleb

    with pytest.warns(UserWarning, match=r"no trial list found .* no train/test split: no train.jsonl "
                                         r"or test.jsonl .* --test-speakers N"):
        paths = prepare_voxceleb(corpus, tmp_path / "plain", workers=1, progress=False)
    assert sorted(paths) == ["utts"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        paths = prepare_voxceleb(corpus, tmp_path / "split", workers=1, progress=False, test_speakers=2)
    test = {u.spk_id for u in st.data.read_manifest(paths["test"])}
    train = {u.spk_id for u in st.data.read_manifest(paths["train"])}
    assert test == {"id10004", "id10005"} and train == {"id10001", "id10002", "id10003"}
    trials = st.scoring.read_trials(paths["test_speakers"])
    assert {key.split("/")[0] for key in trials.enroll + trials.test} == test
    assert 0 < trials.n_targets < len(trials)
    with pytest.raises(SpeakertripError, match=r"--test-speakers 5: cannot hold out 5 of 5 speakers;.* "
                                               r"2 \.\. 3 can be held out"):
        prepare_voxceleb(corpus, tmp_path / "bad", workers=1, progress=False, test_speakers=5)


def test_audio_errors_list_the_formats_that_work(tmp_path):
    mp3 = tmp_path / "speech.mp3"
    sf.write(mp3, speech_like(0, 1.0), 16000, format="MP3")
    assert st.audio.load_audio(mp3).shape[0] > 15000  # mp3 reads fine
    garbage = tmp_path / "garbage.mp3"
    garbage.write_bytes(b"not audio at all" * 10)
    with pytest.raises(st.errors.AudioError, match=r"garbage.mp3: not a readable audio file \(expected wav, flac, "
                                                   r"ogg, mp3"):
        st.audio.load_audio(garbage)



def test_act_dcf_refuses_a_non_finite_threshold():
    from speakertrip.scoring.metrics import act_dcf

    with pytest.raises(ConfigError, match="threshold must be a finite number, got nan"):
        act_dcf(np.array([0.9, 0.1]), np.array([1, 0]), threshold=math.nan)  # was 0.0: nothing accepted or rejected
