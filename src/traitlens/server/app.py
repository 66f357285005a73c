"""The FastAPI app behind `traitlens serve`: a JSON API and one static page that uses it.

Hardening (the issue's list): uploads are capped before parsing (413), typed by their magic bytes (415) and
decoded with a pixel cap (422); models are picked by name from the ones loaded at start-up, so no request
ever names a file; all model work runs in a bounded pool (503 when full) under a per-request timeout (504).
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any

import torch
import torch.nn as nn
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from PIL import Image
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from traitlens.backbones.introspect import class_names_of, is_vit
from traitlens.backbones.preprocess import data_config, normalize, pil_to_tensor
from traitlens.explain import explain, get_method, list_methods
from traitlens.explain._postprocess import upsample_maps
from traitlens.explain._registry import MethodInfo
from traitlens.explain.api import num_classes_of
from traitlens.server._images import FORMATS, UploadError, decode_image, sniff_format
from traitlens.server._limits import ServerLimits
from traitlens.server._pool import BoundedPool, ModelReplicas, PoolBusy, PoolTimeout
from traitlens.server._render import display_image, head_pngs, overlay_png
from traitlens.server._schemas import (
    ConceptOut,
    ContrastOut,
    ErrorOut,
    ExplainOut,
    HealthOut,
    InfoOut,
    MethodOut,
    ModelOut,
    PredictionOut,
    SizeOut,
    TargetOut,
)

__all__ = ["LOOPBACK_HOSTS", "RequestError", "concept_class", "create_app", "model_family"]

log = logging.getLogger(__name__)

#: Host names a loopback-bound server answers to (anything else is refused: DNS-rebinding guard).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
_MAX_TEXT = 200
_STATIC = "static"
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "bad request: unknown method or class, bad target, unusable file",
        404: "unknown model or concept id",
        413: "upload larger than the limit",
        415: "not a supported image type (judged by the file's content)",
        422: "corrupt or truncated image, or too many pixels (decompression-bomb guard)",
        501: "concept targets are not available in this traitlens version",
        503: "the server is busy; retry",
        504: "the request took longer than the server's time limit",
    }.items()
}


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status, the message says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def concept_class() -> type | None:
    """`traitlens.explain._concept.Concept` when this traitlens has it, else None (concept endpoints answer 501)."""
    try:
        from traitlens.explain._concept import Concept
    except ImportError:
        return None
    return Concept if hasattr(Concept, "from_images") else None


def model_family(model: nn.Module) -> str:
    """'native' for interpretable-by-design models (they expose `native_maps`), 'vit' for timm ViTs, else 'cnn'."""
    if callable(getattr(model, "native_maps", None)):
        return "native"
    return "vit" if is_vit(model) else "cnn"


@dataclass
class _Served:
    """A model loaded at start-up, with one replica per worker."""

    name: str
    model: nn.Module
    replicas: ModelReplicas
    family: str
    num_classes: int | None
    class_names: list[str] | None
    input_size: tuple[int, int]

    def describe(self) -> ModelOut:
        return ModelOut(name=self.name, family=self.family, num_classes=self.num_classes,
                        class_names=self.class_names, input_size=list(self.input_size),
                        methods=[m.name for m in list_methods(family=self.family)])


@dataclass
class _StoredConcept:
    id: str
    model: str
    concept: Any

    def describe(self) -> ConceptOut:
        return ConceptOut(id=self.id, name=self.concept.name, model=self.model,
                          n_images=int(getattr(self.concept, "n_images", 0)),
                          dim=int(self.concept.vector.numel()))


class _ConceptStore:
    """Concepts in memory under random ids; the oldest is dropped beyond `capacity`."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, _StoredConcept] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, model: str, concept: Any) -> _StoredConcept:
        item = _StoredConcept(secrets.token_hex(6), model, concept)
        with self._lock:
            self._items[item.id] = item
            while len(self._items) > self.capacity:
                old = self._items.popitem(last=False)[1]
                log.info("dropping concept %s (%s): more than %d stored", old.id, old.concept.name, self.capacity)
        return item

    def get(self, concept_id: str) -> _StoredConcept | None:
        with self._lock:
            return self._items.get(concept_id)

    def remove(self, concept_id: str) -> bool:
        with self._lock:
            return self._items.pop(concept_id, None) is not None

    def all(self) -> list[_StoredConcept]:
        with self._lock:
            return list(self._items.values())


@dataclass
class _Target:
    """A parsed target: what to pass to `explain` ("top1", "topk:K", a class id, or a Concept)."""

    value: Any


