"""`serve`: the default quickstart model, limits, loopback binding, and a real uvicorn process."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time

import pytest

from traitlens.server import DEFAULT_MODEL, ServerLimits, is_loopback, load_served_models, serve, served_name

from .helpers import png_bytes


def test_serve_without_model_or_quickstart_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="traitlens quickstart") as info:
        serve(None)
    assert "--model" in str(info.value) and str(DEFAULT_MODEL) in str(info.value)


def test_default_model_is_the_quickstart_model(tmp_path, monkeypatch, micro_dir):
    import shutil

    monkeypatch.chdir(tmp_path)
    shutil.copytree(micro_dir, tmp_path / DEFAULT_MODEL)
    models = load_served_models(None)
    assert list(models) == [DEFAULT_MODEL.name]
    assert models[DEFAULT_MODEL.name].class_names == ["circle", "square", "triangle"]


def test_several_models_are_named_without_paths(micro_dir, tmp_path):
    models = load_served_models([str(micro_dir), micro_dir])  # one model, given twice
    assert list(models) == [micro_dir.name]
    # Two folders of the same name: the second gets its parent in front; timm/preset names stay as given.
    a, b = tmp_path / "a" / "best", tmp_path / "b" / "best"
    for p in (a, b):
        p.mkdir(parents=True)
    assert served_name(a) == "best"
    assert served_name(b, taken={"best"}) == "b/best"
    assert served_name("traitlens-vit-micro") == "traitlens-vit-micro"
    assert served_name("traitlens-vit-micro", taken={"traitlens-vit-micro"}) == "traitlens-vit-micro-2"
    assert str(tmp_path) not in served_name(b, taken={"best", "b/best"})


def test_unknown_and_bad_limits_are_refused():
    with pytest.raises(TypeError, match="max_upload_bytes"):
        serve("x", workerz=2)
    with pytest.raises(ValueError, match="workers"):
        ServerLimits(workers=0)
    assert ServerLimits.from_kwargs(workers=None, queue_size=0).queue_size == 0


@pytest.mark.parametrize(("host", "loop"), [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False), ("192.168.1.10", False)])
def test_is_loopback(host, loop):
    assert is_loopback(host) is loop


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _burst(base: str, n: int) -> list[int]:
    import httpx

    data = png_bytes()
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        async def one() -> int:
            r = await client.post("/api/explain", files={"image": ("x.png", data, "image/png")},
                                  data={"method": "cdam"})
            return r.status_code

        return list(await asyncio.gather(*(one() for _ in range(n))))


def test_serve_runs_uvicorn_on_loopback(micro_dir):
    pytest.importorskip("uvicorn", reason="the 'web' extra is not installed")
    httpx = pytest.importorskip("httpx")
    port = free_port()
    code = f"from traitlens.server import serve; serve({str(micro_dir)!r}, port={port}, workers=1)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=2)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["capacity"] == 1 + ServerLimits().queue_size
        assert "server" not in r.headers
        # More idle sockets than the request limit (the 70 half-open connections) do not block anyone.
        idle = [socket.create_connection(("127.0.0.1", port), timeout=2) for _ in range(70)]
        try:
            time.sleep(0.2)
            assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).status_code == 200
        finally:
            for s in idle:
                s.close()
        info_r = httpx.get(f"http://127.0.0.1:{port}/api/info", timeout=5)
        info = info_r.json()
        assert info["models"][0]["name"] == micro_dir.name  # the folder's name, never its path
        assert str(micro_dir) not in info_r.text and str(micro_dir.parent) not in info_r.text
        # A page reached under a foreign host name (DNS rebinding) is refused.
        assert httpx.get(f"http://127.0.0.1:{port}/", headers={"host": "evil.example"}, timeout=5).status_code == 400
        # 50 concurrent real HTTP requests: each gets an answer (200, or 503 when the pool is full), none a crash.
        codes = asyncio.run(_burst(f"http://127.0.0.1:{port}", 50))
        assert set(codes) <= {200, 503}, codes
        assert 200 in codes
        assert httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5).json()["status"] == "ok"
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_missing_web_extra_names_the_install_command(monkeypatch, micro_dir):
    import traitlens.server as server

    monkeypatch.setitem(server._WEB_MODULES, "traitlens_no_such_module", "no-such-package")
    with pytest.raises(RuntimeError, match=r"no-such-package.*pip install 'traitlens\[web\]'"):
        serve(str(micro_dir))


def test_serve_offers_the_samples_next_to_the_model_or_the_given_folders(tmp_path, micro_dir, monkeypatch):
    import shutil

    uvicorn = pytest.importorskip("uvicorn", reason="the 'web' extra is not installed")
    from typer.testing import CliRunner

    import traitlens.server as server
    from traitlens.cli import app

    best = tmp_path / "traitlens-quickstart" / "run" / "best"
    shutil.copytree(micro_dir, best)
    (tmp_path / "traitlens-quickstart" / "samples").mkdir()
    seen: list[list] = []
    real = server.create_app

    def spy(*args, **kwargs):
        seen.append(list(kwargs["examples"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(server, "create_app", spy)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: None)
    serve(str(best))
    assert seen[-1] == [(tmp_path / "traitlens-quickstart" / "samples").resolve()]
    mine = tmp_path / "mine"
    mine.mkdir()
    result = CliRunner().invoke(app, ["serve", "--model", str(best), "--examples", str(mine)])
    assert result.exit_code == 0, result.output
    assert seen[-1] == [mine]
