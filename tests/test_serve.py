"""`speakertrip serve` over real HTTP: a server started on a free loopback port, driven with httpx."""

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import Server, wav_bytes  # noqa: E402

from speakertrip.cli import main  # noqa: E402
from speakertrip.testing import speech_like, tiny_model_artifact, write_bad_audio  # noqa: E402
from speakertrip.verification import Verifier  # noqa: E402

TOKEN = "test-token-0123456789abcdef"
pytestmark = pytest.mark.slow  # a real server in worker processes, started and stopped


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return tiny_model_artifact(tmp_path_factory.mktemp("serve") / "model")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """Two workers, a token, 5 s of audio and 1 MiB per request at most."""
    base = tmp_path_factory.mktemp("server")
    (base / "token").write_text(TOKEN + "\n")
    with Server("--model", model, "--store", base / "speakers.db", "--token-file", base / "token", "--workers", 2,
                "--max-audio-seconds", 5, "--max-upload-mb", 1, log=base / "log") as running:
        running.store = base / "speakers.db"
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as http:
        yield http


def audio(*parts):
    return [("audio", (name, data, "audio/wav")) for name, data in parts]


def names(client):
    return names_of(client.get("/speakers"))


def names_of(response):
    return {s["name"]: s["utterances"] for s in response.json()["speakers"]}


def test_enroll_verify_identify_delete_match_the_verifier_in_process(client, server, model):
    response = client.post("/speakers/alice/enroll", files=audio(("a1.wav", wav_bytes(1, 2.0, 1)),
                                                                 ("a2.wav", wav_bytes(1, 2.5, 2))))
    assert response.status_code == 200 and response.json() == {"name": "alice", "utterances": 2}
    assert client.post("/speakers/bob/enroll", files=audio(("b.wav", wav_bytes(2, 2.0, 1)))).json()["utterances"] == 1
    again = client.post("/speakers/alice/enroll", files=audio(("a3.wav", wav_bytes(1, 1.5, 3))))
    assert again.json() == {"name": "alice", "utterances": 3}
    replaced = client.post("/speakers/bob/enroll?replace=true", files=audio(("b2.wav", wav_bytes(2, 2.0, 2)),
                                                                            ("b3.wav", wav_bytes(2, 2.0, 3))))
    assert replaced.json() == {"name": "bob", "utterances": 2}
    assert {"alice": 3, "bob": 2}.items() <= names(client).items()

    test = wav_bytes(1, 2.0, seed=9)
    verified = client.post("/speakers/alice/verify", files=audio(("t.wav", test))).json()
    assert set(verified) == {"name", "score", "threshold", "accepted"} | ({"llr"} & set(verified))
    local = Verifier(model, store=server.store)  # the same store, read in this process
    path = server.log.parent / "t.wav"
    path.write_bytes(test)
    expected = local.verify("alice", path)
    assert verified["name"] == "alice" and verified["threshold"] == expected.threshold == 0.5
    assert verified["score"] == pytest.approx(expected.score, abs=1e-5)
    assert verified["accepted"] == expected.accepted
    strict = client.post("/speakers/alice/verify", params={"threshold": expected.score + 1e-3},
                         files=audio(("t.wav", test))).json()
    assert strict["threshold"] == pytest.approx(expected.score + 1e-3) and strict["accepted"] is False

    found = client.post("/identify", params={"top_k": 1}, files=audio(("t.wav", test))).json()
    reference = local.identify(path, top_k=1)
    assert [m["name"] for m in found["matches"]] == [m.name for m in reference]
    assert [m["score"] for m in found["matches"]] == pytest.approx([m.score for m in reference], abs=1e-5)
    everyone = client.post("/identify", params={"top_k": 50}, files=audio(("t.wav", test))).json()["matches"]
    scores = [m["score"] for m in everyone]
    assert scores == sorted(scores, reverse=True) and all(s >= 0.5 for s in scores)  # open set: >= threshold

    assert client.delete("/speakers/bob").json() == {"name": "bob", "removed": True}
    assert "bob" not in names(client)
    health = httpx.get(f"{server.url}/health").json()  # no token needed
    assert health["status"] == "ok" and health["model"] == local.model.identity
    assert health["speakers"] == len(names(client))
    local.close()  # this process's connection to the server's store: open, it would keep the log beside the file


