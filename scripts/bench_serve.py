"""Benchmark: `speakertrip serve` under concurrent verify requests, beside ``Verifier.verify`` in process; then a soak.

1. ``--files`` utterances of 3 s (16 kHz int16 wav, speech-like voices), one speaker enrolled
   from three more. Served: ``speakertrip serve`` on loopback (no access log) with 1, 8 and 32
   concurrent clients posting ``/speakers/alice/verify``; in process: ``Verifier.verify`` called
   sequentially on the same files (the rate a script gets without a service), both with ``--backend``
   (default auto: what ``serve`` and ``Verifier`` use). ``--workers 1 2`` sweeps the server processes
   (each level of clients runs against each). The two alternate in
   ``--rounds`` rounds per level, ``--seconds`` in all for each, so that the load of a shared machine
   hits both alike. The clients are a minimal asyncio HTTP/1.1 load generator (requests built once,
   kept-alive connections) so that they take little of the CPU the server is measured on. Every
   answer's score must equal the in-process score of its file (1e-4; a low-precision backend's
   tolerance for it, since a batch may round a row otherwise than alone). Prints req/s beside the
   in-process rate, their ratio, p50/p95/p99 latency, errors, and CPU milliseconds per request
   (server process and children, from /proc) beside CPU per in-process verification: the CPU
   figures hardly depend on what else the machine runs.
2. Soak: ``--soak`` enrolments from ``--soak-clients`` concurrent clients into a fresh store
   served by ``--soak-workers`` processes; every ``--bad-every``-th upload is corrupt (the kinds of
   ``speakertrip.testing.write_bad_audio``) and must get a 400; the store must then hold exactly the
   good speakers, one utterance each.

Targets (2 CPU cores, the demo model): 0 errors; at 32 clients >= 2x the in-process rate and
p99 < 1 s (the best worker count); the soak's store exact.

    .venv/bin/python scripts/bench_serve.py --model demo_out/exp/model --workers 1 2
    nice -n 10 .venv/bin/python scripts/bench_serve.py --model M --seconds 5 --soak 100   # quick look
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
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

    def __init__(self, model: Path, store: Path, workers: int, log: Path, backend: str = "auto",
                 threshold: float | None = None):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "speakertrip", "serve", "--model", str(model), "--store", str(store), "--port", "0",
             "--workers", str(workers), "--backend", backend, "--no-access-log",
             *([] if threshold is None else ["--threshold", str(threshold)])], stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
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
            writer.write(f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            ok = (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 200")
            writer.close()
            return ok
        return asyncio.run(probe())

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(60)


@dataclass
class Tally:
    """What one system did in the measured time: completions, wall and CPU seconds, latencies, failures."""

    done: int = 0
    seconds: float = 0.0
    cpu: float = 0.0
    latencies: list = field(default_factory=list)
    errors: list = field(default_factory=list)
    wrong: int = 0

    def percentile(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, q)) if self.latencies else float("nan")


async def load(port: int, messages: list[tuple[str, bytes]], clients: int, seconds: float,
               expected: dict[str, float], tally: Tally, warmup: float, tolerance: float = 1e-4) -> int:
    """``clients`` connections posting ``messages`` round-robin for ``seconds`` after ``warmup``; returns every
    completed request, warm-up included (for CPU per request)."""
    start = time.perf_counter() + warmup
    stop = start + seconds
    completed = 0

    async def client(number: int) -> None:
        nonlocal completed
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        index = number
        while (sent := time.perf_counter()) < stop:
            key, message = messages[index % len(messages)]
            index += clients
            try:
                status, answer = await exchange(reader, writer, message)
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                tally.errors.append(repr(error))
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            completed += 1
            if sent < start:
                continue
            tally.done += 1
            tally.latencies.append(time.perf_counter() - sent)
            if status != 200:
                tally.errors.append(f"{status} {answer}")
            elif abs(answer["score"] - expected[key]) > tolerance:
                tally.wrong += 1
        writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    tally.seconds += max(time.perf_counter(), stop) - start
    return completed


def sequential(verifier, paths: list[Path], seconds: float, tally: Tally) -> None:
    """``Verifier.verify`` on ``paths`` in turn for ``seconds``, in this process."""
    count, cpu, started = 0, time.process_time(), time.perf_counter()
    while time.perf_counter() - started < seconds:
        verifier.verify("alice", paths[(tally.done + count) % len(paths)])
        count += 1
    tally.done += count
    tally.seconds += time.perf_counter() - started
    tally.cpu += time.process_time() - cpu


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its children (Linux /proc), seconds."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat.parent.name == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    try:
        run(work)
    finally:
        shutil.rmtree(work)


def run(work: Path) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=Path("demo_out/exp/model"), help="model artifact")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per level and system")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of the two systems per level")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--files", type=int, default=32, help="distinct 3 s test files")
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="server processes for the load test "
                        "(several: a sweep)")
    parser.add_argument("--backend", default="auto", help="embedding backend of the server and the in-process "
                        "Verifier (speakertrip.models.backends)")
    parser.add_argument("--soak", type=int, default=500, help="enrolments in the soak (0: none)")
    parser.add_argument("--soak-clients", type=int, default=16)
    parser.add_argument("--soak-workers", type=int, default=2)
    parser.add_argument("--bad-every", type=int, default=7, help="every n-th soak upload is corrupt")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import torch

    from speakertrip.models import load_model
    from speakertrip.models.backends import resolve_backend
    from speakertrip.testing import speech_like, write_bad_audio
    from speakertrip.verification import Verifier

    model = load_model(args.model)
    backend = resolve_backend(model, args.backend, "cpu")
    tolerance = {"bfloat16": 1e-2, "int8": 3e-2}.get(backend, 1e-4)  # tests/test_backends.py's, for scores
    print(f"model {args.model} ({model.identity[:12]}, {model.encoder_name}), {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}, backend {args.backend} = {backend}, {args.files} files of 3 s, "
          f"{args.seconds:g} s per level, load average {os.getloadavg()[0]:.1f}")
    paths = []
    for index in range(args.files):
        paths.append(work / f"test{index:03d}.wav")
        paths[-1].write_bytes(wav(speech_like(1 + index % 8, 3.0, seed=100 + index)))
    verifier = Verifier(model, store=work / "load.db", threshold=model.threshold if model.threshold is not None else 0.5,
                        backend=args.backend)
    verifier.enroll("alice", [speech_like(1, 3.0, seed=seed) for seed in range(3)], sample_rate=16000)
    expected = {path.name: verifier.verify("alice", path).score for path in paths}  # also warms up
    verifier.store.close()
    verifier = Verifier(model, store=work / "load.db", threshold=verifier.threshold,
                        backend=args.backend)  # reads while the server runs
    print(f"speakertrip serve: POST /speakers/alice/verify with 3 s of audio, alternating with in-process "
          f"sequential Verifier.verify in {args.rounds} rounds per level\n")
    print(f"{'workers':>7} {'clients':>7} {'requests':>8} {'req/s':>7} {'in-proc/s':>9} {'ratio':>6} {'p50 ms':>7} "
          f"{'p95 ms':>7} {'p99 ms':>7} {'errors':>6} {'wrong':>5} {'CPU ms/req':>10} {'in-proc CPU ms':>14}")
    results = {}
    for workers in args.workers:
        server = Server(args.model, work / "load.db", workers, work / f"load{workers}.log", args.backend,
                        verifier.threshold)
        messages = [(p.name, request("/speakers/alice/verify", p.name, p.read_bytes(), server.port)) for p in paths]
        for clients in args.clients:
            served, alone, served_all = Tally(), Tally(), 0
            for _ in range(args.rounds):  # load on a shared machine changes: let it hit both systems alike
                sequential(verifier, paths, args.seconds / args.rounds, alone)
                cpu = cpu_seconds(server.process.pid)
                served_all += asyncio.run(load(server.port, messages, clients, args.seconds / args.rounds, expected,
                                               served, warmup=0.5, tolerance=tolerance))
                served.cpu += cpu_seconds(server.process.pid) - cpu
            rate, base = served.done / served.seconds, alone.done / alone.seconds
            results[workers, clients] = (served, rate / base)
            print(f"{workers:>7} {clients:>7} {served.done:>8} {rate:>7.1f} {base:>9.1f} {rate / base:>5.2f}x "
                  f"{served.percentile(50):>7.0f} {served.percentile(95):>7.0f} {served.percentile(99):>7.0f} "
                  f"{len(served.errors):>6} {served.wrong:>5} {1000 * served.cpu / max(served_all, 1):>10.1f} "
                  f"{1000 * alone.cpu / alone.done:>14.1f}" + (f"  first error: {served.errors[0]}" if served.errors else ""))
        server.stop()

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
        server = Server(args.model, work / "soak.db", args.soak_workers, work / "soak.log", args.backend,
                        verifier.threshold)
        started = time.perf_counter()
        unexpected, notes = asyncio.run(soak(server.port, uploads, args.soak_clients))
        elapsed = time.perf_counter() - started
        server.stop()
        from speakertrip.verification import open_store

        with open_store(work / "soak.db", create=False) as store:
            held = {(s.name, s.num_utterances) for s in store.speakers()}
        good = {(name, 1) for name, ok, _ in uploads if ok}
        soak_ok = held == good and unexpected == 0
        print(f"\nsoak: {args.soak} enrolments ({args.soak - len(good)} corrupt) from {args.soak_clients} clients, "
              f"{args.soak_workers} worker(s), {elapsed:.1f} s ({args.soak / elapsed:.1f}/s); unexpected answers "
              f"{unexpected}{' ' + str(notes) if notes else ''}; store holds {len(held)} speakers, "
              f"exactly the {len(good)} good ones: {'yes' if held == good else 'NO'}")

    most = max(args.clients)
    best = max(args.workers, key=lambda workers: results[workers, most][1])
    top, ratio = results[best, most]
    targets = [("0 errors and 0 wrong scores", all(not r.errors and not r.wrong for r, _ in results.values())),
               (f"throughput at {most} clients >= 2x in-process ({best} worker(s): {ratio:.2f}x)", ratio >= 2.0),
               (f"p99 at {most} clients < 1 s ({top.percentile(99):.0f} ms)", top.percentile(99) < 1000),
               ("soak store exact", soak_ok)]
    print("\ntargets: " + "; ".join(f"{name}: {'met' if ok else 'MISSED'}" for name, ok in targets))


if __name__ == "__main__":
    main()
