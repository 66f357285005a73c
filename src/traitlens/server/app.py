"""The FastAPI app behind `traitlens serve`: a JSON API and one static page that uses it.

Hardening (the issue's list): uploads are capped before parsing (413), typed by their magic bytes (415) and
decoded with a pixel cap (422); models are picked by name from the ones loaded at start-up, so no request
ever names a file; all model work runs in a bounded pool (503 when full) under a per-request timeout (504);
state-changing requests from other web sites are refused (403); a bug answers 500 with a request id, never a
traceback. The pieces: `middleware` (request ids, request limit, Host and Origin guards, body cap, headers),
`service` (checks and jobs), `routes` (HTTP), `concepts` (the in-memory concept store).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import torch.nn as nn
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from traitlens import __version__
from traitlens.evaluation import Atlas
from traitlens.server._limits import ServerLimits
from traitlens.server.atlas_view import atlas_router
from traitlens.server.concepts import concept_class
from traitlens.server.middleware import (
    LOOPBACK_HOSTS,
    BodyLimit,
    ConcurrencyLimit,
    HostGuard,
    InternalErrors,
    OriginGuard,
    SecurityHeaders,
)
from traitlens.server.routes import router, static_dir
from traitlens.server.service import RequestError, Server, model_family

__all__ = ["LOOPBACK_HOSTS", "RequestError", "concept_class", "create_app", "model_family"]

_DESCRIPTION = ("Upload an image, pick a model, a method and a target (class, top-k or concept) and get overlays, "
                "top-k classes, per-head maps and 'why A, not B' contrasts. Errors are JSON `{\"detail\": message}`.")


def create_app(
    models: Mapping[str, nn.Module],
    limits: ServerLimits | None = None,
    allowed_hosts: list[str] | None = None,
    docs: bool = False,
    atlases: Mapping[str, Atlas] | None = None,
    examples: Sequence[str | Path] = (),
    amp: bool = False,
) -> FastAPI:
    """Build the app serving `models` (name → loaded model; the first is the default).

    Args:
        models: the registry of models, fixed at start-up; requests choose among them by name.
        limits: upload, pool, queue and timeout bounds; `ServerLimits()` when None.
        allowed_hosts: Host header values to answer (DNS-rebinding guard); `["*"]` for any. None: loopback
            names plus `testserver` (FastAPI's TestClient).
        docs: serve FastAPI's interactive `/docs` page (it loads Swagger UI from a CDN); off by default.
        atlases: trait atlases to show at `/atlas` (name → `Atlas`, see `server.atlas_view.load_atlases`).
        examples: folders of sample images the page offers to click, before the built-in ones
            (`traitlens.server.examples`).
        amp: mixed precision for the amp-safe methods (the others run in float32); responses name the dtype.

    Returns:
        The FastAPI app; its OpenAPI schema is at `/openapi.json`, the page at `/` (and `/docs` with `docs`).

    Example:
        >>> app = create_app({"micro": load_model("runs/micro/best")})  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    srv = Server(models, limits or ServerLimits(), examples, amp=amp)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        srv.pool.shutdown()

    app = FastAPI(title="traitlens serve", version=__version__, lifespan=lifespan, description=_DESCRIPTION,
                  docs_url="/docs" if docs else None, redoc_url=None)
    app.state.server = srv
    app.state.atlases = dict(atlases or {})
    # Added innermost first: a request meets SecurityHeaders, InternalErrors, ConcurrencyLimit, HostGuard,
    # OriginGuard, then BodyLimit, then the routes.
    app.add_middleware(BodyLimit, max_bytes=srv.limits.max_request_bytes)
    app.add_middleware(OriginGuard)
    app.add_middleware(HostGuard, allowed_hosts=allowed_hosts or [*LOOPBACK_HOSTS, "testserver"])
    app.add_middleware(ConcurrencyLimit, limit=srv.limits.max_concurrent_connections)
    app.add_middleware(InternalErrors)
    app.add_middleware(SecurityHeaders)
    app.mount("/static", StaticFiles(directory=static_dir()), name="static")
    app.include_router(router)
    app.include_router(atlas_router)
    return app