def test_bad_audio_is_400_naming_the_part_and_changes_nothing(client, tmp_path):
    bad = write_bad_audio(tmp_path)
    client.post("/speakers/carol/enroll", files=audio(("c.wav", wav_bytes(3, 2.0))))
    before = names(client)
    for kind in ("empty", "no_frames", "not_audio", "corrupt", "silent", "nan", "short"):
        parts = audio(("good.wav", wav_bytes(3, 2.0, 5)), (f"{kind}.wav", bad[kind].read_bytes()))
        response = client.post("/speakers/carol/enroll", files=parts)
        assert response.status_code == 400, (kind, response.text)
        assert f"audio part 2 ({kind}.wav)" in response.json()["error"]
        response = client.post("/speakers/dave/enroll", files=audio((f"{kind}.wav", bad[kind].read_bytes())))
        assert response.status_code == 400 and f"{kind}.wav" in response.json()["error"]
        for path in ("/speakers/carol/verify", "/identify"):
            response = client.post(path, files=audio((f"{kind}.wav", bad[kind].read_bytes())))
            assert response.status_code == 400 and "Traceback" not in response.text
    assert names(client) == before  # neither carol's count nor a new dave


def test_unknown_speaker_is_404_and_malformed_requests_422(client, server):
    clip = audio(("t.wav", wav_bytes(1, 1.0)))
    for response in (client.post("/speakers/nobody/verify", files=clip), client.delete("/speakers/nobody")):
        assert response.status_code == 404 and response.json() == {
            "error": "speaker 'nobody' is not enrolled (GET /speakers lists who is)"}
    assert str(server.store) not in client.delete("/speakers/nobody").text
    client.post("/speakers/erin/enroll", files=clip)
    malformed = [client.post("/identify"),  # no audio part
                 client.post("/identify", data={"audio": "not a file"}),
                 client.post("/identify", content=b'{"audio": 1}', headers={"Content-Type": "application/json"}),
                 client.post("/identify", params={"top_k": 0}, files=clip),
                 client.post("/identify", params={"top_k": "three"}, files=clip),
                 client.post("/speakers/erin/verify", params={"threshold": "high"}, files=clip),
                 client.post("/speakers/erin/verify", params={"threshold": "nan"}, files=clip),
                 client.post("/speakers/erin/enroll", params={"replace": "perhaps"}, files=clip),
                 client.post("/speakers/%20erin/enroll", files=clip)]
    for response in malformed:
        assert response.status_code == 422, response.text
        assert set(response.json()) == {"error"} and response.json()["error"]
    assert "multipart" in malformed[0].json()["error"] and "top_k" in malformed[4].json()["error"]
    assert client.get("/no/such/route").json() == {"error": "Not Found"}
    assert client.put("/speakers").status_code == 405


def test_token_is_required_on_every_route_but_health(server):
    clip = audio(("t.wav", wav_bytes(1, 1.0)))
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}, {"Authorization": TOKEN},
                    {"Authorization": f"Bearer {TOKEN}x"}, {"Authorization": f"bearer{TOKEN}"}):
        with httpx.Client(base_url=server.url, headers=headers) as anonymous:
            for response in (anonymous.get("/speakers"), anonymous.post("/speakers/mallory/enroll", files=clip),
                             anonymous.post("/speakers/alice/verify", files=clip),
                             anonymous.post("/identify", files=clip), anonymous.delete("/speakers/alice"),
                             anonymous.get("/no/such/route")):
                assert response.status_code == 401 and "token" in response.json()["error"]
                assert response.headers["www-authenticate"] == "Bearer"
            assert anonymous.get("/health").status_code == 200
            assert anonymous.get("/").status_code == 200 and "<script>" in anonymous.get("/").text
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {TOKEN}"}) as client:
        assert "mallory" not in names(client)
        assert client.get("/docs").status_code == 200 and "/speakers/{name}/verify" in client.get("/openapi.json").text


