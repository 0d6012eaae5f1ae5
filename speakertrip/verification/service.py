"""The service behind ``speakertrip serve``: uploaded audio → Verifier calls → plain dicts, free of HTTP.

Each request thread gets its own :class:`Verifier` (SQLite connections belong to one thread) on
the shared model and store file; all of them embed through one :class:`EmbeddingBatcher`, so
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

from speakertrip.audio import prepare_waveform
from speakertrip.errors import AudioError, ConfigError, KeyNotFoundError, SpeakertripError
from speakertrip.models import load_model
from speakertrip.verification.batching import EmbeddingBatcher
from speakertrip.verification.enrolment_store import EnrolmentStore, check_name
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
    max_audio_seconds: float = 60.0
    min_audio_seconds: float = 0.5
    max_upload_mb: float = 20.0
    batch_window_ms: float = 5.0

    def __post_init__(self) -> None:
        for key in ("max_audio_seconds", "min_audio_seconds", "max_upload_mb", "batch_window_ms"):
            value = getattr(self, key)
            if not math.isfinite(value) or value < 0 or (value == 0 and key != "batch_window_ms"):
                raise ConfigError(f"{key} must be a positive number, got {value}")
        if self.min_audio_seconds > self.max_audio_seconds:
            raise ConfigError(f"min_audio_seconds {self.min_audio_seconds} is over max_audio_seconds "
                              f"{self.max_audio_seconds}")

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
        if settings.threads:
            torch.set_num_threads(settings.threads)
        self.model = load_model(settings.model, device=settings.device)
        self._local = threading.local()
        self.batcher = EmbeddingBatcher(self.model, window=settings.batch_window_ms / 1000)
        try:
            self.threshold = self.verifier().threshold  # checks the store's model and the threshold now
        except BaseException:
            self.batcher.close()
            raise

    def verifier(self) -> Verifier:
        """This thread's Verifier (its own SQLite connection to the store)."""
        verifier = getattr(self._local, "verifier", None)
        if verifier is None:
            store = EnrolmentStore(self.settings.store, self.model.identity, self.model.embedding_dim)
            verifier = _BatchedVerifier(self.model, store, threshold=self.settings.threshold, norm=self.settings.norm)
            verifier.batcher = self.batcher
            self._local.verifier = verifier
        return verifier

    def close(self) -> None:
        self.batcher.close()

    # ---- requests -----------------------------------------------------------------------------
    def health(self) -> dict:
        return {"status": "ok", "model": self.model.identity, "speakers": len(self.verifier().store)}

    def speakers(self) -> dict:
        return {"speakers": [{"name": s.name, "utterances": s.num_utterances, "updated": s.updated}
                             for s in self.verifier().store.speakers()]}

    def enroll(self, name: str, uploads: Sequence[Upload], replace: bool = False) -> dict:
        check_name(name)
        if not uploads:
            raise ConfigError(f"no audio parts given to enrol {name!r}")
        with self.batcher.coming():
            waves = [self.decode(upload) for upload in uploads]
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
        """One uploaded file → mono float32 at the model's rate, within the duration limits."""
        label, data = upload
        settings = self.settings
        if not data:
            raise AudioError(f"{label}: empty upload (0 bytes)")
        try:
            with sf.SoundFile(io.BytesIO(data)) as handle:
                rate, frames = handle.samplerate, handle.frames
                if frames > settings.max_audio_seconds * rate:
                    raise LimitError(f"{label}: {frames / rate:.1f} s of audio is over this service's limit of "
                                     f"{settings.max_audio_seconds:g} s")
                signal = handle.read(dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as error:
            reason = str(getattr(error, "error_string", error)).rstrip(".")
            raise AudioError(f"{label}: not a readable audio file (expected wav, flac or ogg): {reason}") from None
        mono = signal[:, 0] if signal.shape[1] == 1 else signal.mean(axis=1, dtype=np.float32)
        return prepare_waveform(mono, rate, self.model.sample_rate, settings.min_audio_seconds, name=label)
