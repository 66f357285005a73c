"""Bounded pool under load: 50 concurrent requests get 200 or 503, timeouts get 504, the server stays healthy."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import torch

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
httpx = pytest.importorskip("httpx", reason="the load tests drive the app with httpx")

import traitlens.server.service as server_app  # noqa: E402
from traitlens.backbones import load_model  # noqa: E402
from traitlens.explain import explain  # noqa: E402
from traitlens.server import ServerLimits, create_app  # noqa: E402
from traitlens.server._pool import BoundedPool, ModelReplicas, PoolBusy, PoolTimeout  # noqa: E402

from .helpers import model_input, png_bytes  # noqa: E402


def slowed(monkeypatch, seconds: float) -> list[float]:
    """Make every explanation sleep `seconds` first; returns the list of call start times."""
    calls: list[float] = []
    real = server_app.explain

    def slow(*args, **kwargs):
        calls.append(time.monotonic())
        time.sleep(seconds)
        return real(*args, **kwargs)

    monkeypatch.setattr(server_app, "explain", slow)
    return calls


async def _burst(app, n: int, data: bytes, **form) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
        async def one() -> httpx.Response:
            return await client.post("/api/explain", files={"image": ("x.png", data, "image/png")},
                                     data={"method": "cdam", **form})

        return await asyncio.gather(*(one() for _ in range(n)))


def wait_idle(app, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while app.state.server.pool.in_flight and time.monotonic() < deadline:
        time.sleep(0.02)
    assert app.state.server.pool.in_flight == 0, "pool slots leaked"


def test_fifty_concurrent_requests_get_200_or_503(micro_dir, monkeypatch):
    slowed(monkeypatch, 0.05)
    app = create_app({"micro": load_model(micro_dir)}, ServerLimits(workers=2, queue_size=1))
    data = png_bytes()
    responses = asyncio.run(_burst(app, 50, data))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503}, codes
    assert codes.count(200) >= 1 and codes.count(503) >= 1, codes
    busy = next(r for r in responses if r.status_code == 503)
    assert "busy" in busy.json()["detail"] and busy.headers["retry-after"] == "1"
    # Every 200 is a full, identical answer: no cross-talk between the workers.
    bodies = [r.json() for r in responses if r.status_code == 200]
    assert len({b["targets"][0]["overlay"] for b in bodies}) == 1
    wait_idle(app)
    after = asyncio.run(_burst(app, 1, data))[0]
    assert after.status_code == 200


def test_concurrent_explanations_equal_serial_ones(micro_dir, micro_model):
    """Two workers, each with its own model replica: hooks of one job never see the other's forward."""
    app = create_app({"micro": load_model(micro_dir)}, ServerLimits(workers=2, queue_size=64))
    images = [png_bytes(seed=s) for s in range(4)]

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            jobs = [client.post("/api/explain", files={"image": ("x.png", images[i % 4], "image/png")},
                                data={"method": method, "target": "0", "include_raw": "true"})
                    for i in range(8) for method in ("raw_attention", "gradcam_vit", "agcam")]
            return await asyncio.gather(*jobs)

    responses = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for i, r in enumerate(responses):
        body = r.json()
        x = model_input(micro_model, images[(i // 3) % 4])
        ref = explain(micro_model, x, method=body["method"], target=0).patch_maps[0, 0]
        assert torch.tensor(body["targets"][0]["raw"]) == pytest.approx(ref, abs=1e-5), body["method"]


def test_timeout_is_504_and_the_slot_comes_back(micro_dir, monkeypatch):
    calls = slowed(monkeypatch, 1.0)
    app = create_app({"micro": load_model(micro_dir)}, ServerLimits(workers=1, queue_size=2, timeout_s=0.3))
    data = png_bytes()
    first, queued = asyncio.run(_burst(app, 2, data))
    assert first.status_code == 504 and queued.status_code == 504
    assert "0.3 s" in first.json()["detail"]
    wait_idle(app)
    # The queued job timed out before it started, so it was cancelled instead of run for nothing.
    assert len(calls) == 1
    monkeypatch.setattr(server_app, "explain", explain)
    assert asyncio.run(_burst(app, 1, data))[0].status_code == 200


def test_health_stays_answering_while_workers_are_busy(micro_dir, monkeypatch):
    slowed(monkeypatch, 0.5)
    app = create_app({"micro": load_model(micro_dir)}, ServerLimits(workers=1, queue_size=0))

    async def run() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60) as client:
            work = asyncio.ensure_future(client.post(
                "/api/explain", files={"image": ("x.png", png_bytes(), "image/png")}, data={"method": "cdam"}))
            await asyncio.sleep(0.2)
            health = await client.get("/api/health")
            info = await client.get("/api/info")
            return await work, health, info

    work, health, info = asyncio.run(run())
    assert work.status_code == 200
    assert health.status_code == 200 and health.json()["in_flight"] == 1 and health.json()["capacity"] == 1
    assert info.status_code == 200


# -- the pool itself -------------------------------------------------------------------------------------------------

def test_bounded_pool_refuses_beyond_capacity_and_releases():
    pool = BoundedPool(workers=1, queue_size=1)
    gate = threading.Event()
    try:
        a = pool.submit(gate.wait, 5)
        b = pool.submit(gate.wait, 5)
        with pytest.raises(PoolBusy):
            pool.submit(gate.wait, 5)
        assert pool.in_flight == 2
        gate.set()
        a.result(5), b.result(5)
        deadline = time.monotonic() + 5
        while pool.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.in_flight == 0
        assert pool.submit(lambda: 7).result(5) == 7
    finally:
        gate.set()
        pool.shutdown()


def test_bounded_pool_run_times_out():
    pool = BoundedPool(workers=1, queue_size=0)
    try:
        with pytest.raises(PoolTimeout):
            asyncio.run(pool.run(time.sleep, 0.5, timeout=0.05))
    finally:
        pool.shutdown()


def test_model_replicas_are_distinct_copies(micro_model):
    replicas = ModelReplicas(micro_model, 2)
    a, b = replicas.acquire(), replicas.acquire()
    assert a is not b and {id(a), id(b)} >= {id(micro_model)}
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    replicas.release(a)
    assert replicas.acquire() is a
