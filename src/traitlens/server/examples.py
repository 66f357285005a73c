"""Example images the page offers to click, from three sources, in this order:

1. **Sample folders**: images in folders given to `serve(examples=...)` / `traitlens serve --examples DIR`, or
   found next to a served model (`traitlens-quickstart/samples/` beside `traitlens-quickstart/run/best`). A JSON
   file in the folder may name each image's class (`{"square_0.png": "square"}` or a list of
   `{"file": ..., "label": ...}`).
2. **TraitShapes renders**: a few images of the synthetic set the quickstart trains on, drawn here in memory
   (always available: no file, no extra package). Their labels are the quickstart's class names.
3. **scikit-image's photos** (a cat, a coffee cup, a rocket), read from the files the `scikit-image` package ships,
   when it is installed (it is not imported).

Every image is checked like an upload (size cap, magic bytes) before it is offered; a file that fails is skipped
with a log line.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from traitlens.server._images import sniff_format

__all__ = ["MAX_EXAMPLES", "ExampleImage", "builtin_examples", "folder_examples", "load_examples",
           "sample_folders"]

log = logging.getLogger(__name__)

#: At most this many example images are offered (folder images first).
MAX_EXAMPLES = 12
#: Images read from one sample folder at most.
_PER_FOLDER = 8
#: The photos read from scikit-image's data folder when it is installed: file → shown name.
_SKIMAGE_PHOTOS = {"chelsea.png": "cat (Chelsea)", "coffee.png": "coffee cup", "rocket.jpg": "rocket"}
_MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "GIF": "image/gif", "WEBP": "image/webp", "BMP": "image/bmp"}
_LABEL_KEYS = ("label", "class", "class_name", "name")
_FILE_KEYS = ("file", "path", "image", "filename")


@dataclass(frozen=True)
class ExampleImage:
    """One example: its bytes (an accepted image format) and what the page shows about it."""

    id: str
    name: str
    source: str
    label: str | None
    data: bytes
    media_type: str
    width: int
    height: int


def _checked(ex_id: str, name: str, source: str, label: str | None, data: bytes, max_bytes: int,
             where: str) -> ExampleImage | None:
    """The example, or None (logged) when its bytes are no image the server would accept."""
    fmt = sniff_format(data)
    if fmt is None or len(data) > max_bytes:
        log.warning("example %s skipped: %s", where, "larger than the upload limit" if fmt else "not an image")
        return None
    try:
        with Image.open(io.BytesIO(data), formats=[fmt]) as img:
            width, height = img.size
    except (OSError, SyntaxError, ValueError) as err:
        log.warning("example %s skipped: %s", where, err)
        return None
    return ExampleImage(ex_id, name, source, label, data, _MEDIA[fmt], int(width), int(height))


def _labels(folder: Path) -> dict[str, str]:
    """File name → class from the JSON files of `folder` (any of the layouts in the module doc); {} when none."""
    out: dict[str, str] = {}
    for path in sorted(folder.glob("*.json")):
        try:
            doc: Any = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("example labels %s not read: %s", path.name, err)
            continue
        items: Iterable[tuple[Any, Any]]
        if isinstance(doc, dict):
            inner = doc.get("images", doc.get("samples"))
            items = doc.items() if inner is None else ((None, v) for v in inner)
        elif isinstance(doc, list):
            items = ((None, v) for v in doc)
        else:
            continue
        for key, value in items:
            file = key
            label = value
            if isinstance(value, dict):
                file = next((value[k] for k in _FILE_KEYS if k in value), key)
                label = next((value[k] for k in _LABEL_KEYS if k in value), None)
            if isinstance(file, str) and isinstance(label, (str, int)):
                out[Path(file).name] = str(label)
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")[:40] or "image"


def folder_examples(folder: str | Path, max_bytes: int, prefix: str = "f0") -> list[ExampleImage]:
    """The images of `folder` (sorted by name, at most `_PER_FOLDER`), labelled from its JSON file if any."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        log.warning("examples folder %s does not exist; skipped", root)
        return []
    labels = _labels(root)
    out: list[ExampleImage] = []
    for path in sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() != ".json"):
        if len(out) >= _PER_FOLDER:
            break
        if path.stat().st_size > max_bytes:
            log.warning("example %s skipped: larger than the upload limit", path.name)
            continue
        ex = _checked(f"{prefix}-{_slug(path.stem)}", path.stem, f"samples folder '{root.name}'",
                      labels.get(path.name), path.read_bytes(), max_bytes, path.name)
        if ex is not None:
            out.append(ex)
    return out


@functools.lru_cache(maxsize=1)
def _traitshapes_pngs() -> tuple[tuple[str, bytes], ...]:
    """Three TraitShapes test images at 128 px as (class name, PNG bytes); rendered once (deterministic).

    Three classes of the quickstart's eight (its seed, its class names), so they carry its labels.
    """
    from traitlens.data.traitshapes import TraitShapesConfig, class_names, render

    cfg = TraitShapesConfig(size=128, num_classes=8, seed=0, oversample=2)
    names = class_names(cfg)
    out = []
    for index, label in enumerate((0, 3, 6)):
        sample = render(cfg, index, split="test", label=label)
        buf = io.BytesIO()
        Image.fromarray(sample.image).save(buf, format="PNG")
        out.append((names[sample.label], buf.getvalue()))
    return tuple(out)


def _skimage_folder() -> Path | None:
    """scikit-image's bundled data folder, found without importing the package; None when not installed."""
    try:
        spec = importlib.util.find_spec("skimage")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    return folder if folder.is_dir() else None


def builtin_examples(max_bytes: int) -> list[ExampleImage]:
    """TraitShapes renders, then scikit-image's photos when the package is installed."""
    out = []
    for i, (label, data) in enumerate(_traitshapes_pngs()):
        ex = _checked(f"traitshapes-{i}", f"TraitShapes {i}", "TraitShapes (synthetic)", label, data, max_bytes,
                      f"TraitShapes {i}")
        if ex is not None:
            out.append(ex)
    folder = _skimage_folder()
    if folder is None:
        return out
    for file, name in _SKIMAGE_PHOTOS.items():
        path = folder / file
        if path.is_file():
            ex = _checked(f"skimage-{_slug(path.stem)}", name, "scikit-image", None, path.read_bytes(), max_bytes,
                          file)
            if ex is not None:
                out.append(ex)
    return out


def load_examples(folders: Sequence[str | Path], max_bytes: int) -> list[ExampleImage]:
    """Every source in order (folders, TraitShapes, scikit-image), at most `MAX_EXAMPLES` images, unique ids."""
    out: list[ExampleImage] = []
    for i, folder in enumerate(folders):
        out.extend(folder_examples(folder, max_bytes, prefix=f"f{i}"))
    out.extend(builtin_examples(max_bytes))
    seen: set[str] = set()
    unique = []
    for ex in out:
        if ex.id not in seen:
            seen.add(ex.id)
            unique.append(ex)
    return unique[:MAX_EXAMPLES]


def sample_folders(model_specs: Sequence[str | Path]) -> list[Path]:
    """`samples/` folders next to the served model folders (the model's folder, its parent or grandparent).

    The quickstart saves its model to `traitlens-quickstart/run/best` and sample images to
    `traitlens-quickstart/samples/`: serving the model finds them.
    """
    found: list[Path] = []
    for spec in model_specs:
        path = Path(spec).expanduser()
        if not path.exists():
            continue  # a timm name or preset
        path = path.resolve()
        for base in (path, *list(path.parents)[:2]):
            candidate = base / "samples"
            if candidate.is_dir() and candidate not in found:
                found.append(candidate)
                break
    return found
