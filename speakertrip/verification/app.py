"""The HTTP face of :class:`~speakertrip.verification.service.SpeakerService`: a FastAPI app (the ``serve`` extra).

Routes answer JSON; errors are ``{"error": "..."}`` with 400 (unusable audio), 401 (token),
404 (unknown speaker or route), 413 (over a limit), 422 (malformed request). With a token
every route needs ``Authorization: Bearer <token>`` except ``/health`` and the static pages
(``/``, ``/docs``, ``/openapi.json``), which hold no data. The request body is counted as it
arrives, so an oversized upload is refused before it is read whole.

>>> from fastapi.testclient import TestClient                                  # doctest: +SKIP
>>> client = TestClient(create_app(ServiceSettings(model="exp/model", store="speakers.db")))  # doctest: +SKIP
>>> client.get("/health").json()["status"]                                      # doctest: +SKIP
'ok'
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import os
from importlib import resources
from typing import Annotated, AsyncIterator

from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from speakertrip import __version__
from speakertrip.errors import AudioError, ConfigError, KeyNotFoundError, SpeakertripError
from speakertrip.verification.service import LimitError, ServiceSettings, SpeakerService

SETTINGS_VARIABLE = "SPEAKERTRIP_SERVE_SETTINGS"  # how `speakertrip serve` hands its settings to workers
PUBLIC_PATHS = frozenset({"/health", "/", "/docs", "/docs/oauth2-redirect", "/openapi.json"})
STATUS = ((AudioError, 400), (KeyNotFoundError, 404), (LimitError, 413), (ConfigError, 422))
log = logging.getLogger("uvicorn.error")  # formatted and shown like the server's own messages
AudioParts = Annotated[list[UploadFile], File(description="one or more wav/flac/ogg files")]
OneAudio = Annotated[UploadFile, File(description="a wav/flac/ogg file")]


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Guard:
    """ASGI middleware: the bearer token (constant-time compare) and the upload limit, before any route runs."""

    def __init__(self, app: ASGIApp, token: str | None, max_body_bytes: int):
        self.app, self.max_body_bytes = app, max_body_bytes
        self.token = None if token is None else f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
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
    app.add_middleware(Guard, token=settings.read_token(), max_body_bytes=int(settings.max_upload_mb * 2**20))

    @app.exception_handler(SpeakertripError)
    async def speakertrip_error(request: Request, error: SpeakertripError) -> JSONResponse:
        status = _status(error)
        if status == 500:
            log.error("%s %s: %s", request.method, request.url.path, error)
        return _error(status, str(error))

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
    async def verify(name: str, audio: OneAudio,
                     threshold: Annotated[float | None, Query(description="accept scores >= this "
                                                              "(default: the service's threshold)")] = None) -> dict:
        return await run_in_threadpool(service.verify, name, (await _read([audio]))[0], threshold)

    @app.post("/identify", summary="Which enrolled speakers score at or above the threshold, best first")
    async def identify(audio: OneAudio,
                       top_k: Annotated[int, Query(ge=1, le=1000, description="candidates at most")] = 5) -> dict:
        return await run_in_threadpool(service.identify, (await _read([audio]))[0], top_k)

    @app.delete("/speakers/{name}", summary="Forget a speaker")
    async def remove(name: str) -> dict:
        return await run_in_threadpool(service.remove, name)

    return app


def app_from_environment() -> FastAPI:
    """The uvicorn factory of ``speakertrip serve``: settings come from ``$SPEAKERTRIP_SERVE_SETTINGS``."""
    text = os.environ.get(SETTINGS_VARIABLE)
    if not text:
        raise ConfigError(f"${SETTINGS_VARIABLE} is not set; start the service with `speakertrip serve`")
    return create_app(ServiceSettings.from_json(text))
