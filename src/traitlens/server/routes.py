"""The HTTP routes: thin functions that read the form, call the `Server` of the app, and map refusals to statuses.

Every error is JSON `{"detail": message}`: `RequestError`/`UploadError` keep their status, a `ValueError` or
`TypeError` from a method that refuses the model or target is a 400, anything else a 500 with the reason.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response

from traitlens import __version__
from traitlens.explain import MethodInfo, list_methods
from traitlens.server._images import FORMATS, UploadError
from traitlens.server._schemas import ConceptOut, ErrorOut, ExplainOut, HealthOut, InfoOut, MethodOut
from traitlens.server.service import MAX_TEXT, RequestError, Server

__all__ = ["ERRORS", "router", "static_dir"]

log = logging.getLogger(__name__)

_STATIC = "static"

#: The error statuses documented on the POST/DELETE routes of the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
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

router = APIRouter()


def static_dir() -> Path:
    """The folder of the page's static files (inside the installed package)."""
    return Path(str(resources.files("traitlens.server") / _STATIC))


def _server(request: Request) -> Server:
    return cast(Server, request.app.state.server)


ServerDep = Annotated[Server, Depends(_server)]


def _method_out(info: MethodInfo) -> MethodOut:
    return MethodOut(name=info.name, signed=info.signed, class_specific=info.class_specific,
                     needs_grad=info.needs_grad, families=list(info.families), concept=info.concept,
                     summary=info.summary, cost=info.cost, default_upsample=info.default_upsample,
                     default_norm=info.default_norm)


def _http_error(err: Exception, job: str, failed: str) -> HTTPException:
    """The HTTP error for a failure of `job` that is not one already."""
    if isinstance(err, (RequestError, UploadError)):
        return HTTPException(err.status, str(err))
    if isinstance(err, (ValueError, TypeError)):  # the method refused this model/target: a client error
        log.info("%s refused: %s", job, err)
        return HTTPException(400, f"{type(err).__name__}: {err}")
    log.error("%s failed", job, exc_info=err)
    return HTTPException(500, f"{failed}: {type(err).__name__}: {err}")


async def _read_upload(srv: Server, file: UploadFile, label: str) -> bytes:
    """The upload's bytes (at most one more than the limit, to tell 'too large'), checked before the pool."""
    data = await file.read(srv.limits.max_upload_bytes + 1)
    srv.check_upload(data, label)
    return data


@router.get("/", include_in_schema=False)
async def index() -> FileResponse:
    return FileResponse(static_dir() / "index.html", media_type="text/html")


@router.get("/api/health", response_model=HealthOut, summary="Liveness and load")
async def health(srv: ServerDep) -> HealthOut:
    return HealthOut(status="ok", in_flight=srv.pool.in_flight, capacity=srv.pool.capacity)


@router.get("/api/info", response_model=InfoOut, summary="Models, methods (from the registry), concepts, limits")
async def info(srv: ServerDep) -> InfoOut:
    return InfoOut(version=__version__, default_model=srv.default_model,
                   models=[s.describe() for s in srv.models.values()],
                   methods=[_method_out(m) for m in list_methods()],
                   concepts_available=srv.concepts_available(),
                   concepts=[c.describe() for c in srv.concepts.all()],
                   limits=srv.limits.as_dict(), image_formats=list(FORMATS.values()))


@router.post("/api/explain", response_model=ExplainOut, responses=ERRORS, summary="Explain one uploaded image")
async def explain_image(
    srv: ServerDep,
    image: Annotated[UploadFile, File(description="PNG, JPEG, WebP, GIF or BMP (type read from the content)")],
    model: Annotated[str | None, Form(description="a served model's name; default: the first")] = None,
    method: Annotated[str, Form(description="a registered method, see /api/info")] = "cdam",
    target: Annotated[str, Form(description="top1 | topk:K | class index | class name | concept:<id>")] = "top1",
    contrast: Annotated[str | None, Form(description="'why A, not B': class index, name or concept:<id>; "
                                                     "A is the (first) target")] = None,
    include_raw: Annotated[bool, Form(description="also return the raw token-grid maps")] = False,
) -> ExplainOut:
    try:
        req = srv.explain_request(model, method, target, contrast)
        data = await _read_upload(srv, image, "image")
        return cast(ExplainOut, await srv.run(srv.explain_job, req, data, include_raw))
    except HTTPException:
        raise
    except Exception as err:
        raise _http_error(err, "explain", "the explanation failed") from err


@router.post("/api/concept", response_model=ConceptOut, responses=ERRORS,
             summary="Make a concept from a few sample images; explain it with target=concept:<id>")
async def create_concept(
    srv: ServerDep,
    images: Annotated[list[UploadFile], File(description="1 to max_concept_images sample images")],
    name: Annotated[str, Form(description="the concept's name, shown as the target name")],
    model: Annotated[str | None, Form(description="a served model's name; default: the first")] = None,
) -> ConceptOut:
    try:
        served, label = srv.concept_request(model, name, len(images))
        datas = [await _read_upload(srv, f, f"image {i + 1}") for i, f in enumerate(images)]
        item = await srv.run(srv.concept_job, served, datas, label)
        return cast(ConceptOut, item.describe())
    except HTTPException:
        raise
    except Exception as err:
        raise _http_error(err, "concept", "computing the concept failed") from err


@router.get("/api/concepts", response_model=list[ConceptOut], summary="Concepts stored in memory")
async def concepts(srv: ServerDep) -> list[ConceptOut]:
    return [c.describe() for c in srv.concepts.all()]


@router.delete("/api/concepts/{concept_id}", status_code=204, responses=ERRORS, summary="Forget a concept")
async def delete_concept(srv: ServerDep, concept_id: str) -> Response:
    if not srv.concepts.remove(concept_id):
        raise HTTPException(404, f"unknown concept id '{concept_id[:MAX_TEXT]}'")
    return Response(status_code=204)