def test_limits_are_413(client):
    long = client.post("/speakers/frank/enroll", files=audio(("long.wav", wav_bytes(4, 5.5))))
    assert long.status_code == 413 and "long.wav" in long.json()["error"] and "5 s" in long.json()["error"]
    big = np.random.default_rng(0).integers(-3000, 3000, 16000 * 40, dtype=np.int16).tobytes()  # 1.2 MiB
    declared = client.post("/speakers/frank/enroll", files=audio(("big.wav", big)))
    assert declared.status_code == 413 and "limit" in declared.json()["error"]
    boundary = "speakertripboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"big.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + big + f"\r\n--{boundary}--\r\n".encode()
    chunked = client.post("/speakers/frank/enroll", content=(body[i:i + 65536] for i in range(0, len(body), 65536)),
                          headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413 and "limit" in chunked.json()["error"]
    assert "frank" not in names(client)
    assert client.post("/speakers/frank/enroll", files=audio(("ok.wav", wav_bytes(4, 4.5)))).status_code == 200


def test_concurrent_enrolments_across_workers_lose_nothing(client):
    clips = [wav_bytes(10 + i % 5, 1.0, seed=i) for i in range(40)]

    def enrol(i):
        name = "crowd" if i % 2 else f"solo{i:02d}"
        return client.post(f"/speakers/{name}/enroll", files=audio((f"{i}.wav", clips[i]))).status_code

    with ThreadPoolExecutor(16) as pool:
        assert list(pool.map(enrol, range(40))) == [200] * 40
    enrolled = names(client)
    assert enrolled["crowd"] == 20 and all(enrolled[f"solo{i:02d}"] == 1 for i in range(0, 40, 2))


def test_cli_refuses_unsafe_or_mismatched_setups(model, tmp_path, capsys):
    other = tiny_model_artifact(tmp_path / "other", seed=1)
    Verifier(other, store=tmp_path / "other.db").enroll("x", [speech_like(1, 1.0)], sample_rate=16000)
    cases = [
        (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without a token"),
        (["--token-file", tmp_path / "missing"], "cannot read the token file"),
        (["--token-file", _write(tmp_path / "short", "abc")], "at least 16 characters"),
        (["--workers", 0], "--workers must be >= 1"),
        (["--max-upload-mb", -1], "max_upload_mb must be a positive number"),
    ]
    for extra, message in cases:
        status = main(["serve", "--model", str(model), "--store", str(tmp_path / "s.db"), *map(str, extra)])
        assert status == 2 and message in capsys.readouterr().err, extra
    status = main(["serve", "--model", str(model), "--store", str(tmp_path / "other.db")])
    assert status == 2 and "embeddings of different models cannot be compared" in capsys.readouterr().err




def test_sigterm_finishes_requests_in_flight_and_a_restart_keeps_every_speaker(server, client, model, tmp_path):
    """Runs last on the module's server: stops it mid-upload, then serves its store again."""
    before, clip, boundary = names(client), wav_bytes(5, 2.0), "b0undary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"late.wav\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + clip + f"\r\n--{boundary}--\r\n".encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as raw:
        raw.sendall(f"POST /speakers/late/enroll HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
                    f"Authorization: Bearer {TOKEN}\r\n"
                    f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n".encode() + body[:100])
        time.sleep(1.0)  # the server has read the headers: the request is in flight
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        time.sleep(1.0)
        assert server.process.poll() is None  # waiting for the upload in flight
        raw.sendall(body[100:])
        reply = b""
        while b"}" not in reply and (chunk := raw.recv(65536)):
            reply += chunk
        stopper.join(60)
    assert reply.startswith(b"HTTP/1.1 200") and b'"utterances":1' in reply
    assert server.process.returncode in (0, -15)
    # issue 30 item 2: every connection closed, the write-ahead log folded into the file and removed, so a
    # copy of the file alone (or a reader that cannot see the log) has every change
    assert not any(server.store.parent.glob(f"{server.store.name}-wal"))
    from speakertrip.verification.sqlite_store import SqliteStore

    copy = tmp_path / "copy.db"
    copy.write_bytes(server.store.read_bytes())
    with SqliteStore(copy) as copied:
        assert {s.name for s in copied.speakers()} == {*before, "late"}
    with Server("--model", model, "--store", server.store, log=tmp_path / "log") as again:
        listed = httpx.get(f"{again.url}/speakers", headers={"Authorization": f"Bearer {TOKEN}"})
        assert listed.status_code == 200  # no token file this time: nothing asks for one
        assert names_of(listed) == {**before, "late": 1}


def _write(path, text):
    path.write_text(text)
    return path
