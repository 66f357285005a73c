"""ASGI middlewares of the server: request ids and internal errors, a request limit, Host and Origin guards, a
request-body cap and security headers on every response.

They wrap the whole app, so they hold before FastAPI parses anything (a form, a file, a JSON body).
"""

from __future__ import annotations

import logging
import secrets
from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LOOPBACK_HOSTS", "SAFE_METHODS", "BodyLimit", "ConcurrencyLimit", "HostGuard", "InternalErrors",
           "OriginGuard", "SecurityHeaders", "request_id"]

log = logging.getLogger(__name__)

#: Host names a loopback-bound server answers to (anything else is refused: DNS-rebinding guard).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
#: Methods that change nothing; every other method is state-changing (Origin-checked).
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _header(scope: Scope, name: bytes) -> str | None:
    value = dict(scope.get("headers") or []).get(name)
    return None if value is None else value.decode("latin-1")


def request_id(scope: Scope) -> str:
    """The id `InternalErrors` gave this request ("-" outside it)."""
    return str((scope.get("state") or {}).get("request_id", "-"))


class InternalErrors:
    """Give every request an id (`X-Request-ID`); an exception nobody handled becomes a 500 naming that id.

    The traceback is logged with the id, and the client gets `{"detail": "internal error", "request_id": id}`:
    never the exception's text.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = secrets.token_hex(8)
        scope.setdefault("state", {})["request_id"] = rid
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message = {**message, "headers": [*message.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as err:
            log.error("internal error in request %s (%s %s)", rid, scope.get("method"), scope.get("path"),
                      exc_info=err)
            if started:  # too late for a status: the client sees the connection end
                raise
            body = {"detail": "internal error", "request_id": rid}
            await JSONResponse(body, status_code=500)(scope, receive, send_with_id)


class ConcurrencyLimit:
    """Answer 503 at once beyond `limit` requests being handled; only requests with a complete head count."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            msg = f"the server is handling {self.active} requests, its limit; retry shortly"
            await JSONResponse({"detail": msg}, status_code=503, headers={"Retry-After": "1"})(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def _host_port(netloc: str, scheme: str) -> tuple[str, int] | None:
    """'Example:80' → ('example', 80), '[::1]' → ('::1', 80); None when it does not parse."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname.lower(), port or (443 if scheme == "https" else 80)


class OriginGuard:
    """Refuse state-changing requests (POST, DELETE, ...) sent by another web site: 403 with the reason.

    A browser names the page that sent a request in `Origin` (and `Sec-Fetch-Site`); a form on any site could
    otherwise post to this local server. Allowed: no Origin at all (curl, scripts, tests), or an Origin that is this
    server as addressed (the Host header) or a loopback name on this server's port.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def refusal(scope: Scope) -> str | None:
        """Why the request is refused, or None when it may go on."""
        if scope["method"] in SAFE_METHODS:
            return None
        site = (_header(scope, b"sec-fetch-site") or "").strip().lower()
        if site in ("cross-site", "same-site"):
            return f"cross-origin {scope['method']} refused (Sec-Fetch-Site: {site}); use the page this server serves"
        origin = _header(scope, b"origin")
        if origin is None:
            return None
        scheme = scope.get("scheme", "http")
        parts = urlsplit(origin.strip()) if origin.strip().lower() != "null" else None
        seen = None
        if parts is not None and parts.scheme in ("http", "https"):
            seen = _host_port(parts.netloc, parts.scheme)
        host = _host_port(_header(scope, b"host") or "", scheme)
        server_port = (scope.get("server") or (None, None))[1]
        if seen is not None and (seen == host or (seen[0] in ("127.0.0.1", "localhost", "::1")
                                                  and seen[1] == server_port)):
            return None
        return (f"cross-origin {scope['method']} refused: Origin '{origin[:100]}' is not this server; "
                "use the page this server serves")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        reason = self.refusal(scope) if scope["type"] == "http" else None
        if reason is not None:
            log.info("refused: %s", reason)
            await JSONResponse({"detail": reason}, status_code=403)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies above `max_bytes` with 413 before anything parses them.

    The body is read (at most `max_bytes` + one chunk) and replayed to the app, so a lying or missing
    Content-Length cannot get past the limit either.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        msg = f"request body of {size} bytes is larger than the server's limit of {self.max_bytes} bytes"
        await JSONResponse({"detail": msg}, status_code=413)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, declared.decode())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, f"more than {self.max_bytes}")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class HostGuard:
    """Answer only requests whose Host header names an allowed host (a DNS-rebinding guard for a local server)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_hosts
        self.allowed = {h.lower() for h in allowed_hosts}

    @staticmethod
    def host_name(header: str) -> str:
        """'example:80' → 'example', '[::1]:8000' → '[::1]'."""
        header = header.strip().lower()
        if header.startswith("["):
            return header[: header.find("]") + 1] if "]" in header else header
        return header.split(":", 1)[0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if self.host_name(header) not in self.allowed:
            msg = f"host '{header[:100]}' is not served here; open the page through 127.0.0.1 or localhost"
            await JSONResponse({"detail": msg}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class SecurityHeaders:
    """nosniff, no framing, no referrer on every response; a strict CSP (no inline code, no CDN) on all but /docs.

    FastAPI's /docs page (off unless `create_app(docs=True)`) loads Swagger UI from a CDN and runs one inline
    script; it gets a policy allowing exactly that CDN, and nothing from anywhere else.
    """

    CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
    DOCS_CDN = "https://cdn.jsdelivr.net"
    DOCS_CSP = (f"default-src 'self'; img-src 'self' data: https://fastapi.tiangolo.com; "
                f"script-src 'self' 'unsafe-inline' {DOCS_CDN}; style-src 'self' 'unsafe-inline' {DOCS_CDN}; "
                "connect-src 'self'; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = self.DOCS_CSP if scope["path"].startswith("/docs") else self.CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                headers.append((b"content-security-policy", csp.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
