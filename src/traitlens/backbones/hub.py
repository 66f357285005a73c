"""Hub downloads that fail fast offline: a cached copy loads, a missing one is a one-line error at once.

Without network, `huggingface_hub` retries every request five times with back-off before it falls back to its
cache (about half a minute per file, and timm asks for two files). `hub_access` checks first: when
`HF_HUB_OFFLINE` is set, or a TCP connection to the hub (or the HTTPS proxy) cannot be opened within
`PROBE_TIMEOUT_S`, the download runs in `huggingface_hub`'s offline mode, which reads the local cache only.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from traitlens.backbones.builders import ModelLoadError

__all__ = ["PROBE_TIMEOUT_S", "HubUnavailableError", "hub_access", "hub_offline_requested", "hub_reachable"]

log = logging.getLogger(__name__)

#: Seconds the connectivity probe waits for name resolution plus a TCP connection.
PROBE_TIMEOUT_S = 2.0


class HubUnavailableError(ModelLoadError):
    """Weights or a config must come from the Hugging Face hub, which cannot be reached, and are not cached."""


def hub_offline_requested() -> bool:
    """Whether the user asked for offline mode (`HF_HUB_OFFLINE` / `TRANSFORMERS_OFFLINE`, now or at import)."""
    from huggingface_hub import constants

    env = (os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or "").upper()
    return bool(constants.HF_HUB_OFFLINE) or env in {"1", "ON", "YES", "TRUE"}


def _endpoint() -> tuple[str, int]:
    """(host, port) the hub is reached through: the HTTPS proxy when one is set, else the hub endpoint."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlsplit(proxy if proxy else constants.ENDPOINT)
    default_port = 443 if url.scheme == "https" else 80
    return url.hostname or "huggingface.co", url.port or default_port


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub (or the HTTPS proxy) opens within `timeout` seconds.

    Name resolution has no timeout of its own, so the probe runs in a daemon thread and is abandoned after
    `timeout`.
    """
    host, port = _endpoint()
    ok: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok.append(True)
        except OSError:
            ok.append(False)

    worker = threading.Thread(target=probe, name="traitlens-hub-probe", daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(ok and ok[0])


@contextmanager
def _offline_mode() -> Iterator[None]:
    """`huggingface_hub` (and transformers, through it) in offline mode: it reads the flag on every request."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


@contextmanager
def hub_access(what: str, hint: str = "") -> Iterator[None]:
    """Run a hub download (`timm.create_model(..., pretrained=True)`, `from_pretrained`) that fails fast offline.

    Online, the body runs as it is. Offline (`HF_HUB_OFFLINE` set, or the hub unreachable) it runs in offline
    mode: a cached copy loads without a request; a missing one raises at once.

    Args:
        what: what is being loaded, for the message (e.g. "pretrained weights for 'vit_base_patch16_224'").
        hint: more advice appended to the message (e.g. which extra to install).

    Raises:
        HubUnavailableError: offline and not in the local cache; one line saying what to do.
    """
    if hub_offline_requested():
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable():
        host, port = _endpoint()
        reason = f"{host}:{port} cannot be reached"
        log.info("%s: loading %s from the local Hugging Face cache only", reason, what)
    else:
        yield
        return
    from huggingface_hub import constants

    try:
        with _offline_mode():
            yield
    except OSError as err:  # huggingface_hub's LocalEntryNotFoundError and OfflineModeIsEnabled are OSErrors
        raise HubUnavailableError(
            f"cannot load {what}: {reason} and no copy is in the Hugging Face cache ({constants.HF_HUB_CACHE}). "
            "Pass a local model folder, or download it once with network access (HF_HUB_OFFLINE=1 then uses the "
            f"cached copy){hint}") from err
