"""The atlas view of `traitlens serve`: browse the classes of a trait atlas and open a "why A, not B" pair.

Atlases are folders written by `traitlens atlas` (their `atlas.json` and exemplar PNGs), given with
`traitlens serve --atlas DIR` or found next to a served model (`find_atlases`). They are read once at start-up;
requests name an atlas, a class index and a class pair, never a file. Routes: `/atlas` (the page),
`/api/atlases`, `/api/atlases/{name}`, `/api/atlases/{name}/classes/{index}` and
`/api/atlases/{name}/pairs/{a}/{b}`.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, cast

import torch.nn as nn
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import FileResponse

from traitlens.evaluation import Atlas, ClassAtlas, model_fingerprint

__all__ = ["atlas_router", "find_atlases", "load_atlases"]

log = logging.getLogger(__name__)

atlas_router = APIRouter()


def load_atlases(folders: Iterable[str | Path], taken: Iterable[str] = ()) -> dict[str, Atlas]:
    """Read each folder's atlas, keyed by a unique name (the folder's name, then `name-2`, ...).

    Raises:
        FileNotFoundError: a folder has no atlas.json. ValueError: a file is not an atlas.
    """
    out: dict[str, Atlas] = {}
    used = set(taken)
    seen: set[Path] = set()
    for folder in folders:
        path = Path(folder).expanduser().resolve()
        if path in seen:
            continue
        seen.add(path)
        at = Atlas.load(path)
        name, k = path.name or "atlas", 2
        while name in used:
            name, k = f"{path.name}-{k}", k + 1
        used.add(name)
        out[name] = at
    return out


def find_atlases(model_dir: str | Path, model: nn.Module) -> list[Path]:
    """Atlas folders of `model` near its folder: `atlas.json` in the folder, its parent or grandparent, or in a
    direct sub-folder of those, whose recorded weights fingerprint is the model's."""
    start = Path(model_dir).expanduser()
    if not start.is_dir():
        return []
    candidates = [c for level in [start, *list(start.resolve().parents)[:2]]
                  for c in [level / "atlas.json", *sorted(level.glob("*/atlas.json"))] if c.is_file()]
    fp = model_fingerprint(model) if candidates else ""  # hashing the weights only when there is something to match
    found: list[Path] = []
    for candidate in candidates:
        try:
            ok = json.loads(candidate.read_text(encoding="utf-8")).get("fingerprint") == fp
        except (OSError, ValueError, AttributeError):
            ok = False
        if ok and candidate.parent.resolve() not in found:
            found.append(candidate.parent.resolve())
    return found


def _atlases(request: Request) -> Mapping[str, Atlas]:
    return cast(Mapping[str, Atlas], getattr(request.app.state, "atlases", {}))


def _get(request: Request, name: str) -> Atlas:
    at = _atlases(request).get(name)
    if at is None:
        raise HTTPException(404, f"unknown atlas '{name[:200]}'; see /api/atlases")
    return at


def _num(v: float | None) -> float | None:
    return None if v is None or not math.isfinite(v) else round(float(v), 6)


def _nums(d: Mapping[str, float]) -> dict[str, float | None]:
    return {k: _num(v) for k, v in d.items()}


def _data_url(at: Atlas, rel: str) -> str:
    try:
        data = at.image(rel)
    except (KeyError, OSError) as err:  # a folder edited or emptied after start-up
        log.warning("atlas image %s: %s", rel, err)
        raise HTTPException(404, f"an image of this atlas is missing from its folder: {rel[:200]}") from err
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _summary(name: str, at: Atlas) -> dict[str, Any]:
    return {"name": name, "model": at.model, "method": at.method, "n_images": at.n_images,
            "n_classes": len(at.classes), "accuracy": _num(at.accuracy), "hit_fraction": _num(at.hit_fraction),
            "n_hit_classes": at.n_hit_classes, "parts": at.parts}


def _class_row(c: ClassAtlas) -> dict[str, Any]:
    return {"index": c.index, "name": c.name, "n": c.n, "n_correct": c.n_correct, "accuracy": _num(c.accuracy),
            "top_part": c.top_part, "expected": c.expected, "hit": c.hit, "lift": _nums(c.lift),
            "confused": [{"other": p.other, "name": p.other_name, "count": p.count} for p in c.confused]}


def _class(at: Atlas, index: int) -> ClassAtlas:
    try:
        return at.class_atlas(index)
    except KeyError as err:
        raise HTTPException(404, f"class {index} is not in this atlas") from err


@atlas_router.get("/atlas", include_in_schema=False)
async def atlas_page() -> FileResponse:
    from traitlens.server.routes import static_dir

    return FileResponse(static_dir() / "atlas.html", media_type="text/html")


@atlas_router.get("/api/atlases", summary="The atlases this server shows")
async def list_atlases(request: Request) -> list[dict[str, Any]]:
    return [_summary(name, at) for name, at in _atlases(request).items()]


@atlas_router.get("/api/atlases/{name}", summary="One atlas: its classes (lift per part), heads, summary")
async def get_atlas(request: Request, name: str) -> dict[str, Any]:
    at = _get(request, name)
    heads = [{"head": h["head"], "lift": _nums(h["lift"]), "top_part": h["top_part"]} for h in at.heads]
    return {**_summary(name, at), "signed": at.signed, "contrast": at.contrast, "head_ranking": at.head_ranking,
            "classes": [_class_row(c) for c in at.classes], "heads": heads}


@atlas_router.get("/api/atlases/{name}/classes/{index}", summary="One class: part shares, exemplars, pairs")
def get_class(request: Request, name: str, index: int) -> dict[str, Any]:
    at = _get(request, name)
    c = _class(at, index)
    exemplars = [{"index": e.index, "name": e.name, "prob": _num(e.prob), "image": _data_url(at, e.files["image"]),
                  "map": _data_url(at, e.files["map"]),
                  "heads": [{"head": h, "image": _data_url(at, f)} for h, f in e.heads]} for e in c.exemplars]
    pairs = [{"other": p.other, "name": p.other_name, "count": p.count, "rate": _num(p.rate),
              "mean_prob": _num(p.mean_prob), "top_part": p.top_part} for p in c.confused]
    return {**_class_row(c), "shares": _nums(c.shares), "area": _nums(c.area), "exemplars": exemplars,
            "pairs": pairs, "parts": at.parts, "method": at.method, "head_ranking": at.head_ranking}


@atlas_router.get("/api/atlases/{name}/pairs/{a}/{b}", summary='"Why A, not B": contrast shares and maps')
def get_pair(request: Request, name: str, a: int, b: int) -> dict[str, Any]:
    at = _get(request, name)
    c = _class(at, a)
    pair = next((p for p in c.confused if p.other == b), None)
    if pair is None:
        raise HTTPException(404, f"class {b} is not among the confused classes of class {a}")
    key = f"contrast-{b}"
    maps = [{"index": e.index, "name": e.name, "image": _data_url(at, e.files[key])}
            for e in c.exemplars if key in e.files]
    return {"a": a, "a_name": c.name, "b": b, "b_name": pair.other_name, "count": pair.count, "n": c.n,
            "rate": _num(pair.rate), "mean_prob": _num(pair.mean_prob), "n_contrast": pair.n_contrast,
            "shares": _nums(pair.shares), "lift": _nums(pair.lift), "top_part": pair.top_part,
            "expected": pair.expected, "hit": pair.hit, "parts": at.parts, "contrast": at.contrast, "maps": maps}
