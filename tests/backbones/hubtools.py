"""Test helpers: the Hugging Face hub as seen by `traitlens.backbones.hub`, without opening a socket."""

from __future__ import annotations

from pathlib import Path

import pytest


def fake_hub(monkeypatch: pytest.MonkeyPatch, reachable: bool, cache: Path) -> list[float]:
    """Make the connectivity probe answer `reachable` and point the hub cache at `cache` (empty unless a test fills
    it); clears HF_HUB_OFFLINE and proxies, so messages name huggingface.co:443. Returns the list the probe appends
    its timeout to on every call."""
    from huggingface_hub import constants

    from traitlens.backbones import hub

    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://huggingface.co")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    calls: list[float] = []

    def probe(timeout: float = hub.PROBE_TIMEOUT_S) -> bool:
        calls.append(timeout)
        return reachable

    monkeypatch.setattr(hub, "hub_reachable", probe)
    return calls
