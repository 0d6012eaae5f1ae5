"""Slow clients and too many connections: deadlines and a cap for the HTTP connections of ``speakertrip serve``.

uvicorn times out only idle keep-alive connections: a client that sends its headers one byte at a time
(slowloris) holds its connection for ever, and enough of them hold every socket. :class:`GuardedH11Protocol`
is uvicorn's h11 protocol with three additions:

- a request's headers must arrive within ``header_timeout`` seconds of the connection opening (or of the
  previous response, on a kept-alive connection);
- its body must arrive within ``body_timeout`` seconds of the headers;
- at most ``max_connections`` connections are open at once (per worker process). When one more arrives,
  the connection that has waited longest for its headers is closed to make room, so a request that is
  sent promptly (``/health``) is answered under a flood of slow ones; when every open connection has a
  request in progress, the new one gets a 503.

A connection past its deadline is closed; a request whose body was cut off never reaches the service.

>>> GuardedH11Protocol.configure(header_timeout=10, body_timeout=120, max_connections=200)
>>> GuardedH11Protocol.limits
(10.0, 120.0, 200)
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from speakertrip.errors import ConfigError

log = logging.getLogger("uvicorn.error")
_BUSY_BODY = b'{"error": "too many connections in progress; retry in a moment"}'
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY))


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with header and body deadlines and a cap on open connections (see the module)."""

    limits: ClassVar[tuple[float, float, int]] = (10.0, 120.0, 200)  # header s, body s, connections

    @classmethod
    def configure(cls, header_timeout: float, body_timeout: float, max_connections: int) -> None:
        """Set the limits of every connection this process accepts from now on."""
        for name, value in (("header_timeout", header_timeout), ("body_timeout", body_timeout),
                            ("max_connections", max_connections)):
            if not value > 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        cls.limits = (float(header_timeout), float(body_timeout), int(max_connections))

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._phase: str | None = None  # "headers", "body", or None while the service answers
        self._since = 0.0
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()
        if len(self.connections) > self.limits[2] and not self._make_room():
            transport.write(BUSY)
            transport.close()

    def _make_room(self) -> bool:
        """Close the open connection that has waited longest for its headers; False when there is none."""
        waiting = [other for other in self.connections
                   if other is not self and getattr(other, "_phase", None) == "headers"]
        if not waiting:
            return False
        min(waiting, key=lambda other: other._since)._expire()
        return True

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._arm(None)
        super().connection_lost(exc)

    def _follow(self) -> None:
        """Start the deadline of what the client owes now: headers (idle), a body, or nothing."""
        state = self.conn.their_state
        phase = "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None
        if phase != self._phase:
            self._arm(phase)

    def _arm(self, phase: str | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._phase, self._since = phase, time.monotonic()
        if phase is not None and not self.transport.is_closing():
            timeout = self.limits[0] if phase == "headers" else self.limits[1]
            self._deadline = self.loop.call_later(timeout, self._expire)

    def _expire(self) -> None:
        """Close the connection: the client missed its deadline, or its slot is needed."""
        if self._phase == "body":
            log.warning("closed a connection from %s: the request body did not arrive within %g s",
                        self.client[0] if self.client else "?", self.limits[1])
        self._arm(None)
        if not self.transport.is_closing():
            self.transport.close()
