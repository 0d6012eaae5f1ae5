"""The synthetic eSpeak corpus: determinism, layout, audio format, speaker split, trial list, preparation."""

from __future__ import annotations

import filecmp
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from speakertrip.cli import main
from speakertrip.corpora import synth
from speakertrip.corpora.synth import generate_corpus, prepare_synth
from speakertrip.data.trials import read_trials
from speakertrip.errors import ConfigError

SIZES = dict(num_speakers=6, num_test_speakers=3, utterances_per_speaker=4, sessions_per_speaker=2)
CLI_SIZES = ["--speakers", "6", "--test-speakers", "3", "--utterances", "4", "--sessions", "2"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> dict[str, Path]:
    return prepare_synth(tmp_path_factory.mktemp("synth"), seed=3, workers=2, progress=False, **SIZES)


def files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_the_same_bytes_whatever_the_workers(prepared, tmp_path):
    again = generate_corpus(tmp_path / "one_worker", seed=3, workers=1, **SIZES)
    corpus = prepared["corpus"]
    assert files(again) == files(corpus)
    assert all(filecmp.cmp(corpus / f, again / f, shallow=False) for f in files(corpus))
    other = generate_corpus(tmp_path / "other_seed", seed=4, workers=2, **SIZES)
    other_wavs = {f.read_bytes() for f in (other / "wav").rglob("*.wav")}
    assert other_wavs.isdisjoint(f.read_bytes() for f in (corpus / "wav").rglob("*.wav"))


def test_voxceleb_layout(prepared):
    wavs = files(prepared["corpus"] / "wav")
    assert len(wavs) == 6 * 4
    assert all(re.fullmatch(r"id2000[1-6]/[A-Za-z0-9_-]{11}/0000[12]\.wav", f.as_posix()) for f in wavs)
    sessions = {}
    for f in wavs:
        sessions.setdefault(f.parts[0], set()).add(f.parts[1])
    assert sorted(sessions) == [f"id{20001 + i}" for i in range(6)]
    assert all(len(s) == 2 for s in sessions.values())
    assert len(set().union(*sessions.values())) == 12  # session ids are not shared between speakers


def test_files_are_16k_mono_pcm16_speech(prepared):
    for path in (prepared["corpus"] / "wav").rglob("*.wav"):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert 0.3 <= info.duration <= 3.0
        audio, _ = sf.read(path, dtype="int16")
        peak = np.abs(audio.astype(np.int32)).max()
        assert 32768 * 10 ** (-19 / 20) < peak < 32768 * 10 ** (-2 / 20)  # level drawn in [-18, -3] dBFS ± 1 dB
        rms = np.sqrt((audio.astype(np.float64) ** 2).reshape(-1)[: len(audio) // 160 * 160].reshape(-1, 160).mean(1))
        assert np.percentile(rms, 90) > 4 * np.percentile(rms, 5)  # speech over a noise floor, not noise alone


def test_trial_list_holds_only_held_out_speakers_balanced(prepared):
    corpus = prepared["corpus"]
    summary = json.loads((corpus / "synth.json").read_text())
    test_speakers = {"id20004", "id20005", "id20006"}
    assert set(summary["test_speakers"]) == test_speakers
    lines = [line.split() for line in (corpus / "veri_test2.txt").read_text().splitlines()]
    labels = [int(label) for label, _, _ in lines]
    assert len(lines) == summary["trials"] and labels.count(1) == labels.count(0)
    targets = [(a, b) for label, a, b in lines if label == "1"]
    assert len(targets) == 3 * 4  # per speaker: 2 sessions x 2 utterances -> 4 cross-session pairs
    for label, enrol, test in lines:
        assert {enrol.split("/")[0], test.split("/")[0]} <= test_speakers
        assert (corpus / "wav" / enrol).is_file() and (corpus / "wav" / test).is_file()
        assert (enrol.split("/")[0] == test.split("/")[0]) == (label == "1")
    assert all(a.split("/")[1] != b.split("/")[1] for a, b in targets)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a repeated trial would warn (tests/test_split.py: none by construction)
        assert len(read_trials(corpus / "veri_test2.txt")) == len(lines)


def test_held_out_speakers_speak_other_languages(prepared):
    voices = json.loads((prepared["corpus"] / "synth.json").read_text())["speakers"]
    assert all(v["language"] in synth.TRAIN_LANGUAGES for v in voices[:3])
    assert all(v["language"] in synth.HELD_OUT_LANGUAGES for v in voices[3:])
    assert set(synth.TRAIN_LANGUAGES).isdisjoint(synth.HELD_OUT_LANGUAGES)
    many = synth.speaker_voices(400, 100)
    assert not {v.variant for v in many[:300]} & {v for vs in synth.HELD_OUT_VARIANTS.values() for v in vs}
    assert {v.gender for v in many} == {"male", "female"}
    assert len({(v.variant, v.pitch, v.rate) for v in many}) == 400


def test_manifests_from_the_voxceleb_code_path(prepared):
    rows = {name: [json.loads(line) for line in open(prepared[name])] for name in ("utts", "train", "test")}
    assert (len(rows["utts"]), len(rows["train"]), len(rows["test"])) == (24, 12, 12)
    assert {r["spk_id"] for r in rows["test"]} == {"id20004", "id20005", "id20006"}
    assert all(r["sample_rate"] == 16000 for r in rows["utts"])
    assert prepared["veri_test2"].read_text() == (prepared["corpus"] / "veri_test2.txt").read_text()


def test_cli_reuses_a_corpus_with_the_same_parameters(prepared, capsys):
    out = prepared["corpus"].parent
    stamps = {p: p.stat().st_mtime_ns for p in (out / "corpus" / "wav").rglob("*.wav")}
    assert main(["prepare", "synth", "--out", str(out), "--seed", "3", *CLI_SIZES]) == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "corpus" / "wav").rglob("*.wav")} == stamps
    printed = capsys.readouterr().out
    assert re.search(r"speakers\s+6 \(3 held out\)", printed) and re.search(r"utterances\s+24", printed)


def test_changed_parameters_or_lost_files_regenerate(tmp_path):
    generate_corpus(tmp_path, num_speakers=3, num_test_speakers=2, utterances_per_speaker=2, sessions_per_speaker=1)
    lost = next((tmp_path / "wav").rglob("*.wav"))
    original = lost.read_bytes()
    lost.unlink()
    generate_corpus(tmp_path, num_speakers=3, num_test_speakers=2, utterances_per_speaker=2, sessions_per_speaker=1)
    assert lost.read_bytes() == original
    generate_corpus(tmp_path, num_speakers=2, num_test_speakers=2, utterances_per_speaker=3, sessions_per_speaker=1)
    assert len(list((tmp_path / "wav").rglob("*.wav"))) == 6
    assert sorted(p.name for p in (tmp_path / "wav").iterdir()) == ["id20001", "id20002"]


def test_refuses_to_overwrite_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "wav" / "id10001").mkdir(parents=True)
    with pytest.raises(ConfigError, match="not a synthetic corpus"):
        generate_corpus(tmp_path, **SIZES)
    assert (tmp_path / "wav" / "id10001").is_dir()