class _BodyLimit:
    """Refuse request bodies above `max_bytes` with 413 before anything parses them.

    The body is read (at most `max_bytes` + one chunk) and replayed to the app, so a lying or missing
    Content-Length cannot get past the limit either.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def _reject(self, scope: Scope, receive: Receive, send: Send, size: str) -> None:
        msg = f"request body of {size} bytes is larger than the server's limit of {self.max_bytes} bytes"
        await JSONResponse({"detail": msg}, status_code=413)(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send, declared.decode())
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._reject(scope, receive, send, f"more than {self.max_bytes}")
                return
            chunks.append(body)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class _HostGuard:
    """Answer only requests whose Host header names an allowed host (a DNS-rebinding guard for a local server)."""

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allow_any = "*" in allowed_hosts
        self.allowed = {h.lower() for h in allowed_hosts}

    @staticmethod
    def host_name(header: str) -> str:
        """'example:80' → 'example', '[::1]:8000' → '[::1]'."""
        header = header.strip().lower()
        if header.startswith("["):
            return header[: header.find("]") + 1] if "]" in header else header
        return header.split(":", 1)[0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allow_any or scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        if self.host_name(header) not in self.allowed:
            msg = f"host '{header[:100]}' is not served here; open the page through 127.0.0.1 or localhost"
            await JSONResponse({"detail": msg}, status_code=400)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _SecurityHeaders:
    """nosniff, no framing, no referrer on every response; a strict CSP on the page (no inline code, no CDN)."""

    CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
           "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # FastAPI's /docs pages load their scripts from a CDN; everything else gets the strict policy.
        strict = not scope["path"].startswith(("/docs", "/redoc"))

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                            (b"referrer-policy", b"no-referrer")]
                if strict:
                    headers.append((b"content-security-policy", self.CSP.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _static_dir() -> Path:
    return Path(str(resources.files("traitlens.server") / _STATIC))


def _clean_text(text: str | None, what: str) -> str:
    """Strip and bound a short text field; control characters are refused."""
    text = (text or "").strip()
    if len(text) > _MAX_TEXT:
        raise RequestError(400, f"{what} is longer than {_MAX_TEXT} characters")
    if any(ord(c) < 32 for c in text):
        raise RequestError(400, f"{what} contains control characters")
    return text


def _method_out(info: MethodInfo) -> MethodOut:
    return MethodOut(name=info.name, signed=info.signed, class_specific=info.class_specific,
                     needs_grad=info.needs_grad, families=list(info.families), concept=info.concept,
                     summary=info.summary, cost=info.cost, default_upsample=info.default_upsample,
                     default_norm=info.default_norm)


def _logits_of(output: Any) -> torch.Tensor:
    """A model's logits whether it returns a tensor or a `ModelOutput`-like object."""
    return output if isinstance(output, torch.Tensor) else output.logits


