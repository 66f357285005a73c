"""How `serve` runs uvicorn: a header-read deadline on every connection, and the settings that go with it.

uvicorn drops idle keep-alive connections (`timeout_keep_alive`) but has no deadline for a connection that never
finishes its request head, and its `limit_concurrency` counts such connections: a few dozen idle sockets held the
server at 503 indefinitely. Here the h11 protocol closes a connection that has not sent a complete request head
within `ServerLimits.header_timeout_s` (counted from the connection, or from the first byte of a keep-alive
request: trickling bytes does not extend it), uvicorn's connection count is off, and the app limits the requests
it handles at once instead (`middleware.ConcurrencyLimit`), so only requests with a complete head count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from traitlens.server._limits import ServerLimits

__all__ = ["MAX_HEADER_BYTES", "header_timeout_protocol", "uvicorn_config"]

log = logging.getLogger(__name__)

#: Largest request head (request line + headers) h11 buffers; larger heads get 400 (h11's default, made explicit).
MAX_HEADER_BYTES = 16 * 1024
#: Seconds an idle keep-alive connection stays open after a response.
KEEP_ALIVE_S = 5


class HeaderDeadlineH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections that do not send a complete request head in time."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._watch_header()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._watch_header()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _waiting_for_head(self) -> bool:
        return self.conn.their_state is h11.IDLE and not self.transport.is_closing()

    def _watch_header(self) -> None:
        """Arm the deadline while a request head is awaited (not re-armed by more bytes); stop it once it came."""
        if not self._waiting_for_head():
            self._stop_header_timer()
        elif self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self._waiting_for_head():
            return
        log.debug("closing a connection from %s: no complete request head within %g s", self.client,
                  self.header_timeout_s)
        with contextlib.suppress(h11.LocalProtocolError):
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderDeadlineH11]:
    """The h11 protocol class with a header deadline of `seconds` (uvicorn instantiates the class itself)."""
    return type("HeaderDeadlineH11", (HeaderDeadlineH11,), {"header_timeout_s": float(seconds)})


def uvicorn_config(app: Any, host: str, port: int, limits: ServerLimits, **kwargs: Any) -> uvicorn.Config:
    """The uvicorn settings of `serve` (also used by the tests, so they run what users run).

    Args:
        app: the ASGI app (`create_app`).
        host, port: where to bind.
        limits: `header_timeout_s` is the header deadline; the request limit lives in the app.
        **kwargs: more `uvicorn.Config` settings (e.g. `log_level`).
    """
    kwargs.setdefault("log_level", "info")
    return uvicorn.Config(app, host=host, port=port, http=header_timeout_protocol(limits.header_timeout_s),
                          limit_concurrency=None, timeout_keep_alive=KEEP_ALIVE_S,
                          h11_max_incomplete_event_size=MAX_HEADER_BYTES, server_header=False, **kwargs)
