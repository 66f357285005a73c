"""Fixtures for the server tests: a micro ViT saved and loaded like a served model, a client factory."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from .helpers import CLASS_NAMES


@pytest.fixture(scope="session")
def micro_dir(tmp_path_factory: pytest.TempPathFactory):
    """A traitlens-vit-micro model (3 classes, 32 px) saved with `save_model`, as the server would load it."""
    from traitlens.backbones import create_preset, save_model

    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", 3, class_names=CLASS_NAMES)
    # timm zero-initialises the head: random weights make the classes (and their maps) differ.
    torch.nn.init.normal_(model.head.weight, std=0.5)
    torch.nn.init.normal_(model.head.bias, std=0.1)
    return save_model(model, tmp_path_factory.mktemp("micro") / "model")


@pytest.fixture
def micro_model(micro_dir):
    """A fresh load of the micro model (each test may give it to a server of its own)."""
    from traitlens.backbones import load_model

    return load_model(micro_dir)


@pytest.fixture
def make_client(micro_dir) -> Iterator[Callable[..., object]]:
    """Factory: `make_client(workers=1, queue_size=0, models=None)` → a started TestClient."""
    from fastapi.testclient import TestClient

    from traitlens.backbones import load_model
    from traitlens.server import ServerLimits, create_app

    clients = []

    def make(models: dict | None = None, allowed_hosts: list[str] | None = None, amp: bool = False, **limits):
        app = create_app(models or {"micro": load_model(micro_dir)}, ServerLimits.from_kwargs(**limits),
                         allowed_hosts=allowed_hosts, amp=amp)
        client = TestClient(app)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)

