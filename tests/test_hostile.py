"""Issue 30: what a hostile or careless client did to serve, audio decoding, calibrate and finetune.

Each test names the item it covers. The server here has no token (loopback only) and small limits, so
that the Host/Origin checks, the per-request audio caps and the slow-client deadlines can be hit in
seconds. Slow clients are bounded in number and time and only ever connect to 127.0.0.1.
"""

from __future__ import annotations

import io
import socket
import time
import tracemalloc

import numpy as np
import pytest
import soundfile as sf

from speakertrip.audio import load_audio, prepare_waveform, resample
from speakertrip.audio.io import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE
from speakertrip.cli import main
from speakertrip.errors import AudioError
from speakertrip.testing import make_voxceleb_tree, speech_like, tiny_model_artifact

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import Server, wav_bytes  # noqa: E402


def pcm8_wav(rate: int, frames: int = 4000) -> bytes:
    """A small 8-bit WAV at ``rate`` Hz: about 4 KB, what the attacker sent."""
    buffer = io.BytesIO()
    signal = speech_like(1, frames / 16000, 16000)[:frames]
    sf.write(buffer, signal / np.abs(signal).max() * 0.5, rate, format="WAV", subtype="PCM_U8")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_artifact(tmp_path_factory.mktemp("hostile") / "model")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """No token, one worker, 5 s per part, 8 s and 3 parts per request, 1 s for headers, 2 s for a body."""
    base = tmp_path_factory.mktemp("hostile_server")
    with Server("--model", model, "--store", base / "speakers.db", "--max-audio-seconds", 5,
                "--max-request-audio-seconds", 8, "--max-parts", 3, "--max-upload-mb", 2, "--header-timeout", 1,
                "--body-timeout", 2, "--max-connections", 8, log=base / "log") as running:
        running.port = int(running.url.rsplit(":", 1)[1])
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http


def closed_by_server(connection: socket.socket, seconds: float) -> bool:
    """Whether the server closes ``connection`` within ``seconds`` (whatever it sends first is read and dropped)."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            connection.settimeout(max(0.01, deadline - time.monotonic()))
            if connection.recv(65536) == b"":
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def audio(*parts):
    return [("audio", (name, data, "audio/wav")) for name, data in parts]


def names(client):
    return {s["name"] for s in client.get("/speakers").json()["speakers"]}


# ---- item 1: sample rates ------------------------------------------------------------------------
def test_resampling_cost_is_bounded_for_co_prime_rates():
    """Item 1: torchaudio's table for 44101 Hz → 16 kHz took 100 s; 4001 Hz took 1 GB."""
    signal = np.random.default_rng(0).standard_normal(44101).astype(np.float32) * 0.1
    resample(signal[:100], 48000, 16000)  # SciPy imported before memory is traced
    tracemalloc.start()
    for rate in (44101, 191999, 8001):
        out = resample(signal[:rate], rate, 16000)
        assert len(out) == int(np.ceil(min(len(signal), rate) * 16000 / rate))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20  # torchaudio: about 16000 * rate floats for a co-prime rate
    # the bounded ratio stretches time by less than 5e-5: a 1 kHz tone stays at 1 kHz
    tone = np.sin(2 * np.pi * 1000 * np.arange(44101) / 44101).astype(np.float32)
    spectrum = np.abs(np.fft.rfft(resample(tone, 44101, 16000)))
    assert abs(np.argmax(spectrum) * 16000 / (2 * (len(spectrum) - 1)) - 1000) <= 1


@pytest.mark.parametrize("rate", [4001, 7999, 192001, 999983])
def test_rates_outside_the_accepted_range_are_refused_naming_the_file(tmp_path, capsys, model, rate):
    """Item 1: the CLI and the library refuse them in one line, before resampling."""
    assert (MIN_SAMPLE_RATE, MAX_SAMPLE_RATE) == (8000, 192000)
    path = tmp_path / "odd.wav"
    path.write_bytes(pcm8_wav(rate))
    with pytest.raises(AudioError, match=rf"odd.wav: sample rate {rate} Hz is outside the accepted 8000-192000 Hz"):
        load_audio(path, 16000)
    with pytest.raises(AudioError, match="sample rate"):
        prepare_waveform(np.ones(4000, np.float32), rate, 16000)
    assert main(["enroll", "--model", str(model), "--store", str(tmp_path / "s.db"), "alice", str(path)]) == 2
    err = capsys.readouterr().err
    assert "odd.wav: sample rate" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s.db").exists()


