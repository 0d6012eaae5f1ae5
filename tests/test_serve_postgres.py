"""Two `speakertrip serve` replicas on one PostgreSQL store: what one enrols or deletes the other sees at once;
a database restart under load is a 503 JSON answer (never a traceback), and nothing acknowledged is lost."""

import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from serve_helpers import Server, wav_bytes  # noqa: E402

from speakertrip.testing import tiny_model_artifact  # noqa: E402

pytestmark = pytest.mark.slow  # two servers in their own processes
PASSWORD = "replica-secret-42"


def audio(*parts):
    return [("audio", (name, data, "audio/wav")) for name, data in parts]


@pytest.fixture(scope="module")
def replicas(postgres, tmp_path_factory):
    base = tmp_path_factory.mktemp("replicas")
    database = postgres.new_database()
    postgres.password_role("replica_app", PASSWORD, database)
    url = postgres.url(database, user="replica_app", password=PASSWORD)
    model = tiny_model_artifact(base / "model")
    with Server("--model", model, "--store", url, log=base / "a.log") as a, \
            Server("--model", model, "--store", url, log=base / "b.log") as b:
        yield a, b


def names(url):
    return {s["name"] for s in httpx.get(f"{url}/speakers", timeout=60).json()["speakers"]}


def identified(url, data):
    response = httpx.post(f"{url}/identify", files=audio(("t.wav", data)), timeout=60)
    assert response.status_code == 200, response.text
    return [match["name"] for match in response.json()["matches"]]


def test_enrol_on_one_replica_and_see_it_on_the_other_delete_and_it_is_gone(replicas):
    a, b = replicas
    alice = wav_bytes(1, 2.0, 1)
    response = httpx.post(f"{a.url}/speakers/alice/enroll", timeout=60,
                          files=audio(("a1.wav", alice), ("a2.wav", wav_bytes(1, 2.0, 2))))
    assert response.json() == {"name": "alice", "utterances": 2}
    assert names(b.url) == {"alice"} and identified(b.url, alice)[0] == "alice"
    assert httpx.delete(f"{b.url}/speakers/alice", timeout=60).json() == {"name": "alice", "removed": True}
    assert "alice" not in identified(a.url, alice) and names(a.url) == set()
    health = httpx.get(f"{a.url}/health", timeout=60)
    assert health.status_code == 200 and PASSWORD not in health.text
    assert PASSWORD not in a.output() + b.output()


def test_database_restart_under_load_is_503_and_loses_nothing_acknowledged(replicas, postgres):
    a, b = replicas
    voice = wav_bytes(2, 1.5, 1)
    answers, acknowledged, stop = [], [], threading.Event()

    def load(url, worker):
        step = 0
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                step += 1
                if step % 2:
                    response = client.post(f"/speakers/w{worker}-{step}/enroll", files=audio(("v.wav", voice)))
                    if response.status_code == 200:
                        acknowledged.append(f"w{worker}-{step}")
                else:
                    response = client.post("/identify", files=audio(("t.wav", voice)))
                answers.append((response.status_code, response.headers.get("content-type", ""), response.text))

    workers = [threading.Thread(target=load, args=(url, i)) for i, url in enumerate((a.url, b.url, a.url, b.url))]
    for worker in workers:
        worker.start()
    time.sleep(2)
    postgres.crash()
    down = time.monotonic() + 30  # keep the database down until a request has met the outage (a loaded machine
    while time.monotonic() < down and not any(status == 503 for status, _, _ in answers):  # answers slowly)
        time.sleep(0.2)
    postgres.start()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (answers and answers[-1][0] == 200 and len(answers) > 20):
        time.sleep(0.5)
    time.sleep(1)
    stop.set()
    for worker in workers:
        worker.join(120)
    statuses = {status for status, _, _ in answers}
    assert statuses <= {200, 503}, [answer for answer in answers if answer[0] not in (200, 503)][:3]
    failed = [text for status, _, text in answers if status == 503]
    assert failed and all("PostgreSQL is unavailable" in text and "Traceback" not in text for text in failed)
    assert all(kind.startswith("application/json") for _, kind, _ in answers)
    assert answers[-1][0] == 200  # the replicas reconnected by themselves
    assert set(acknowledged) <= names(a.url) == names(b.url)
    assert PASSWORD not in a.output() + b.output() + "".join(failed)