class _Server:
    """State and handlers of one app: the served models, the pool, the concepts."""

    def __init__(self, models: Mapping[str, nn.Module], limits: ServerLimits) -> None:
        if not models:
            raise ValueError("create_app needs at least one model")
        self.limits = limits
        self.pool = BoundedPool(limits.workers, limits.queue_size)
        self.concepts = _ConceptStore(limits.max_concepts)
        self.models: dict[str, _Served] = {}
        for name, model in models.items():
            model.eval()
            size = tuple(int(v) for v in data_config(model)["input_size"][1:])
            names = class_names_of(model)
            self.models[name] = _Served(name, model, ModelReplicas(model, limits.workers), model_family(model),
                                        num_classes_of(model), list(names) if names else None, size)
        self.default_model = next(iter(self.models))

    # -- look-ups (cheap, before any pool slot is taken) -----------------------------------------------------------
    def served(self, name: str | None) -> _Served:
        name = _clean_text(name, "model") or self.default_model
        if name not in self.models:
            raise RequestError(404, f"unknown model '{name}'; this server has: {', '.join(self.models)}")
        return self.models[name]

    @staticmethod
    def method(name: str | None) -> MethodInfo:
        name = _clean_text(name, "method") or "cdam"
        try:
            return get_method(name)
        except ValueError as err:
            raise RequestError(400, str(err)) from err

    def target(self, text: str | None, served: _Served, info: MethodInfo, *, contrast: bool = False) -> _Target:
        """Parse 'top1', 'topk:K', a class index, a class name or 'concept:<id>' for `served`."""
        what = "contrast" if contrast else "target"
        t = _clean_text(text, what) or "top1"
        if t == "top1":
            return _Target("top1")
        if t.startswith("topk:"):
            if contrast:
                raise RequestError(400, "the contrast must be one class (or concept), not topk")
            k = t.split(":", 1)[1]
            bound = min(self.limits.max_targets, served.num_classes or self.limits.max_targets)
            if not k.isdigit() or not 1 <= int(k) <= bound:
                raise RequestError(400, f"bad {what} '{t}': K must be an integer in 1..{bound}")
            return _Target(t)
        if t.startswith("concept:"):
            return self._concept_target(t.split(":", 1)[1], served, info, what)
        if re.fullmatch(r"[+-]?\d+", t):
            idx, n = int(t), served.num_classes
            if n is not None and not 0 <= idx < n:
                raise RequestError(400, f"class index {idx} out of range: model '{served.name}' has {n} classes "
                                        f"(0..{n - 1})")
            return _Target(idx)
        if served.class_names and t in served.class_names:
            return _Target(served.class_names.index(t))
        known = ", ".join(served.class_names[:20]) + (" ..." if len(served.class_names or []) > 20 else "") \
            if served.class_names else "none (use class indices)"
        raise RequestError(400, f"unknown class '{t}' for model '{served.name}'; class names: {known}")

    def _concept_target(self, concept_id: str, served: _Served, info: MethodInfo, what: str) -> _Target:
        if concept_class() is None:
            raise RequestError(501, "concept targets are not available in this traitlens version "
                                    "(traitlens.explain._concept.Concept is missing)")
        item = self.concepts.get(concept_id)
        if item is None:
            raise RequestError(404, f"unknown concept id '{concept_id}' in {what}; create one with POST /api/concept "
                                    "(concepts live in memory and vanish when the server restarts)")
        if item.model != served.name:
            raise RequestError(400, f"concept '{item.concept.name}' ({concept_id}) was computed with model "
                                    f"'{item.model}', not '{served.name}'")
        if not info.concept:
            capable = ", ".join(m.name for m in list_methods() if m.concept) or "none"
            raise RequestError(400, f"method '{info.name}' does not take concept targets; concept-capable: {capable}")
        return _Target(item.concept)

    def check_upload(self, data: bytes, label: str) -> None:
        """The cheap checks (size, magic bytes) before the upload takes a pool slot."""
        if not data:
            raise UploadError(400, f"{label}: the uploaded file is empty")
        if len(data) > self.limits.max_upload_bytes:
            raise UploadError(413, f"{label}: upload is larger than the limit of {self.limits.max_upload_bytes} "
                                   "bytes")
        if sniff_format(data) is None:
            raise UploadError(415, f"{label}: not a supported image (judged by its content, not its name or "
                                   f"content type); accepted: {', '.join(FORMATS.values())}")

    def decode(self, data: bytes, label: str) -> Image.Image:
        return decode_image(data, max_bytes=self.limits.max_upload_bytes, max_pixels=self.limits.max_pixels,
                            label=label)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a job in the pool, turning every failure into an HTTP error with a message."""
        try:
            return await self.pool.run(fn, *args, timeout=self.limits.timeout_s)
        except PoolBusy as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
        except PoolTimeout as err:
            raise HTTPException(504, str(err)) from err

    # -- jobs (run in the pool) ---------------------------------------------------------------------------------
    @staticmethod
    def _input(model: nn.Module, images01: torch.Tensor) -> torch.Tensor:
        x = normalize(model, images01)
        param = next(model.parameters(), None)
        return x if param is None else x.to(param.device, param.dtype)

    def explain_job(self, served: _Served, info: MethodInfo, data: bytes, target: _Target,
                    contrast: _Target | None, include_raw: bool) -> ExplainOut:
        """Decode, explain, render; everything CPU-heavy of one /api/explain request."""
        start = time.perf_counter()
        image = self.decode(data, "image")
        x01 = pil_to_tensor(image, served.input_size)[None]
        model = served.replicas.acquire()
        try:
            x = self._input(model, x01)
            exp = explain(model, x, method=info.name, target=target.value)
            logits = exp.logits
            if logits is None:
                with torch.no_grad():
                    logits = _logits_of(model(x))
            other = explain(model, x, method=info.name, target=contrast.value) if contrast is not None else None
        finally:
            served.replicas.release(model)
        probs = logits.detach().float().softmax(-1)[0]
        names = served.class_names
        top = probs.topk(min(5, probs.numel()))
        predictions = [PredictionOut(index=int(i), name=names[int(i)] if names else None, prob=float(p),
                                     logit=float(logits[0, int(i)]))
                       for p, i in zip(top.values, top.indices, strict=True)]
        shown = display_image(image, self.limits.display_size)
        targets = []
        for k in range(exp.maps.shape[1]):
            idx = int(exp.targets[0, k])
            name = exp.target_names[0][k] if exp.target_names else str(idx)
            heads = None
            if exp.head_maps is not None:
                heads = head_pngs(exp.head_maps[0, k, : self.limits.max_heads], exp.signed,
                                  self.limits.head_display_size)
            targets.append(TargetOut(
                index=idx if idx >= 0 else None, name=name, prob=float(probs[idx]) if idx >= 0 else None,
                overlay=overlay_png(shown, exp.maps[0, k], exp.signed),
                degenerate=bool(exp.degenerate[0, k]) if exp.degenerate is not None else False,
                heads=heads, raw=exp.patch_maps[0, k].float().tolist() if include_raw else None))
        contrast_out = None
        if other is not None:
            a_name, b_name = targets[0].name, (other.target_names[0][0] if other.target_names
                                               else str(int(other.targets[0, 0])))
            if int(exp.targets[0, 0]) >= 0 and int(exp.targets[0, 0]) == int(other.targets[0, 0]):
                raise RequestError(400, f"the contrast class '{b_name}' is the explained class itself; pick another")
            # Raw maps of one method on one image share a scale, so A − B is meaningful (posthoc.md §1).
            diff = (exp.patch_maps[0, 0] - other.patch_maps[0, 0]).float()
            pixel = upsample_maps(diff[None, None], tuple(x.shape[-2:]), info.default_upsample)[0, 0]
            contrast_out = ContrastOut(a=a_name, b=b_name, overlay=overlay_png(shown, pixel, True),
                                       max_abs=float(diff.abs().max()),
                                       raw=diff.tolist() if include_raw else None)
        return ExplainOut(
            model=served.name, method=info.name, signed=exp.signed, input_size=list(served.input_size),
            overlay_size=SizeOut(width=int(shown.shape[1]), height=int(shown.shape[0])),
            predictions=predictions, targets=targets, contrast=contrast_out,
            map_shape=list(exp.maps.shape), patch_map_shape=list(exp.patch_maps.shape),
            head_maps_shape=None if exp.head_maps is None else list(exp.head_maps.shape),
            seconds=round(time.perf_counter() - start, 4))

    def concept_job(self, served: _Served, datas: list[bytes], name: str) -> _StoredConcept:
        """Decode the sample images and compute the concept vector with the served model."""
        cls = concept_class()
        if cls is None:  # checked before; the module could only vanish in between in tests
            raise RequestError(501, "concept targets are not available in this traitlens version")
        x01 = torch.stack([pil_to_tensor(self.decode(d, f"image {i + 1}"), served.input_size)
                           for i, d in enumerate(datas)])
        model = served.replicas.acquire()
        try:
            concept = cls.from_images(model, self._input(model, x01), name)
        finally:
            served.replicas.release(model)
        return self.concepts.add(served.name, concept)


def _http(err: RequestError | UploadError) -> HTTPException:
    return HTTPException(err.status, str(err))


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
    srv = _Server(models, limits or ServerLimits())
    lim = srv.limits

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        srv.pool.shutdown()

    from traitlens import __version__

    app = FastAPI(title="traitlens serve", version=__version__, lifespan=lifespan,
                  description="Upload an image, pick a model, a method and a target (class, top-k or concept) and "
                              "get overlays, top-k classes, per-head maps and 'why A, not B' contrasts. Errors are "
                              "JSON `{\"detail\": message}`.")
    app.state.server = srv
    app.add_middleware(_BodyLimit, max_bytes=lim.max_request_bytes)
    app.add_middleware(_HostGuard, allowed_hosts=allowed_hosts or [*LOOPBACK_HOSTS, "testserver"])
    app.add_middleware(_SecurityHeaders)
    app.mount("/static", StaticFiles(directory=_static_dir()), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(_static_dir() / "index.html", media_type="text/html")

    @app.get("/api/health", response_model=HealthOut, summary="Liveness and load")
    async def health() -> HealthOut:
        return HealthOut(status="ok", in_flight=srv.pool.in_flight, capacity=srv.pool.capacity)

    @app.get("/api/info", response_model=InfoOut, summary="Models, methods (from the registry), concepts, limits")
    async def info() -> InfoOut:
        return InfoOut(version=__version__, default_model=srv.default_model,
                       models=[s.describe() for s in srv.models.values()],
                       methods=[_method_out(m) for m in list_methods()],
                       concepts_available=concept_class() is not None,
                       concepts=[c.describe() for c in srv.concepts.all()],
                       limits=lim.as_dict(), image_formats=list(FORMATS.values()))

    @app.post("/api/explain", response_model=ExplainOut, responses=_ERRORS, summary="Explain one uploaded image")
    async def explain_image(
        image: Annotated[UploadFile, File(description="PNG, JPEG, WebP, GIF or BMP (type read from the content)")],
        model: Annotated[str | None, Form(description="a served model's name; default: the first")] = None,
        method: Annotated[str, Form(description="a registered method, see /api/info")] = "cdam",
        target: Annotated[str, Form(description="top1 | topk:K | class index | class name | concept:<id>")] = "top1",
        contrast: Annotated[str | None, Form(description="'why A, not B': class index, name or concept:<id>; "
                                                         "A is the (first) target")] = None,
        include_raw: Annotated[bool, Form(description="also return the raw token-grid maps")] = False,
    ) -> ExplainOut:
        try:
            served = srv.served(model)
            info_ = srv.method(method)
            tgt = srv.target(target, served, info_)
            con = None
            if contrast and contrast.strip():
                if not info_.class_specific:
                    raise RequestError(400, f"method '{info_.name}' is not class-specific, so 'why A, not B' "
                                            "shows nothing; pick a class-specific method such as cdam")
                con = srv.target(contrast, served, info_, contrast=True)
            data = await image.read(lim.max_upload_bytes + 1)
            srv.check_upload(data, "image")
            return await srv.run(srv.explain_job, served, info_, data, tgt, con, include_raw)
        except HTTPException:
            raise
        except (RequestError, UploadError) as err:
            raise _http(err) from err
        except (ValueError, TypeError) as err:  # the method refused this model/target: a client error
            log.info("explain refused: %s", err)
            raise HTTPException(400, f"{type(err).__name__}: {err}") from err
        except Exception as err:
            log.exception("explain failed")
            raise HTTPException(500, f"the explanation failed: {type(err).__name__}: {err}") from err

    @app.post("/api/concept", response_model=ConceptOut, responses=_ERRORS,
              summary="Make a concept from a few sample images; explain it with target=concept:<id>")
    async def create_concept(
        images: Annotated[list[UploadFile], File(description="1 to max_concept_images sample images")],
        name: Annotated[str, Form(description="the concept's name, shown as the target name")],
        model: Annotated[str | None, Form(description="a served model's name; default: the first")] = None,
    ) -> ConceptOut:
        try:
            if concept_class() is None:
                raise RequestError(501, "concept targets are not available in this traitlens version "
                                        "(traitlens.explain._concept.Concept is missing)")
            served = srv.served(model)
            label = _clean_text(name, "concept name")
            if not label:
                raise RequestError(400, "a concept needs a name")
            if not 1 <= len(images) <= lim.max_concept_images:
                raise RequestError(400, f"a concept takes 1..{lim.max_concept_images} images, got {len(images)}")
            datas = []
            for i, f in enumerate(images):
                data = await f.read(lim.max_upload_bytes + 1)
                srv.check_upload(data, f"image {i + 1}")
                datas.append(data)
            item = await srv.run(srv.concept_job, served, datas, label)
            return item.describe()
        except HTTPException:
            raise
        except (RequestError, UploadError) as err:
            raise _http(err) from err
        except (ValueError, TypeError) as err:
            raise HTTPException(400, f"{type(err).__name__}: {err}") from err
        except Exception as err:
            log.exception("concept failed")
            raise HTTPException(500, f"computing the concept failed: {type(err).__name__}: {err}") from err

    @app.get("/api/concepts", response_model=list[ConceptOut], summary="Concepts stored in memory")
    async def concepts() -> list[ConceptOut]:
        return [c.describe() for c in srv.concepts.all()]

    @app.delete("/api/concepts/{concept_id}", status_code=204, responses=_ERRORS, summary="Forget a concept")
    async def delete_concept(concept_id: str) -> Response:
        if not srv.concepts.remove(concept_id):
            raise HTTPException(404, f"unknown concept id '{concept_id[:_MAX_TEXT]}'")
        return Response(status_code=204)

    return app
