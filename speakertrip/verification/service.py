"""The service behind ``speakertrip serve``: uploaded audio → Verifier calls → plain dicts, free of HTTP.

Each request thread gets its own :class:`Verifier` on the shared model and the one open store
(which keeps a connection per thread, and closes them all, folding SQLite's write-ahead log into
the file, when the service closes); all of them embed through one :class:`EmbeddingBatcher`, so
concurrent requests share forward passes. Uploads are decoded in the request threads and
checked against the limits before anything reaches the model or the store.

>>> import tempfile
>>> from speakertrip.testing import speech_like, tiny_model_artifact
>>> import io, soundfile as sf
>>> def wav(speaker, seed):
...     buffer = io.BytesIO(); sf.write(buffer, speech_like(speaker, 1.5, seed=seed), 16000, format="WAV")
...     return buffer.getvalue()
>>> service = SpeakerService(ServiceSettings(model=str(tiny_model_artifact()), store=tempfile.mkdtemp() + "/s.db"))
>>> service.enroll("alice", [("a1.wav", wav(1, 1)), ("a2.wav", wav(1, 2))])
{'name': 'alice', 'utterances': 2}
>>> sorted(service.verify("alice", ("t.wav", wav(1, 3))))
['accepted', 'name', 'score', 'threshold']
>>> service.close()
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import soundfile as sf
import torch

from speakertrip.audio import check_sample_rate, prepare_waveform
from speakertrip.errors import AudioError, ConfigError, KeyNotFoundError, SpeakertripError
from speakertrip.models import load_model
from speakertrip.models.backends import BACKENDS
from speakertrip.verification.batching import EmbeddingBatcher
from speakertrip.verification.enrolment_store import check_name
from speakertrip.verification.stores import open_store
from speakertrip.verification.verifier import Verifier

Upload = tuple[str, bytes]  # (how errors name it, the file's bytes)


class LimitError(SpeakertripError):
    """An upload or its audio is over the service's limits (HTTP 413)."""


@dataclass(frozen=True)
class ServiceSettings:
    """What ``speakertrip serve`` was started with; JSON-serialisable, so worker processes get the same."""

    model: str
    store: str
    device: str = "cpu"
    threshold: float | None = None
    norm: str | None = None
    token_file: str | None = None
    threads: int | None = None
    backend: str = "auto"  # how embeddings are computed (speakertrip.models.backends)
    max_audio_seconds: float = 60.0
    min_audio_seconds: float = 0.5
    max_request_audio_seconds: float = 300.0
    max_parts: int = 20
    max_upload_mb: float = 20.0
    batch_window_ms: float = 5.0
    allowed_hosts: tuple[str, ...] = ()  # Host names answered without a token, beyond the loopback ones
    header_timeout: float = 10.0  # seconds for a request's headers to arrive
    body_timeout: float = 120.0  # seconds for its body to arrive after them
    max_connections: int = 200  # open at once, per worker

    def __post_init__(self) -> None:
        object.__setattr__(self, "allowed_hosts", tuple(self.allowed_hosts))  # a list, back from JSON
        for key in ("max_audio_seconds", "min_audio_seconds", "max_request_audio_seconds", "max_parts",
                    "max_upload_mb", "batch_window_ms", "header_timeout", "body_timeout", "max_connections"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0 or (value == 0 and key != "batch_window_ms"):
                raise ConfigError(f"{key} must be a positive number, got {value}")
        for low, high in (("min_audio_seconds", "max_audio_seconds"),
                          ("max_audio_seconds", "max_request_audio_seconds")):
            if getattr(self, low) > getattr(self, high):
                raise ConfigError(f"{low} {getattr(self, low)} is over {high} {getattr(self, high)}")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be >= 1, got {self.threads}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"unknown backend {self.backend!r}; valid: {', '.join(BACKENDS)}")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ServiceSettings:
        return cls(**json.loads(text))

    def read_token(self) -> str | None:
        """The bearer token in ``token_file`` (surrounding whitespace stripped), or None without one."""
        if self.token_file is None:
            return None
        path = Path(self.token_file)
        try:
            token = path.read_text().strip()
        except OSError as error:
            raise ConfigError(f"{path}: cannot read the token file: {error.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: the token file is not text") from None
        if len(token) < 16 or any(ch.isspace() for ch in token):
            raise ConfigError(f"{path}: a token must be one word of at least 16 characters, e.g. the output of "
                              "`python -c 'import secrets; print(secrets.token_urlsafe(32))'`")
        return token