def test_service_refuses_odd_rates_and_accepts_co_prime_ones_quickly(client):
    """Item 1: the 4 KB file at 4001 Hz is a 400 before any resampling; 999,983 Hz is a 400, not a 500."""
    for rate in (4001, 999983):
        response = client.post("/identify", files=audio(("odd.wav", pcm8_wav(rate))))
        assert response.status_code == 400 and f"sample rate {rate} Hz is outside" in response.json()["error"]
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(3, 1.5, 44101), 44101, format="WAV")
    assert client.post("/identify", files=audio(("ok.wav", buffer.getvalue()))).status_code == 200


# ---- item 3: total audio and parts per request ------------------------------------------------------
def test_total_audio_and_parts_per_request_are_capped(client):
    """Item 3: 3 parts of 4 s are 12 s (over 8 s); 4 parts are over 3; verify and identify take one part."""
    four = wav_bytes(4, 4.0)
    response = client.post("/speakers/gina/enroll", files=audio(*[(f"{n}.wav", four) for n in range(3)]))
    assert response.status_code == 413 and "12.0 s of audio in 3 parts" in response.json()["error"]
    one = wav_bytes(4, 1.0)
    response = client.post("/speakers/gina/enroll", files=audio(*[(f"{n}.wav", one) for n in range(4)]))
    assert response.status_code == 413 and "4 audio parts are over this service's limit of 3" in response.text
    assert "gina" not in names(client)
    assert client.post("/speakers/gina/enroll", files=audio(("a.wav", four), ("b.wav", four))).status_code == 200
    for path in ("/speakers/gina/verify", "/identify"):
        response = client.post(path, files=audio(("a.wav", one), ("b.wav", one)))
        assert response.status_code == 422 and "2 parts named 'audio'" in response.json()["error"]


# ---- item 4: cross-site writes and DNS rebinding -------------------------------------------------------
def test_foreign_host_and_cross_site_writes_are_refused(client, server):
    """Item 4: a page of another site cannot enrol; a rebinding page (Host: its own name) cannot read or delete."""
    clip = audio(("h.wav", wav_bytes(5, 1.0)))
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{server.port + 1}"):
        response = client.post("/speakers/harry/enroll", files=clip, headers={"Origin": origin})
        assert response.status_code == 403 and "cross-site request refused" in response.json()["error"]
    assert "harry" not in names(client)
    same = client.post("/speakers/harry/enroll", files=clip, headers={"Origin": server.url})
    assert same.status_code == 200  # the service's own page posts with its own origin
    for method, path in (("GET", "/speakers"), ("DELETE", "/speakers/harry"), ("GET", "/health")):
        response = client.request(method, path, headers={"Host": f"rebind.example:{server.port}"})
        assert response.status_code == 403 and "is not this service's address" in response.json()["error"]
    assert client.get("/speakers", headers={"Host": f"localhost:{server.port}"}).status_code == 200
    assert "harry" in names(client)


def test_repeated_security_headers_are_refused(server):
    """Item 4 (the guard): two Authorization or Host headers are a 400, never a silent choice."""
    for header, values in (("Authorization", ("Bearer a", "Bearer b")), ("Host", ("127.0.0.1", "evil.example"))):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            lines = "".join(f"{header}: {value}\r\n" for value in values)
            extra = "" if header == "Host" else "Host: 127.0.0.1\r\n"
            raw.sendall(f"GET /speakers HTTP/1.1\r\n{extra}{lines}Connection: close\r\n\r\n".encode())
            reply = b"".join(iter(lambda: raw.recv(65536), b""))
        assert reply.startswith(b"HTTP/1.1 400"), reply[:200]


def test_a_url_that_is_not_utf8_is_refused_not_merged(client):
    """Item 12 (the HTTP side): %ff and %fe both became U+FFFD, so two names met in one speaker."""
    clip = audio(("n.wav", wav_bytes(6, 1.0)))
    for raw in ("/speakers/caf%ff/enroll", "/speakers/caf%fe/enroll"):
        response = client.post(raw, files=clip)
        assert response.status_code == 400 and "not UTF-8" in response.json()["error"]
    assert not any(name.startswith("caf") for name in names(client))
    assert client.post("/speakers/caf%C3%A9/enroll", files=clip).json()["name"] == "café"


