"""Start `speakertrip serve` in a child process on a free loopback port, for the serve tests."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import soundfile as sf

from speakertrip.testing import speech_like

ROOT = Path(__file__).resolve().parents[1]


def wav_bytes(speaker: int, seconds: float, seed: int = 0, sample_rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, speech_like(speaker, seconds, sample_rate, seed=seed), sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


class Server:
    """``speakertrip serve ARGS --port 0``; ``url`` once it listens; ``stop()`` sends SIGTERM and waits."""

    def __init__(self, *args: object, log: Path, timeout: float = 120.0):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self.log = log
        self.process = subprocess.Popen([sys.executable, "-m", "speakertrip", "serve", "--port", "0",
                                         "--no-access-log", *map(str, args)],
                                        stdout=open(log, "wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            found = re.search(r"running on (http://[\d.]+:\d+)", self.output())
            if found and self._healthy(found.group(1)):  # with workers, the socket listens once one has started
                self.url = found.group(1)
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.process.kill()
                raise RuntimeError(f"speakertrip serve did not start:\n{self.output()}")
            time.sleep(0.1)

    @staticmethod
    def _healthy(url: str) -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=10).status_code == 200
        except httpx.TransportError:
            return False

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

