"""The HTTP face of :class:`~speakertrip.verification.service.SpeakerService`: a FastAPI app (the ``serve`` extra).

Routes answer JSON; errors are ``{"error": "..."}`` with 400 (unusable audio, a repeated header),
401 (token), 403 (a cross-site write, a foreign ``Host``, a read-only store), 404 (unknown speaker or
route), 409 (a store of another model), 413 (over a limit), 422 (malformed request) and 503 (the
store is damaged or unreachable). With a token every route needs ``Authorization: Bearer <token>``
except ``/health`` and the static pages (``/``, ``/docs``, ``/openapi.json``), which hold no data.
Without one (loopback only), the ``Host`` header must name the loopback address, so that a web page
cannot reach the service through DNS rebinding. A write whose ``Origin`` is another site is refused
either way. The request body is counted as it arrives, so an oversized upload is refused before it
is read whole; slow clients are cut off by :mod:`speakertrip.verification.connections`.

>>> import tempfile
>>> from pathlib import Path
>>> from fastapi.testclient import TestClient
>>> from speakertrip.testing import tiny_model_artifact
>>> folder = Path(tempfile.mkdtemp())
>>> settings = ServiceSettings(model=str(tiny_model_artifact(folder / "model")), store=str(folder / "speakers.db"))
>>> with TestClient(create_app(settings), base_url="http://127.0.0.1") as client:
...     client.get("/health").json()["status"]
'ok'
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from importlib import resources
from typing import Annotated, AsyncIterator
from urllib.parse import unquote_to_bytes, urlsplit

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from speakertrip import __version__
from speakertrip.errors import (AudioError, ConfigError, CorruptStoreError, KeyNotFoundError, ReadOnlyStoreError,
                                SpeakertripError, StoreError, StoreUnavailableError)
from speakertrip.verification.connections import GuardedH11Protocol
from speakertrip.verification.enrolment_store import ModelMismatchError
from speakertrip.verification.service import LimitError, ServiceSettings, SpeakerService

SETTINGS_VARIABLE = "SPEAKERTRIP_SERVE_SETTINGS"  # how `speakertrip serve` hands its settings to workers
PUBLIC_PATHS = frozenset({"/health", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
STATUS = ((AudioError, 400), (ReadOnlyStoreError, 403), (KeyNotFoundError, 404), (ModelMismatchError, 409),
          (LimitError, 413), (ConfigError, 422), (StoreUnavailableError, 503), (CorruptStoreError, 503),
          (StoreError, 503))
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SINGLE_HEADERS = (b"authorization", b"host", b"origin", b"content-length", b"content-type")
log = logging.getLogger("uvicorn.error")  # formatted and shown like the server's own messages
AudioParts = Annotated[list[UploadFile], File(description="one or more wav/flac/ogg files")]
OneAudio = Annotated[UploadFile, File(description="a wav/flac/ogg file")]


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def host_name(value: str) -> str:
    """The host of a ``Host`` header or an origin's netloc, lower-case, without port or IPv6 brackets.

    >>> host_name("LocalHost:8000"), host_name("[::1]:80"), host_name("127.0.0.1")
    ('localhost', '::1', '127.0.0.1')
    """
    return (urlsplit(f"//{value}").hostname or "") if value else ""


class Guard:
    """ASGI middleware, before any route runs: one of each security header, the ``Host`` of a tokenless
    service, the ``Origin`` of writes, the bearer token (constant-time compare) and the upload limit."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int,
                 allowed_hosts: frozenset[str] = frozenset()):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.token = None if token is None else f"Bearer {token}".encode()
        self.allowed_hosts = None if token is not None else \
            LOOPBACK_NAMES | {host_name(name) or name.lower() for name in allowed_hosts}  # "example.org:443" too

    def refusal(self, scope: Scope, headers: dict[bytes, bytes]) -> JSONResponse | None:
        """The answer to a request that must not reach a route (400, 403), or None."""
        try:  # uvicorn decodes the path with replacement: two different names would meet in one U+FFFD
            unquote_to_bytes(scope.get("raw_path") or b"").decode("utf-8")
        except UnicodeDecodeError:
            return _error(400, "the URL's path is not UTF-8 once percent-decoded; speaker names are UTF-8 text")
        names = [name for name, _ in scope["headers"]]
        repeated = sorted({name.decode() for name in SINGLE_HEADERS if names.count(name) > 1})
        if repeated:
            return _error(400, f"header {', '.join(repeated)} given more than once; send it once")
        host = headers.get(b"host", b"").decode("latin-1")
        if self.allowed_hosts is not None and host_name(host) not in self.allowed_hosts:
            return _error(403, f"Host {host!r} is not this service's address (without a token it answers only "
                               f"{', '.join(sorted(self.allowed_hosts))}; add names with --allowed-host)")
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in SAFE_METHODS:
            where = urlsplit(origin.decode("latin-1"))
            if where.netloc.lower() != host.lower() or where.scheme not in ("http", "https"):
                return _error(403, f"cross-site request refused: Origin {origin.decode('latin-1')!r} is not this "
                                   "service; a web page of another site cannot enrol or delete speakers")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        refused = self.refusal(scope, headers)
        if refused is not None:
            await refused(scope, receive, send)
            return
        if self.token is not None and scope["path"] not in PUBLIC_PATHS:
            given = headers.get(b"authorization", b"")
            if not hmac.compare_digest(given, self.token):
                reason = "missing" if not given else "wrong"
                await _error(401, f"{reason} token: send the header 'Authorization: Bearer <token>'",
                             {"WWW-Authenticate": "Bearer"})(scope, receive, send)
                return
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        limit = self.max_body_bytes
        if declared > limit:
            await _error(413, f"request body of {declared} bytes is over this service's limit of {limit} bytes "
                              "(--max-upload-mb)")(scope, receive, send)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # a chunked upload without Content-Length
                raise HTTPException(413, f"request body is over this service's limit of {limit} bytes "
                                         "(--max-upload-mb)")
            return message

        await self.app(scope, counted, send)