# ---- item 6: expected conditions get their status -------------------------------------------------------
def test_store_conditions_map_to_their_status():
    """Item 6: read-only 403, another model's store 409, unreachable or damaged 503."""
    from speakertrip.errors import CorruptStoreError, ReadOnlyStoreError, StoreUnavailableError
    from speakertrip.verification.app import _status
    from speakertrip.verification.enrolment_store import ModelMismatchError

    assert [_status(kind("x")) for kind in (ReadOnlyStoreError, ModelMismatchError, StoreUnavailableError,
                                            CorruptStoreError)] == [403, 409, 503, 503]


def test_a_damaged_store_is_503_with_a_json_error_and_no_path(model, tmp_path):
    """Item 6: one corrupted page of the speakers table: /health no longer says "ok, 17 speakers", and every
    route answers 503 with a JSON error, not a 500."""
    from fastapi.testclient import TestClient

    from speakertrip.verification import Verifier
    from speakertrip.verification.app import create_app
    from speakertrip.verification.service import ServiceSettings

    store = tmp_path / "s.db"
    verifier = Verifier(model, store=store)
    for number in range(17):
        verifier.enroll(f"spk{number:02d}", [speech_like(number, 1.0)], sample_rate=16000)
    verifier.store.close()
    data = bytearray(store.read_bytes())
    page = 4096 * 9  # a leaf page of the speakers table in this layout
    data[page + 8:page + 4088] = b"\xa5" * 4080
    store.write_bytes(bytes(data))
    app = create_app(ServiceSettings(model=str(model), store=str(store)))
    with TestClient(app, base_url="http://127.0.0.1") as http:
        clip = audio(("t.wav", wav_bytes(1, 1.0)))
        for response in (http.get("/health"), http.get("/speakers"), http.post("/identify", files=clip)):
            assert response.status_code == 503, response.text
            assert "not a readable enrolment store" in response.json()["error"] and str(store) not in response.text


def test_serve_option_mistakes_are_one_line_errors(model, tmp_path, capsys):
    """Item 7: --threads -5, --port 99999 / -1, --device banana, --device cuda without CUDA."""
    import torch

    cases = [(["--threads", "-5"], "--threads must be >= 1, got -5"),
             (["--port", "99999"], "--port must be 0-65535"), (["--port", "-1"], "--port must be 0-65535"),
             (["--device", "banana"], "device 'banana' is not a torch device"),
             (["--max-connections", "0"], "--max-connections must be >= 1"),
             (["--header-timeout", "0"], "--header-timeout must be a positive number of seconds")]
    if not torch.cuda.is_available():
        cases.append((["--device", "cuda"], "device 'cuda' is not available: this machine has no CUDA"))
    for extra, message in cases:
        status = main(["serve", "--model", str(model), "--store", str(tmp_path / "s.db"), *extra])
        err = capsys.readouterr().err
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, (extra, err)
    assert not (tmp_path / "s.db").exists()


# ---- item 9: slow clients -------------------------------------------------------------------------------
def test_slow_clients_are_cut_off_and_health_answers_under_a_flood(server):
    """Item 9: 24 slowloris connections (3x the cap of 8) to 127.0.0.1: /health still answers, and every
    slow connection is closed within the 1 s header deadline (a body that stalls, within 2 s)."""
    slow = []
    try:
        for _ in range(24):
            connection = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(connection)
        assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200  # a slot is freed for it
        stalled = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        slow.append(stalled)
        stalled.sendall(b"POST /identify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
                        b"Content-Type: multipart/form-data; boundary=x\r\n\r\n--x\r\n")
        time.sleep(2.0)
        assert [closed_by_server(connection, 1.5) for connection in slow] == [True] * len(slow)
    finally:
        for connection in slow:
            connection.close()
    assert httpx.get(f"{server.url}/health", timeout=5).status_code == 200


