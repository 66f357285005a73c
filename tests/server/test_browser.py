"""End to end: a real uvicorn server and the page driven in headless Chromium (Playwright, system browser).

Skipped only where the driver package (playwright) or a Chromium binary is absent. Playwright's own browser
downloads are never used: the test launches the system Chromium (`apt-get install chromium`), or the binary
named by TRAITLENS_CHROMIUM.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server tests need the 'web' extra (fastapi, python-multipart)")
uvicorn = pytest.importorskip("uvicorn", reason="the browser test needs uvicorn (the 'web' extra)")
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the 'playwright' package")

from traitlens.backbones import load_model  # noqa: E402
from traitlens.server import ServerLimits, create_app  # noqa: E402

from .helpers import decode_data_url, png_bytes  # noqa: E402

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """TRAITLENS_CHROMIUM, else a Chromium on PATH (Debian: /usr/bin/chromium)."""
    explicit = os.environ.get("TRAITLENS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


@pytest.fixture(scope="module")
def live_server(tmp_path_factory) -> Iterator[str]:
    """uvicorn serving a micro model in a thread on a free loopback port; yields the base URL."""
    import torch

    from traitlens.backbones import create_preset, save_model

    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", 3, class_names=["circle", "square", "triangle"])
    torch.nn.init.normal_(model.head.weight, std=0.5)
    path = save_model(model, tmp_path_factory.mktemp("e2e") / "micro")
    app = create_app({"micro": load_model(path)}, ServerLimits(workers=1, queue_size=4))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def page(live_server):
    """A fresh headless Chromium profile with one page."""
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium binary (apt-get install chromium, or set TRAITLENS_CHROMIUM)")
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        context = pw.chromium.launch_persistent_context(profile, executable_path=exe, headless=True,
                                                        args=CHROMIUM_ARGS)
        try:
            pg = context.new_page()
            pg.set_default_timeout(60_000)
            errors: list[str] = []
            pg.on("pageerror", lambda err: errors.append(str(err)))
            pg.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            pg.errors = errors
            yield pg
        finally:
            context.close()


def test_upload_choose_method_and_see_the_overlay(page, live_server, tmp_path):
    image = tmp_path / "bird.png"
    image.write_bytes(png_bytes(80, 60, seed=4))
    page.goto(live_server + "/")
    page.wait_for_selector("#server-state.ok")
    methods = page.eval_on_selector_all("#method option", "els => els.map(e => e.value)")
    assert "raw_attention" in methods and "cdam" in methods
    page.set_input_files("#image", str(image))
    page.select_option("#method", "raw_attention")
    page.click("#explain-btn")
    # Selectors, not wait_for_function: the page's CSP forbids the string evaluation that would need.
    page.locator("#method-name", has_text="raw_attention on micro").wait_for()
    page.locator("#status:empty").wait_for(state="attached")
    src = page.get_attribute("#overlays img.overlay", "src")
    overlay = decode_data_url(src)
    assert overlay.size == (320, 240)  # longest side 320, the upload's 4:3 aspect
    shown = page.eval_on_selector("#overlays img.overlay", "img => [img.naturalWidth, img.naturalHeight]")
    assert shown == [320, 240]
    # raw_attention has per-head maps: the micro model's two heads are shown.
    assert page.is_visible("#heads-panel")
    assert len(page.query_selector_all("#heads img.head")) == 2
    assert page.locator("#predictions li").count() == 3
    assert page.errors == []


def test_contrast_and_error_messages_in_the_page(page, live_server, tmp_path):
    image = tmp_path / "x.png"
    image.write_bytes(png_bytes(64, 64, seed=5))
    page.goto(live_server + "/")
    page.wait_for_selector("#server-state.ok")
    page.set_input_files("#image", str(image))
    page.select_option("#method", "cdam")
    page.select_option("#target-kind", "class")
    page.select_option("#target-class", "0")
    page.select_option("#contrast", "2")
    page.wait_for_selector("#contrast-panel:not([hidden]) img.contrast")
    assert page.text_content("#contrast-title") == "Why circle, not triangle"
    assert decode_data_url(page.get_attribute("#contrast-out img.contrast", "src")).size == (320, 320)
    # A file that is not an image: the server's 415 message is shown to the user.
    text = tmp_path / "notes.png"
    text.write_bytes(b"definitely not a picture")
    page.set_input_files("#image", str(text))
    page.wait_for_selector("#error:not([hidden])")
    assert "415" in page.text_content("#error") and "not a supported image" in page.text_content("#error")


def test_concept_from_sample_images_in_the_page(page, live_server, tmp_path):
    samples = []
    for seed in (11, 12):
        path = tmp_path / f"sample{seed}.png"
        path.write_bytes(png_bytes(40, 40, seed=seed))
        samples.append(str(path))
    image = tmp_path / "query.png"
    image.write_bytes(png_bytes(40, 40, seed=13))
    page.goto(live_server + "/")
    page.wait_for_selector("#server-state.ok")
    page.click("#concept-panel summary")
    page.fill("#concept-name", "speckle")
    page.set_input_files("#concept-images", samples)
    page.click("#concept-btn")
    page.locator("#concept-status", has_text="ready").wait_for()
    assert page.input_value("#target-kind") == "concept"
    page.select_option("#method", "cdam")
    page.set_input_files("#image", str(image))
    page.locator("#overlays figcaption", has_text="concept: speckle").wait_for()
    assert decode_data_url(page.get_attribute("#overlays img.overlay", "src")).size == (320, 320)