def _status(error: SpeakertripError) -> int:
    return next((status for kind, status in STATUS if isinstance(error, kind)), 500)


async def _one_part(request: Request) -> list[UploadFile]:
    """The request's one ``audio`` part; ConfigError (422) when it has several (never a silent choice)."""
    parts = (await request.form()).getlist("audio")  # parsed once, for the route's own parameters
    if len(parts) != 1:
        raise ConfigError(f"{len(parts)} parts named 'audio'; this route takes exactly one audio file")
    return parts


async def _read(uploads: list[UploadFile]) -> list[tuple[str, bytes]]:
    """(label, bytes) of each part, labelled as errors should name it."""
    return [(f"audio part {number} ({part.filename or 'no file name'})" if len(uploads) > 1
             else f"audio ({part.filename or 'no file name'})", await part.read())
            for number, part in enumerate(uploads, 1)]


def create_app(settings: ServiceSettings) -> FastAPI:
    """The app for ``settings``: loads the model, checks the store against it, starts the batcher."""
    service = SpeakerService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        service.close()  # after the server has finished the requests in flight

    app = FastAPI(title="speakertrip", version=__version__, lifespan=lifespan,
                  description="Enrol speakers, verify a claimed identity, identify a voice. "
                              "Audio parts are wav, flac or ogg files; with a token, send "
                              "`Authorization: Bearer <token>`.")
    app.state.service = service
    app.add_middleware(Guard, token=settings.read_token(), max_body_bytes=int(settings.max_upload_mb * 2**20),
                       allowed_hosts=frozenset(settings.allowed_hosts))

    @app.exception_handler(SpeakertripError)
    async def speakertrip_error(request: Request, error: SpeakertripError) -> JSONResponse:
        status = _status(error)
        message = str(error)
        if status >= 500:
            log.error("%s %s: %s", request.method, request.url.path, error)
            message = message.replace(settings.store, "the enrolment store")  # the server's paths stay in its log
        return _error(status, message, {"Retry-After": "30"} if isinstance(error, StoreUnavailableError) else None)

    @app.exception_handler(StarletteHTTPException)  # routing's 404/405 and the Guard's 413
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = []
        for problem in error.errors():
            where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
            if where == "audio" and problem.get("type") == "missing":
                problems.append("no file part named 'audio': send the audio as multipart/form-data")
            else:
                problems.append(f"{where}: {problem.get('msg', 'invalid')}")
        return _error(422, "; ".join(problems) or "malformed request")

    @app.exception_handler(Exception)
    async def crash(request: Request, error: Exception) -> JSONResponse:  # uvicorn logs the traceback
        return _error(500, f"internal error ({type(error).__name__}); see the server log")

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(resources.files("speakertrip.verification").joinpath("static/index.html").read_text())

    @app.get("/health", summary="Liveness, model identity and number of speakers (no token needed)")
    async def health() -> dict:
        return await run_in_threadpool(service.health)

    @app.get("/speakers", summary="Enrolled speakers and their numbers of utterances")
    async def speakers() -> dict:
        return await run_in_threadpool(service.speakers)

    @app.post("/speakers/{name}/enroll", summary="Enrol a speaker from one or more audio parts")
    async def enroll(name: str, audio: AudioParts,
                     replace: Annotated[bool, Query(description="drop the earlier utterances first")] = False
                     ) -> dict:
        return await run_in_threadpool(service.enroll, name, await _read(audio), replace)

    @app.post("/speakers/{name}/verify", summary="Does the audio belong to this speaker?")
    async def verify(request: Request, name: str, audio: OneAudio,
                     threshold: Annotated[float | None, Query(description="accept scores >= this "
                                                              "(default: the service's threshold)")] = None) -> dict:
        return await run_in_threadpool(service.verify, name, (await _read(await _one_part(request)))[0], threshold)

    @app.post("/identify", summary="Which enrolled speakers score at or above the threshold, best first")
    async def identify(request: Request, audio: OneAudio,
                       top_k: Annotated[int, Query(ge=1, le=1000, description="candidates at most")] = 5) -> dict:
        return await run_in_threadpool(service.identify, (await _read(await _one_part(request)))[0], top_k)

    @app.delete("/speakers/{name}", summary="Forget a speaker")
    async def remove(name: str) -> dict:
        return await run_in_threadpool(service.remove, name)

    return app


def app_from_environment() -> FastAPI:
    """The uvicorn factory of ``speakertrip serve``: settings come from ``$SPEAKERTRIP_SERVE_SETTINGS``."""
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise ConfigError(f"${SETTINGS_VARIABLE} is not set; start the service with `speakertrip serve`")
    settings = ServiceSettings.from_json(text)
    configure_connections(settings)
    return create_app(settings)


def configure_connections(settings: ServiceSettings) -> type[GuardedH11Protocol]:
    """The HTTP protocol class of uvicorn for ``settings``' connection limits (set in this process)."""
    GuardedH11Protocol.configure(settings.header_timeout, settings.body_timeout, settings.max_connections)
    return GuardedH11Protocol