# ---- items 7 and 11: calibrate --out ----------------------------------------------------------------------
def test_calibrate_out_must_be_a_new_folder_outside_the_model(model, tmp_path, capsys):
    """Item 7 (an existing file: a traceback) and item 11 (merged into a non-empty folder; nested anew inside
    the model folder on every run): each is a one-line error and nothing is written."""
    tree = make_voxceleb_tree(tmp_path / "corpus", num_speakers=4)
    (tmp_path / "file").write_text("keep me\n")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me\n")
    cases = [(tmp_path / "file", "is a file"), (tmp_path / "full", "is a folder that is not empty"),
             (model / "calibrated", "is inside the model folder")]
    before = sorted(path.name for path in model.iterdir())
    for out, message in cases:
        status = main(["calibrate", "--model", str(model), "--trials", str(tree / "veri_test2.txt"),
                       "--data", str(tree / "wav"), "--out", str(out)])
        err = capsys.readouterr().err
        assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "file").read_text() == "keep me\n" and sorted(p.name for p in (tmp_path / "full").iterdir()) == [
        "notes.txt"]
    assert sorted(path.name for path in model.iterdir()) == before
    (tmp_path / "empty").mkdir()
    assert main(["calibrate", "--model", str(model), "--trials", str(tree / "veri_test2.txt"),
                 "--data", str(tree / "wav"), "--out", str(tmp_path / "empty")]) == 0
    scores = tmp_path / "scores.txt"  # the score-file form writes one file: a folder there was a traceback
    scores.write_text("a b 0.9 target\nc d 0.1 nontarget\ne f 0.8 target\ng h 0.3 nontarget\ni j 0.4 target\n"
                      "k l 0.6 nontarget\n")
    capsys.readouterr()
    assert main(["calibrate", str(scores), "--out", str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert "is a folder; a score calibration is one file" in err and len(err.strip().splitlines()) == 1


# ---- items 7 and 10: finetune ------------------------------------------------------------------------------
@pytest.fixture
def speakers(tmp_path):
    """Six speakers; id10001 has a silent file and a 0.1 s file, every file of id10006 is silent."""
    wav = make_voxceleb_tree(tmp_path / "corpus", num_speakers=6, sessions=2, utterances_per_session=2,
                             duration=(0.8, 1.0), trial_list=False) / "wav"
    first = sorted((wav / "id10001").rglob("*.wav"))
    sf.write(first[0], np.zeros(16000, np.float32), 16000)
    sf.write(first[1], speech_like(1, 0.1), 16000)
    for path in (wav / "id10006").rglob("*.wav"):
        sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    return wav


@pytest.mark.slow
def test_finetune_leaves_out_silent_and_short_files_and_says_so(speakers, tmp_path):
    """Item 10: silent files, a 0.1 s file and an all-silent speaker were trained on without a word."""
    from speakertrip.data.manifest import read_manifest
    from speakertrip.training.finetune import prepare_finetune_data
    from speakertrip.training.finetune_config import FinetuneConfig

    with pytest.warns(UserWarning) as caught:
        paths = prepare_finetune_data(speakers, tmp_path / "data", FinetuneConfig(dev_speakers=2))
    message = " ".join(str(w.message) for w in caught)
    assert "left out 6 of 24 audio files that fine-tuning cannot learn from" in message
    assert "all samples are zero" in message and "no usable file left for speaker(s) id10006" in message
    assert "--test-speakers" not in message
    kept = read_manifest(paths["train"]) + read_manifest(paths["dev"])
    assert len(kept) == 18 and "id10006" not in {u.spk_id for u in kept}
    assert all(u.duration >= 0.25 for u in kept)


@pytest.mark.slow
def test_finetune_errors_are_one_line_and_about_finetune(model, speakers, tmp_path, capsys):
    """Items 7 and 10: --out a file; a bad file's error offers no --skip-bad that finetune lacks; --resume with
    another --model or --data is refused instead of silently ignored."""
    from speakertrip.training.finetune import SOURCES_FILE, _record_sources

    (tmp_path / "file").write_text("x")
    assert main(["finetune", "--model", str(model), "--data", str(speakers), "--out", str(tmp_path / "file")]) == 2
    err = capsys.readouterr().err
    assert "--out" in err and "is a file" in err and len(err.strip().splitlines()) == 1
    broken = sorted((speakers / "id10002").rglob("*.wav"))[0]
    broken.write_bytes(b"RIFF not really a wav")
    assert main(["finetune", "--model", str(model), "--data", str(speakers), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "1 audio file(s) cannot be read" in err and "pass --skip-bad" not in err and "--skip-bad`" in err
    assert len(err.strip().splitlines()) == 1
    run = tmp_path / "run"  # what a started run leaves: its initial model, dev trials and sources
    tiny_model_artifact(run / "initial_model")
    (run / "data").mkdir()
    (run / "data" / "dev_trials.txt").write_text("")
    _record_sources(run / "data" / SOURCES_FILE, model, speakers, None, resume=False)
    other = tiny_model_artifact(tmp_path / "other", seed=3)
    for option, value in (("--model", other), ("--data", tmp_path / "corpus")):
        argv = {"--model": str(model), "--data": str(speakers), option: str(value)}
        assert main(["finetune", *[x for pair in argv.items() for x in pair], "--out", str(run), "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"not {option} {value.resolve()}; resume with the same ones" in err, err
