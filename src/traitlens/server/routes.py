"""The HTTP routes: thin functions that read the form, call the `Server` of the app, and map refusals to statuses.

Every error is JSON `{"detail": message}`: `RequestError`/`UploadError` keep their status; a user error from the
work (`USER_ERRORS`: ValueError, TypeError, KeyError, NotImplementedError, an undecodable image) is a 400 or 422
with its reason on one line; anything else is a bug: it propagates to `middleware.InternalErrors`, which logs the
traceback and answers 500 `{"detail": "internal error", "request_id": ...}`.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile
from fastapi.responses import FileResponse, Response
from PIL import Image, UnidentifiedImageError

from traitlens import __version__
from traitlens.explain import MethodInfo, list_methods
from traitlens.server._images import FORMATS, UploadError
from traitlens.server._schemas import (
    ConceptOut,
    ErrorOut,
    ExampleOut,
    ExplainOut,
    HealthOut,
    InfoOut,
    InternalErrorOut,
    MethodOut,
)
from traitlens.server.service import MAX_TEXT, RequestError, Server

__all__ = ["ERRORS", "USER_ERRORS", "router", "static_dir"]

log = logging.getLogger(__name__)

_STATIC = "static"

#: The error statuses documented on the POST/DELETE routes of the OpenAPI schema.
ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorOut, "description": text}
    for code, text in {
        400: "bad request: unknown method or class, a method that does not run on this model, bad target",
        403: "a state-changing request sent by another web site (Origin / Sec-Fetch-Site)",
        404: "unknown model or concept id",
        413: "upload larger than the limit",
        415: "not a supported image type (judged by the file's content)",
        422: "corrupt or truncated image, or too many pixels (decompression-bomb guard)",
        501: "concept targets are not available in this traitlens version",
        503: "the server is busy; retry",
        504: "the request took longer than the server's time limit",
    }.items()
}
ERRORS[500] = {"model": InternalErrorOut, "description": "a bug: the traceback is in the server's log under "
                                                         "request_id"}

#: Exceptions from a job that are the request's fault (a 4xx with the reason), not the server's.
USER_ERRORS: tuple[type[Exception], ...] = (ValueError, TypeError, KeyError, NotImplementedError)
#: Of those and the image decoder's, the ones meaning "this file cannot be decoded" (422).
_IMAGE_ERRORS: tuple[type[Exception], ...] = (UnidentifiedImageError, Image.DecompressionBombError)
#: What the routes turn into a 4xx; anything else propagates (a bug: `InternalErrors` answers 500).
_REFUSALS: tuple[type[Exception], ...] = (RequestError, UploadError, *_IMAGE_ERRORS, *USER_ERRORS)
#: Longest error reason returned.
_MAX_REASON = 500

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


def one_line(err: BaseException) -> str:
    """The reason of `err` on one line: its message (a KeyError's key unquoted), whitespace folded, bounded."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    text = " ".join(text.split()) or type(err).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def _http_error(err: Exception, job: str) -> HTTPException:
    """The 4xx for a refusal or user error (`_REFUSALS`) of `job`."""
    if isinstance(err, (RequestError, UploadError)):
        return HTTPException(err.status, one_line(err))
    if isinstance(err, _IMAGE_ERRORS):
        log.info("%s refused the image: %s", job, err)
        return HTTPException(422, f"the image cannot be decoded: {one_line(err)}")
    log.info("%s refused: %s", job, err)  # a USER_ERRORS: e.g. the method refused this model or target
    return HTTPException(400, one_line(err))


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
    except _REFUSALS as err:
        raise _http_error(err, "explain") from err


@router.get("/api/results/{result_id}.npz", responses={404: ERRORS[404]},
            summary="A recent explanation as .npz (traitlens.explain.Explanation.load reads it)")
def result_npz(srv: ServerDep, result_id: str) -> Response:
    item = srv.results.get(result_id)
    if item is None:
        raise HTTPException(404, f"unknown or expired result '{result_id[:MAX_TEXT]}': the server keeps the last "
                                 f"{srv.limits.max_results} explanations; explain the image again")
    name = f"{item.meta.get('model', 'model')}_{item.explanation.method}.npz".replace("/", "_")
    return Response(item.npz_bytes(), media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/api/examples", response_model=list[ExampleOut], summary="Example images the page offers")
def examples(srv: ServerDep) -> list[ExampleOut]:
    return srv.examples_out()


@router.get("/api/examples/{example_id}", responses={404: ERRORS[404]}, summary="One example image's bytes")
def example_image(srv: ServerDep, example_id: str) -> Response:
    try:
        ex = srv.example(example_id)
    except RequestError as err:
        raise _http_error(err, "example") from err
    return Response(ex.data, media_type=ex.media_type, headers={"Cache-Control": "max-age=3600"})


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
    except _REFUSALS as err:
        raise _http_error(err, "concept") from err


@router.get("/api/concepts", response_model=list[ConceptOut], summary="Concepts stored in memory")
async def concepts(srv: ServerDep) -> list[ConceptOut]:
    return [c.describe() for c in srv.concepts.all()]


@router.delete("/api/concepts/{concept_id}", status_code=204, responses=ERRORS, summary="Forget a concept")
async def delete_concept(srv: ServerDep, concept_id: str) -> Response:
    if not srv.concepts.remove(concept_id):
        raise HTTPException(404, f"unknown concept id '{concept_id[:MAX_TEXT]}'")
    return Response(status_code=204)