def check_device(name: str) -> torch.device:
    """The torch device ``name`` names, if this machine has it; ConfigError otherwise (``banana``, ``cuda``
    without CUDA, ``cuda:3`` on a machine with two GPUs).

    >>> check_device("cpu")
    device(type='cpu')
    """
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"device {name!r} is not a torch device; expected cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        found = f"{torch.cuda.device_count()} CUDA device(s)" if torch.cuda.is_available() else "no CUDA"
        raise ConfigError(f"device {name!r} is not available: this machine has {found}; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {name!r} is not available on this machine; use --device cpu")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device {name!r} is not supported by the service; expected cpu, cuda, cuda:N or mps")
    return device


class _BatchedVerifier(Verifier):
    """A Verifier whose embeddings come from the shared batcher (waveforms at the model's rate)."""

    batcher: EmbeddingBatcher

    def _embed(self, items: Sequence[Any], sample_rate: int | None) -> np.ndarray:
        return self.batcher.embed(items)


class SpeakerService:
    """Enrol, verify, identify and list speakers from uploaded audio; every answer is a JSON-ready dict.

    Raises ``AudioError`` (unusable audio), ``LimitError`` (over a limit), ``KeyNotFoundError``
    (unknown speaker), ``ConfigError`` (bad name or option), each naming the part or key.
    """

    def __init__(self, settings: ServiceSettings):
        self.settings = settings
        check_device(settings.device)
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.model = load_model(settings.model, device=settings.device)
        self._local = threading.local()
        self.store = open_store(settings.store, self.model.identity, self.model.embedding_dim)
        self.batcher = EmbeddingBatcher(self.model, window=settings.batch_window_ms / 1000, backend=settings.backend)
        try:
            self.threshold = self.verifier().threshold  # checks the store's model and the threshold now
        except BaseException:
            self.close()
            raise

    def verifier(self) -> Verifier:
        """This thread's Verifier (on the shared store)."""
        verifier = getattr(self._local, "verifier", None)
        if verifier is None:
            verifier = _BatchedVerifier(self.model, self.store, threshold=self.settings.threshold,
                                        norm=self.settings.norm, backend=self.settings.backend)
            verifier.batcher = self.batcher
            self._local.verifier = verifier
        return verifier

    def close(self) -> None:
        """Stop the batcher and close the store (every connection; SQLite folds its log into the file)."""
        self.batcher.close()
        self.store.close()

    # ---- requests -----------------------------------------------------------------------------
    def health(self) -> dict:
        """Reads the store now (:meth:`EnrolmentStore.check`) and, for SQLite, every speaker's centroid as
        /identify does (cached until the store changes), so that "ok" means requests can read what it
        reports; a store that cannot be read is a StoreError (503)."""
        checked = self.store.check()
        if self.store.backend == "sqlite":  # a count can pass over a damaged page that every search reads
            checked["speakers"] = len(self.store.centroids()[0])
        return {"status": "ok", "model": self.model.identity, "speakers": checked["speakers"],
                "store": {key: value for key, value in checked.items() if key not in ("store", "speakers", "model")}}

    def speakers(self) -> dict:
        return {"speakers": [{"name": s.name, "utterances": s.num_utterances, "updated": s.updated}
                             for s in self.verifier().store.speakers()]}

    def enroll(self, name: str, uploads: Sequence[Upload], replace: bool = False) -> dict:
        check_name(name)
        if not uploads:
            raise ConfigError(f"no audio parts given to enrol {name!r}")
        with self.batcher.coming():
            waves = self.decode_all(uploads)
            total = self.verifier().enroll(name, waves, replace=replace, sample_rate=self.model.sample_rate)
        return {"name": name, "utterances": total}

    def verify(self, name: str, upload: Upload, threshold: float | None = None) -> dict:
        if threshold is not None and not math.isfinite(threshold):
            raise ConfigError(f"threshold must be a finite number, got {threshold}")
        verifier = self._enrolled(name)  # an unknown name is a 404 before the audio is looked at
        with self.batcher.coming():
            result = verifier.verify(name, self.decode(upload), sample_rate=self.model.sample_rate)
        answer = {"name": result.name, "score": result.score, "threshold": result.threshold,
                  "accepted": bool(result.accepted)}
        if threshold is not None:
            answer.update(threshold=threshold, accepted=result.score >= threshold)
        llr = getattr(result, "llr", None)  # present when the model carries a score calibration
        if llr is not None:
            answer["llr"] = float(llr)
        return answer

    def identify(self, upload: Upload, top_k: int = 5) -> dict:
        with self.batcher.coming():
            matches = self.verifier().identify(self.decode(upload), top_k=top_k, sample_rate=self.model.sample_rate)
        return {"matches": [{"name": m.name, "score": m.score} for m in matches], "threshold": self.threshold}

    def remove(self, name: str) -> dict:
        self._enrolled(name).remove(name)
        return {"name": name, "removed": True}

    def _enrolled(self, name: str) -> Verifier:
        """This thread's Verifier, after checking that ``name`` is enrolled (errors do not show the store's path)."""
        verifier = self.verifier()
        if name not in verifier.store:
            raise KeyNotFoundError(f"speaker {name!r} is not enrolled (GET /speakers lists who is)")
        return verifier

    # ---- audio --------------------------------------------------------------------------------
    def decode(self, upload: Upload) -> np.ndarray:
        """One uploaded file → mono float32 at the model's rate, within the limits."""
        return self.decode_all([upload])[0]

    def decode_all(self, uploads: Sequence[Upload]) -> list[np.ndarray]:
        """Uploaded files → mono float32 at the model's rate. Every header is checked against the limits
        (parts, rate, seconds per part and in all) before any samples are decoded."""
        settings = self.settings
        if len(uploads) > settings.max_parts:
            raise LimitError(f"{len(uploads)} audio parts are over this service's limit of {settings.max_parts} "
                             "per request (--max-parts)")
        handles = []
        try:
            total = 0.0
            for label, data in uploads:
                handles.append((label, self._open(label, data)))
                total += handles[-1][1].frames / handles[-1][1].samplerate
            if total > settings.max_request_audio_seconds:
                raise LimitError(f"{total:.1f} s of audio in {len(uploads)} parts is over this service's limit of "
                                 f"{settings.max_request_audio_seconds:g} s per request (--max-request-audio-seconds)")
            return [self._read(label, handle) for label, handle in handles]
        finally:
            for _, handle in handles:
                handle.close()

    def _open(self, label: str, data: bytes) -> sf.SoundFile:
        """The upload opened for reading, its rate and duration within the limits (nothing decoded yet)."""
        settings = self.settings
        if not data:
            raise AudioError(f"{label}: empty upload (0 bytes)")
        try:
            handle = sf.SoundFile(io.BytesIO(data))
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            raise _unreadable(label, error) from None
        try:
            rate = check_sample_rate(handle.samplerate, label)
            if handle.frames > settings.max_audio_seconds * rate:
                raise LimitError(f"{label}: {handle.frames / rate:.1f} s of audio is over this service's limit of "
                                 f"{settings.max_audio_seconds:g} s")
        except BaseException:
            handle.close()
            raise
        return handle

    def _read(self, label: str, handle: sf.SoundFile) -> np.ndarray:
        try:
            signal = handle.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            raise _unreadable(label, error) from None
        mono = signal[:, 0] if signal.shape[1] == 1 else signal.mean(axis=1, dtype=np.float32)
        return prepare_waveform(mono, handle.samplerate, self.model.sample_rate, self.settings.min_audio_seconds,
                                name=label)


def _unreadable(label: str, error: Exception) -> AudioError:
    reason = str(getattr(error, "error_string", error)).rstrip(".")
    return AudioError(f"{label}: not a readable audio file (expected wav, flac or ogg): {reason}")
