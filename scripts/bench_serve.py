"""Benchmark: `speakertrip serve` under concurrent verify requests, beside ``Verifier.verify`` in process; then a soak.

1. ``--files`` utterances of 3 s (16 kHz int16 wav, speech-like voices), one speaker enrolled
   from three more. In process: ``Verifier.verify`` called sequentially on the files for
   ``--seconds`` (the rate a script gets without a service). Served: ``speakertrip serve`` on
   loopback (no access log), then 1, 8 and 32 concurrent clients posting ``/speakers/alice/verify``
   for ``--seconds`` each, after a short warm-up. The clients are a minimal asyncio HTTP/1.1 load
   generator (requests built once, kept-alive connections) so that they take little of the CPU the
   server is measured on. Every answer's score must equal the in-process score of its file (1e-4).
   Prints req/s, p50/p95/p99 latency, errors, and the ratio to the in-process rate.
2. Soak: ``--soak`` enrolments from ``--soak-clients`` concurrent clients into a fresh store
   served by ``--soak-workers`` processes; every ``--bad-every``-th upload is corrupt (the kinds of
   ``speakertrip.testing.write_bad_audio``) and must get a 400; the store must then hold exactly the
   good speakers, one utterance each.

Targets (2 CPU cores, the demo model): 0 errors; at 32 clients >= 1.3x the in-process rate and
p99 < 2 s; the soak's store exact.

    .venv/bin/python scripts/bench_serve.py --model demo_out/exp/model
    nice -n 10 .venv/bin/python scripts/bench_serve.py --model M --seconds 5 --soak 100   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def wav(signal_: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, signal_, 16000, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def request(path: str, filename: str, audio: bytes, port: int) -> bytes:
    """One complete HTTP/1.1 multipart POST, built once and sent many times."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"audio\"; filename=\"{filename}\"\r\n"
            f"Content-Type: audio/wav\r\n\r\n").encode() + audio + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {len(body)}\r\n"
            f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n")
    return head.encode() + body


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes) -> tuple[int, dict]:
    writer.write(message)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    return status, json.loads(await reader.readexactly(length))


class Server:
    """`speakertrip serve` in a child process on a free loopback port."""

    def __init__(self, model: Path, store: Path, workers: int, log: Path):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "speakertrip", "serve", "--model", str(model), "--store", str(store), "--port", "0",
             "--workers", str(workers), "--no-access-log"], stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.process.poll() is None:
            found = re.search(rb"running on http://127\.0\.0\.1:(\d+)", log.read_bytes())
            if found and self.ready(int(found.group(1))):
                self.port = int(found.group(1))
                return
            time.sleep(0.2)
        self.process.kill()
        raise SystemExit(f"the server did not start:\n{log.read_text(errors='replace')}")

    @staticmethod
    def ready(port: int) -> bool:
        async def probe() -> bool:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return False
            writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            ok = (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
            writer.close()
            return ok
        return asyncio.run(probe())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


async def load(port: int, messages: list[tuple[str, bytes]], clients: int, seconds: float,
               expected: dict[str, float], warmup: float = 1.0) -> dict:
    """``clients`` connections posting ``messages`` round-robin for ``seconds`` (after ``warmup``)."""
    latencies, errors, wrong = [], [], 0
    start = time.perf_counter() + warmup
    stop = start + seconds

    async def client(number: int) -> None:
        nonlocal wrong
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = number
        while True:
            key, message = messages[index % len(messages)]
            index += clients
            sent = time.perf_counter()
            if sent >= stop:
                break
            try:
                status, answer = await exchange(reader, writer, message)
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                errors.append(repr(error))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if sent < start:
                continue
            latencies.append(time.perf_counter() - sent)
            if status != 200:
                errors.append(f"{status} {answer}")
            elif abs(answer["score"] - expected[key]) > 1e-4:
                wrong += 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    elapsed = max(time.perf_counter(), stop) - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "rate": len(latencies) / elapsed, "errors": len(errors), "wrong": wrong,
            "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95), "p99": np.percentile(ms, 99),
            "first_error": errors[0] if errors else ""}


async def soak(port: int, uploads: list[tuple[str, bool, bytes]], clients: int) -> tuple[int, list[str]]:
    """Enrol every upload; returns the number of answers that were not 200 for good / 400 for bad, and notes."""
    queue: asyncio.Queue = asyncio.Queue()
    for item in uploads:
        queue.put_nowait(item)
    unexpected: list[str] = []

    async def client() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while not queue.empty():
            name, good, audio = queue.get_nowait()
            status, answer = await exchange(reader, writer, request(f"/speakers/{name}/enroll", f"{name}.wav", audio,
                                                                    port))
            if status != (200 if good else 400):
                unexpected.append(f"{name}: {status} {answer}")
        writer.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return len(unexpected), unexpected[:3]


