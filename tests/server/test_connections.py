"""Idle and half-sent connections: a real uvicorn (as `serve` configures it) drops them, and they never block others.

The server runs in a thread on a free loopback port with a short header deadline; every socket wait is bounded.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
uvicorn = pytest.importorskip("uvicorn", reason="these tests run a real uvicorn (the 'web' extra)")
httpx = pytest.importorskip("httpx")

from traitlens.backbones import load_model  # noqa: E402
from traitlens.server import ServerLimits, create_app  # noqa: E402
from traitlens.server._protocol import uvicorn_config  # noqa: E402

from .helpers import (  # noqa: E402
    free_port,
    png_bytes,
    uvicorn_in_thread,
)
from .test_load import slowed  # noqa: E402

HEADER_TIMEOUT = 0.5
LIMIT = 4


@pytest.fixture(scope="module")
def live(tmp_path_factory) -> Iterator[tuple[str, int]]:
    """uvicorn with `serve`'s settings in a thread: header deadline 0.5 s, 4 requests at once; yields (host, port)."""
    import torch

    from traitlens.backbones import create_preset, save_model

    torch.manual_seed(0)
    path = save_model(create_preset("traitlens-vit-micro", 3), tmp_path_factory.mktemp("conn") / "micro")
    limits = ServerLimits(workers=1, queue_size=2, max_concurrent_connections=LIMIT, header_timeout_s=HEADER_TIMEOUT)
    port = free_port()
    config = uvicorn_config(create_app({"micro": load_model(path)}, limits), "127.0.0.1", port, limits,
                            log_level="warning")
    with uvicorn_in_thread(config):
        yield "127.0.0.1", port


def closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed `sock` (recv gives b'' or a reset), or None if it stayed open `within` s."""
    start = time.monotonic()
    sock.settimeout(0.1)
    while time.monotonic() - start < within:
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - start
        except TimeoutError:
            continue
        except ConnectionError:
            return time.monotonic() - start
    return None


def test_idle_and_half_sent_sockets_neither_block_requests_nor_stay_open(live):
    host, port = live
    idle = [socket.create_connection((host, port), timeout=2) for _ in range(3 * LIMIT)]
    half = [socket.create_connection((host, port), timeout=2) for _ in range(2)]
    try:
        for s in half:
            s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line: the head never ends
        time.sleep(0.1)
        # More idle sockets than the request limit: a real request is still answered, at once.
        start = time.monotonic()
        r = httpx.get(f"http://{host}:{port}/api/health", timeout=HEADER_TIMEOUT * 0.8)
        assert r.status_code == 200, r.text
        assert time.monotonic() - start < HEADER_TIMEOUT
        # ... and the server drops every one of them shortly after the header deadline.
        for s in idle + half:
            waited = closed_by_server(s, within=HEADER_TIMEOUT + 2)
            assert waited is not None, "the server kept an idle connection open"
    finally:
        for s in idle + half:
            s.close()


def test_trickling_bytes_does_not_extend_the_header_deadline(live):
    host, port = live
    with socket.create_connection((host, port), timeout=2) as s:
        start = time.monotonic()
        s.sendall(b"GET /api/health HTTP/1.1\r\n")
        closed_at = None
        while time.monotonic() - start < HEADER_TIMEOUT + 2:
            try:
                s.sendall(b"X")  # one byte of a never-ending header every 50 ms
            except OSError:
                closed_at = time.monotonic() - start
                break
            if closed_by_server(s, within=0.05) is not None:
                closed_at = time.monotonic() - start
                break
        assert closed_at is not None, "a slowly sent header kept the connection open"
        assert HEADER_TIMEOUT * 0.8 <= closed_at <= HEADER_TIMEOUT + 1


def test_a_keep_alive_connection_that_starts_a_head_and_stalls_is_closed(live):
    host, port = live
    with socket.create_connection((host, port), timeout=2) as s:
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert head.startswith(b"HTTP/1.1 200")
        # uvicorn's keep-alive timer stops at the first byte of the next request; the header deadline takes over.
        s.sendall(b"GET /api/health HTTP/1.1\r\n")
        waited = closed_by_server(s, within=HEADER_TIMEOUT + 2)
        assert waited is not None and waited < HEADER_TIMEOUT + 1


def test_cross_site_post_is_refused_on_the_real_server_and_its_own_page_is_not(live):
    host, port = live
    url = f"http://{host}:{port}/api/concepts/abc"
    evil = httpx.delete(url, headers={"origin": "http://evil.example"}, timeout=5)
    assert evil.status_code == 403 and "evil.example" in evil.json()["detail"]
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        own = httpx.delete(url, headers={"origin": origin, "sec-fetch-site": "same-origin"}, timeout=5)
        assert own.status_code == 404, (origin, own.text)  # past the guard: the concept id is unknown
    other_port = httpx.delete(url, headers={"origin": f"http://127.0.0.1:{port + 1}"}, timeout=5)
    assert other_port.status_code == 403


def test_requests_beyond_the_limit_get_503_and_idle_sockets_do_not_count(monkeypatch, micro_model):
    """The request limit counts requests being handled (here 2), whatever the number of open connections."""
    slowed(monkeypatch, 0.4)
    app = create_app({"micro": micro_model}, ServerLimits(workers=2, queue_size=4, max_concurrent_connections=2))
    data = png_bytes()

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30) as client:
            async def one() -> httpx.Response:
                return await client.post("/api/explain", files={"image": ("x.png", data, "image/png")})

            return list(await asyncio.gather(*(one() for _ in range(3))))

    responses = asyncio.run(burst())
    codes = sorted(r.status_code for r in responses)
    assert codes == [200, 200, 503], codes
    busy = next(r for r in responses if r.status_code == 503)
    assert "limit" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
