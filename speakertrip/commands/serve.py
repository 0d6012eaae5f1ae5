"""`speakertrip serve --model DIR --store FILE`: enrol, verify and identify over HTTP (the ``serve`` extra).

The app is :mod:`speakertrip.verification.app`; this module parses options, refuses unsafe
set-ups (a non-loopback address without a token), checks the store against the model before
listening, and runs uvicorn with the connection limits of :mod:`speakertrip.verification.connections`
(SIGTERM: in-flight requests finish, the store is closed, then the process exits).
"""

from __future__ import annotations

import argparse
import inspect
import ipaddress
import os
from pathlib import Path

WORKER_STARTUP_SECONDS = 300  # a worker imports torch and loads the model before it answers uvicorn's health check


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("serve", help="HTTP service (and a web page) to enrol, verify and identify")
    parser.add_argument("--model", type=Path, required=True, help="model artifact directory")
    parser.add_argument("--store", required=True, help="enrolment store: an SQLite file, or a postgresql:// URL that "
                        "every replica shares (created by the first enrolment if missing)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; any other "
                        "than loopback needs --token-file)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    parser.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                        help="without a token, also answer requests whose Host is NAME (a name a local proxy "
                             "forwards); by default only localhost, 127.0.0.1 and ::1. Repeatable")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding a bearer token that every route but /health requires")
    parser.add_argument("--workers", type=int, default=1, help="server processes sharing the store (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads per worker (default: the cores divided among the workers)")
    parser.add_argument("--max-audio-seconds", type=float, default=60.0, help="longest audio part accepted (60)")
    parser.add_argument("--min-audio-seconds", type=float, default=0.5, help="shortest audio part accepted (0.5)")
    parser.add_argument("--max-request-audio-seconds", type=float, default=300.0,
                        help="most audio in one request, all parts together (300)")
    parser.add_argument("--max-parts", type=int, default=20, help="most audio parts in one enrolment (20)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body accepted, MiB (20)")
    parser.add_argument("--header-timeout", type=float, default=10.0,
                        help="seconds a client has to send a request's headers (10)")
    parser.add_argument("--body-timeout", type=float, default=120.0,
                        help="seconds a client has to send a request's body after its headers (120)")
    parser.add_argument("--max-connections", type=int, default=200,
                        help="open connections per worker; beyond it the slowest one waiting for headers is "
                             "closed (200)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0,
                        help="how long a lone request waits for others to share its forward pass (5 ms)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="accept scores >= this (default: the model's calibrated threshold)")
    parser.add_argument("--norm", choices=["asnorm"], default=None,
                        help="normalise scores with the store's cohort (needs --threshold)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--backend", default="auto", help="how embeddings are computed: auto (bfloat16 on CPUs that "
                        "compute it natively, else float32), float32, bfloat16, int8, onnxruntime, eager")
    parser.add_argument("--no-access-log", action="store_true", help="do not log one line per request")
    parser.set_defaults(func=run)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1).

    >>> is_loopback("127.0.0.1"), is_loopback("::1"), is_loopback("0.0.0.0"), is_loopback("example.org")
    (True, True, False, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    from speakertrip.errors import ConfigError

    try:
        import uvicorn

        from speakertrip.verification import app as service_app
    except ImportError as error:
        raise ConfigError(f"speakertrip serve needs the serve extra ({error.name} is missing): "
                          "pip install 'speakertrip[serve]'") from None
    from speakertrip.verification.service import ServiceSettings, check_device

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be >= 1, got {args.threads}")
    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be 0-65535 (0 picks a free one), got {args.port}")
    for name in ("max_parts", "max_connections"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    for name in ("header_timeout", "body_timeout", "max_request_audio_seconds"):
        if not getattr(args, name) > 0 or getattr(args, name) == float("inf"):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number of seconds, got "
                              f"{getattr(args, name)}")
    if args.token_file is None and not is_loopback(args.host):
        raise ConfigError(f"refusing to listen on {args.host} without a token: anyone who reaches it could enrol "
                          "and delete speakers. Pass --token-file FILE (or listen on 127.0.0.1)")
    threads = args.threads or (max(1, (os.cpu_count() or 1) // args.workers) if args.workers > 1 else None)
    settings = ServiceSettings(
        model=str(args.model), store=str(args.store), device=args.device, threshold=args.threshold, norm=args.norm,
        token_file=None if args.token_file is None else str(args.token_file), threads=threads, backend=args.backend,
        max_audio_seconds=args.max_audio_seconds, min_audio_seconds=args.min_audio_seconds,
        max_request_audio_seconds=args.max_request_audio_seconds, max_parts=args.max_parts,
        max_upload_mb=args.max_upload_mb, batch_window_ms=args.batch_window_ms,
        allowed_hosts=(*args.allowed_host, args.host),
        header_timeout=args.header_timeout, body_timeout=args.body_timeout, max_connections=args.max_connections)
    settings.read_token()  # a bad token file fails here, before anything listens
    check_device(settings.device)
    options = dict(host=args.host, port=args.port, timeout_graceful_shutdown=30, access_log=not args.no_access_log,
                   http=service_app.configure_connections(settings))
    if args.workers == 1:
        app = service_app.create_app(settings)  # loads the model and checks the store: errors exit 2
        service = app.state.service
        _announce(service.model.identity, service.threshold, len(service.verifier().store), settings, 1)
        uvicorn.run(app, **options)
        return 0
    from speakertrip.models import load_model
    from speakertrip.verification.stores import open_store
    from speakertrip.verification.verifier import Verifier

    model = load_model(settings.model, settings.device)
    store = open_store(settings.store, model.identity, model.embedding_dim)  # a service may start empty
    verifier = Verifier(model, store=store, threshold=settings.threshold, norm=settings.norm,
                        backend=settings.backend)  # the model check
    _announce(verifier.model.identity, verifier.threshold, len(verifier.store), settings, args.workers)
    verifier.store.close()
    os.environ[service_app.SETTINGS_VARIABLE] = settings.to_json()
    if "timeout_worker_healthcheck" in inspect.signature(uvicorn.run).parameters:  # uvicorn >= 0.49
        options["timeout_worker_healthcheck"] = WORKER_STARTUP_SECONDS  # its 5 s default restarts busy workers
    uvicorn.run("speakertrip.verification.app:app_from_environment", factory=True, workers=args.workers, **options)
    return 0


def _announce(identity: str, threshold: float, speakers: int, settings, workers: int) -> None:
    from speakertrip.verification.stores import describe

    token = "required (--token-file)" if settings.token_file else "off (loopback only)"
    print(f"speakertrip serve: model {identity[:12]}, threshold {threshold:.4f}, store {describe(settings.store)} "
          f"({speakers} speakers), {workers} worker(s), token {token}", flush=True)