@pytest.mark.parametrize("sizes, message", [
    (dict(num_test_speakers=1), "2 <= num_test_speakers <= num_speakers"),
    (dict(num_speakers=2, num_test_speakers=3), "num_speakers=2, num_test_speakers=3"),
    (dict(utterances_per_speaker=3, sessions_per_speaker=4), "sessions_per_speaker=4"),
    (dict(utterances_per_speaker=1, sessions_per_speaker=1), "at least 2 utterances"),
    (dict(duration=(2.0, 1.0)), "duration=(2.0, 1.0)"),
])
def test_bad_sizes_are_clear_errors(tmp_path, sizes, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        generate_corpus(tmp_path, **{**SIZES, **sizes})
    assert not (tmp_path / "wav").exists()


def test_room_response_decay_and_channel_snr():
    channel = synth.Channel("s", level_db=-6.0, snr_db=15.0, noise_colour=1.0, rt60=0.3, reverb_db=-10.0,
                            low_hz=100.0, high_hz=6000.0)
    response = synth.room_response(channel, np.random.default_rng(0))
    assert response[0] == 1.0 and len(response) == int(0.3 * 16000)
    assert 10 * np.log10(np.sum(response[1:] ** 2)) == pytest.approx(-10.0, abs=1e-6)
    early, late = np.sum(response[1:800] ** 2) / 799, np.sum(response[-800:] ** 2) / 800
    assert 10 * np.log10(early / late) == pytest.approx(60 * (len(response) - 800) / len(response), abs=6)

    from scipy import signal
    speech = np.sin(2 * np.pi * 300 * np.arange(32000) / 16000) * np.hanning(32000)
    out = synth.apply_channel(speech, channel, response, np.random.default_rng(1))
    assert 20 * np.log10(np.abs(out).max()) == pytest.approx(-6.0, abs=1.01)
    clean = signal.sosfilt(synth._band_pass(100.0, 6000.0, 16000), signal.fftconvolve(speech, response)[:32000])
    scale = out @ clean / (clean @ clean)
    noise = out - scale * clean
    assert 10 * np.log10(np.sum((scale * clean) ** 2) / np.sum(noise**2)) == pytest.approx(15.0, abs=2.5)