def sequential_rate(verifier, paths: list[Path], seconds: float) -> float:
    """Verifications per second of ``Verifier.verify`` called on ``paths`` in turn for ``seconds``."""
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        verifier.verify("alice", paths[count % len(paths)])
        count += 1
    return count / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo_out/exp/model"), help="model artifact")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--files", type=int, default=32, help="distinct 3 s test files")
    parser.add_argument("--workers", type=int, default=1, help="server processes for the load test")
    parser.add_argument("--soak", type=int, default=500, help="enrolments in the soak (0: none)")
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument("--soak-workers", type=int, default=2)
    parser.add_argument("--bad-every", type=int, default=7, help="every n-th soak upload is corrupt")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from speakertrip.extraction import load_model
    from speakertrip.testing import speech_like, write_bad_audio
    from speakertrip.verification import Verifier

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    model = load_model(args.model)
    print(f"model {args.model} ({model.identity[:12]}, {model.encoder_name}), {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, {args.files} files of 3 s, {args.seconds:g} s per level")
    paths = []
    for index in range(args.files):
        paths.append(work / f"test{index:03d}.wav")
        paths[-1].write_bytes(wav(speech_like(1 + index % 8, 3.0, seed=100 + index)))
    verifier = Verifier(model, store=work / "load.db", threshold=model.threshold if model.threshold is not None else 0.5)
    verifier.enroll("alice", [speech_like(1, 3.0, seed=seed) for seed in range(3)], sample_rate=16000)
    expected = {path.name: verifier.verify("alice", path).score for path in paths}  # also warms up
    before = sequential_rate(verifier, paths, args.seconds)
    print(f"in process, sequential Verifier.verify: {before:.1f} verifications/s")

    server = Server(args.model, work / "load.db", args.workers, work / "load.log")
    messages = [(p.name, request("/speakers/alice/verify", p.name, p.read_bytes(), server.port)) for p in paths]
    print(f"\nspeakertrip serve, {args.workers} worker(s), POST /speakers/alice/verify with 3 s of audio")
    print(f"{'clients':>7} {'requests':>8} {'req/s':>7} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} {'errors':>6} "
          f"{'wrong':>5} {'vs in-process':>13}")
    results = {}
    for clients in args.clients:
        result = results[clients] = asyncio.run(load(server.port, messages, clients, args.seconds, expected))
        print(f"{clients:>7} {result['requests']:>8} {result['rate']:>7.1f} {result['p50']:>7.0f} {result['p95']:>7.0f} "
              f"{result['p99']:>7.0f} {result['errors']:>6} {result['wrong']:>5} {result['rate'] / before:>12.2f}x"
              + (f"  first error: {result['first_error']}" if result["errors"] else ""))
    server.stop()
    after = sequential_rate(verifier, paths, args.seconds)
    in_process = max(before, after)
    ratios = ", ".join(f"{clients} clients {result['rate'] / in_process:.2f}x" for clients, result in results.items())
    print(f"in process again: {after:.1f} verifications/s; ratios to the higher of the two: {ratios}")

    soak_ok = True
    if args.soak:
        bad = write_bad_audio(work / "bad")
        kinds = ["empty", "no_frames", "not_audio", "corrupt", "silent", "nan", "short"]
        uploads = []
        for index in range(args.soak):
            corrupt = index % args.bad_every == args.bad_every - 1
            audio = (bad[kinds[index % len(kinds)]].read_bytes() if corrupt
                     else wav(speech_like(index % 50, 1.5, seed=index)))
            uploads.append((f"soak{index:04d}", not corrupt, audio))
        server = Server(args.model, work / "soak.db", args.soak_workers, work / "soak.log")
        started = time.perf_counter()
        unexpected, notes = asyncio.run(soak(server.port, uploads, args.soak_clients))
        elapsed = time.perf_counter() - started
        server.stop()
        from speakertrip.verification import EnrollmentStore

        with EnrollmentStore(work / "soak.db", create=False) as store:
            held = {(s.name, s.num_utterances) for s in store.speakers()}
        good = {(name, 1) for name, ok, _ in uploads if ok}
        soak_ok = held == good and unexpected == 0
        print(f"\nsoak: {args.soak} enrolments ({args.soak - len(good)} corrupt) from {args.soak_clients} clients, "
              f"{args.soak_workers} worker(s), {elapsed:.1f} s ({args.soak / elapsed:.1f}/s); unexpected answers "
              f"{unexpected}{' ' + str(notes) if notes else ''}; store holds {len(held)} speakers, "
              f"exactly the {len(good)} good ones: {'yes' if held == good else 'NO'}")

    top = results.get(32) or results[max(results)]
    targets = [("0 errors and 0 wrong scores", all(r["errors"] == 0 and r["wrong"] == 0 for r in results.values())),
               (f"throughput at {max(results)} clients >= 1.3x in-process", top["rate"] >= 1.3 * in_process),
               (f"p99 at {max(results)} clients < 2 s", top["p99"] < 2000), ("soak store exact", soak_ok)]
    print("\ntargets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets))


if __name__ == "__main__":
    main()
