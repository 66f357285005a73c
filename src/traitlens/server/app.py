"""The FastAPI app behind `traitlens serve`: a JSON API and one static page that uses it.

Hardening (the issue's list): uploads are capped before parsing (413), typed by their magic bytes (415) and
decoded with a pixel cap (422); models are picked by name from the ones loaded at start-up, so no request
ever names a file; all model work runs in a bounded pool (503 when full) under a per-request timeout (504).
The pieces: `middleware` (body cap, Host guard, headers), `service` (checks and jobs), `routes` (HTTP),
`concepts` (the in-memory concept store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import torch.nn as nn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from traitlens import __version__
from traitlens.server._limits import ServerLimits
from traitlens.server.concepts import concept_class
from traitlens.server.middleware import LOOPBACK_HOSTS, BodyLimit, HostGuard, SecurityHeaders
from traitlens.server.routes import router, static_dir
from traitlens.server.service import RequestError, Server, model_family

__all__ = ["LOOPBACK_HOSTS", "RequestError", "concept_class", "create_app", "model_family"]

_DESCRIPTION = ("Upload an image, pick a model, a method and a target (class, top-k or concept) and get overlays, "
                "top-k classes, per-head maps and 'why A, not B' contrasts. Errors are JSON `{\"detail\": message}`.")


def create_app(
    models: Mapping[str, nn.Module],
    limits: ServerLimits | None = None,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """Build the app serving `models` (name → loaded model; the first is the default).

    Args:
        models: the registry of models, fixed at start-up; requests choose among them by name.
        limits: upload, pool, queue and timeout bounds; `ServerLimits()` when None.
        allowed_hosts: Host header values to answer (DNS-rebinding guard); `["*"]` for any. None: loopback
            names plus `testserver` (FastAPI's TestClient).

    Returns:
        The FastAPI app; its OpenAPI schema is at `/openapi.json`, the page at `/`.

    Example:
        >>> app = create_app({"micro": load_model("runs/micro/best")})  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    srv = Server(models, limits or ServerLimits())

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        srv.pool.shutdown()

    app = FastAPI(title="traitlens serve", version=__version__, lifespan=lifespan, description=_DESCRIPTION)
    app.state.server = srv
    app.add_middleware(BodyLimit, max_bytes=srv.limits.max_request_bytes)
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts or [*LOOPBACK_HOSTS, "testserver"])
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.include_router(router)
    return app
