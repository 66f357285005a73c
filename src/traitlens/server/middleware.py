"""ASGI middlewares of the server: a request-body cap, a Host-header guard and security headers on every response.

They wrap the whole app, so they hold before FastAPI parses anything (a form, a file, a JSON body).
"""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LOOPBACK_HOSTS", "BodyLimit", "HostGuard", "SecurityHeaders"]

#: Host names a loopback-bound server answers to (anything else is refused: DNS-rebinding guard).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")


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
    """nosniff, no framing, no referrer on every response; a strict CSP on the page (no inline code, no CDN)."""

    CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # FastAPI's /docs pages load their scripts from a CDN; everything else gets the strict policy.
        strict = not scope["path"].startswith(("/docs", "/redoc"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if strict:
                    headers.append((b"content-security-policy", self.CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
