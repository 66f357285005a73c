"""Helpers for the server tests: images as bytes, PNG data URLs, what the server feeds the model, a uvicorn server
in a thread, and the Chromium the browser tests drive."""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

CLASS_NAMES = ["circle", "square", "triangle"]


def png_bytes(width: int = 80, height: int = 60, seed: int = 0, fmt: str = "PNG") -> bytes:
    """A random-noise RGB image encoded as `fmt`."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def decode_data_url(url: str) -> Image.Image:
    """Decode a `data:image/png;base64,...` URL; fails the test if it is not a PNG."""
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix), url[:40]
    raw = base64.b64decode(url[len(prefix):], validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    img = Image.open(io.BytesIO(raw), formats=["PNG"])
    img.load()
    return img


def model_input(model, data: bytes) -> torch.Tensor:
    """What the server feeds the model for an upload: RGB, squash-resized to the input size, normalised."""
    from traitlens.backbones import data_config, normalize
    from traitlens.backbones.preprocess import pil_to_tensor

    img = Image.open(io.BytesIO(data)).convert("RGB")
    size = tuple(data_config(model)["input_size"][1:])
    return normalize(model, pil_to_tensor(img, size)[None])


class TinyConv(nn.Module):
    """A two-class model that is no ViT and no timm CNN: its forward returns logits, nothing more."""

    def __init__(self) -> None:
        super().__init__()
        self.num_classes = 2
        self.pretrained_cfg = {"input_size": (3, 16, 16), "mean": (0.5,) * 3, "std": (0.5,) * 3}
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))


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


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_in_thread(config: Any) -> Iterator[None]:
    """Run `uvicorn.Server(config)` in a daemon thread until the block ends (waits up to 30 s for the start)."""
    import uvicorn

    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(10)


def collect_errors(page: Any) -> list[str]:
    """A list that fills with the page's uncaught errors and console errors (a Playwright page), for a test to
    assert empty."""
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    return errors
