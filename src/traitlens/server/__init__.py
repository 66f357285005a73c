"""`traitlens serve`: a local web page and JSON API to explain images with a loaded model (extra `web`).

Example:
    >>> from traitlens.server import serve
    >>> serve("traitlens-quickstart/run/best", port=8000)  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import ipaddress
import logging
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from traitlens.server._limits import ServerLimits

if TYPE_CHECKING:
    import torch.nn as nn
    from fastapi import FastAPI

    from traitlens.evaluation import Atlas

__all__ = ["DEFAULT_MODEL", "ServerLimits", "create_app", "load_served_models", "serve", "served_name"]

log = logging.getLogger(__name__)

#: Where `traitlens quickstart` writes its model; served when no model is given.
DEFAULT_MODEL = Path("traitlens-quickstart") / "run" / "best"

#: Import names (any of, `|`-separated) → the package providing them (python-multipart renamed its module).
_WEB_MODULES = {"fastapi": "fastapi", "uvicorn": "uvicorn", "python_multipart|multipart": "python-multipart"}


def _require_web() -> None:
    missing = [pkg for mods, pkg in _WEB_MODULES.items()
               if all(importlib.util.find_spec(m) is None for m in mods.split("|"))]
    if missing:
        raise RuntimeError(f"traitlens serve needs the 'web' extra (missing: {', '.join(missing)}); "
                           "install it with: pip install 'traitlens[web]'")


def create_app(models: dict[str, nn.Module], limits: ServerLimits | None = None,
               allowed_hosts: list[str] | None = None, docs: bool = False,
               atlases: dict[str, Atlas] | None = None, examples: Sequence[str | Path] = (),
               amp: bool = False) -> FastAPI:
    """Build the FastAPI app (see `traitlens.server.app.create_app`); needs the 'web' extra."""
    _require_web()
    from traitlens.server.app import create_app as _create

    return _create(models, limits, allowed_hosts, docs=docs, atlases=atlases, examples=examples, amp=amp)


def _model_specs(model: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    """The models to load; the quickstart model when none is given (a clear error when it does not exist)."""
    if model is None:
        if not (DEFAULT_MODEL / "config.json").is_file():
            raise FileNotFoundError(
                f"no --model given and the quickstart model {DEFAULT_MODEL} does not exist here "
                f"({Path.cwd()}); run `traitlens quickstart` first, or pass --model PATH_OR_NAME"
            )
        return [DEFAULT_MODEL]
    if isinstance(model, (str, Path)):
        return [model]
    return list(model)


def served_name(spec: str | Path, taken: Collection[str] = ()) -> str:
    """The name a model is served (and shown) under: a folder's or file's own name, or the timm/preset name.

    Never a path: `/home/me/runs/ts/best` is served as `best`; when that name is taken, parent folders are put
    in front (`ts/best`), and a number after it when the path runs out (`best-2`).
    """
    text = str(spec)
    path = Path(text).expanduser()
    # A timm name, hf-hub id or preset is shown as given (load_model refuses a missing path).
    parts = (path.resolve().parts[1:] or ("model",)) if path.exists() else (text,)
    for n in range(1, len(parts) + 1):
        name = "/".join(parts[-n:])
        if name not in taken:
            return name
    k = 2
    while f"{parts[-1]}-{k}" in taken:
        k += 1
    return f"{parts[-1]}-{k}"


def load_served_models(model: str | Path | Sequence[str | Path] | None) -> dict[str, nn.Module]:
    """Load the models to serve, keyed by the name requests use (`served_name`: no path is ever shown).

    Args:
        model: a model folder, timm name or preset (see `load_model`), several of them, or None for the
            quickstart model at `DEFAULT_MODEL`.

    Raises:
        FileNotFoundError: no model given and the quickstart model does not exist.
        ModelLoadError: a model cannot be loaded.
    """
    from traitlens.backbones import load_model

    models: dict[str, nn.Module] = {}
    seen: set[str] = set()
    for spec in _model_specs(model):
        key = str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else str(spec)
        if key in seen:
            continue
        seen.add(key)
        name = served_name(spec, models)
        log.info("loading model %s as '%s'", spec, name)
        models[name] = load_model(spec).eval()
    if not models:
        raise ValueError("no model to serve")
    return models


def _served_atlases(folders: Sequence[str | Path] | None, model: str | Path | Sequence[str | Path] | None,
                    models: dict[str, nn.Module]) -> dict[str, Atlas]:
    """The atlases given with --atlas, then those found next to the served model folders."""
    from traitlens.server.atlas_view import find_atlases, load_atlases

    specs: dict[str, str | Path] = {}  # the specs `load_served_models` loaded, in its order (duplicates dropped)
    for spec in _model_specs(model):
        specs.setdefault(str(Path(spec).expanduser().resolve()) if Path(spec).expanduser().exists() else str(spec),
                         spec)
    found = [p for spec, net in zip(specs.values(), models.values(), strict=True) for p in find_atlases(spec, net)]
    atlases = load_atlases([*(folders or []), *found])
    if atlases:
        log.info("atlases: %s (at /atlas)", ", ".join(atlases))
    return atlases


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and 'localhost'."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(model: str | Path | Sequence[str | Path] | None = None, host: str = "127.0.0.1", port: int = 8000,
          docs: bool = False, atlas: Sequence[str | Path] | None = None,
          examples: Sequence[str | Path] | None = None, device: str = "cpu", amp: bool = False,
          **limits: Any) -> None:
    """Serve the explanation page and JSON API until interrupted.

    Args:
        model: model folder, timm name or preset (or several); None serves the quickstart model
            (`traitlens-quickstart/run/best`).
        host: address to bind; 127.0.0.1 by default. Anything else exposes the server (no authentication).
        port: TCP port.
        docs: also serve FastAPI's interactive `/docs` page (it loads Swagger UI from a CDN); off by default.
        atlas: `traitlens atlas` folders to show at `/atlas`; atlases next to a served model folder are found too.
        examples: folders of sample images the page offers to click; None: the `samples/` folders found next to
            the models (the quickstart's `traitlens-quickstart/samples/`). TraitShapes renders (and
            scikit-image's photos, when installed) follow them (`traitlens.server.examples`).
        device: where the models run ("cpu", "cuda", "cuda:1", ...).
        amp: mixed precision (`explain(..., amp=True)`) for the amp-safe methods; the others run in float32, and
            every response's `amp` field says which dtype its maps were computed in.
        **limits: fields of `ServerLimits` (e.g. `workers=2, queue_size=8, timeout_s=120,
            max_upload_bytes=8 << 20, header_timeout_s=10`); None values keep the defaults.

    Raises:
        RuntimeError: the 'web' extra is not installed.
        FileNotFoundError: no model given and no quickstart model.
        TypeError: an unknown limit name.

    Example:
        >>> serve("traitlens-quickstart/run/best", port=8000, workers=2)  # doctest: +SKIP
    """
    lim = ServerLimits.from_kwargs(**limits)
    _model_specs(model)  # fail fast, before the imports, when there is no model
    _require_web()
    import uvicorn

    from traitlens.server._protocol import uvicorn_config

    models = {name: net.to(device) for name, net in load_served_models(model).items()}
    if examples is None:
        from traitlens.server.examples import sample_folders

        examples = sample_folders(_model_specs(model))
    if is_loopback(host):
        from traitlens.server.middleware import LOOPBACK_HOSTS

        allowed = [*LOOPBACK_HOSTS, host, f"[{host.strip('[]')}]"]
    else:
        log.warning("serving on %s: anyone who can reach this address can use the server (there is no "
                    "authentication); bind 127.0.0.1 unless you mean it", host)
        allowed = ["*"]
    app = create_app(models, lim, allowed_hosts=allowed, docs=docs, atlases=_served_atlases(atlas, model, models),
                     examples=examples, amp=amp)
    shown = f"[{host}]" if ":" in host else host
    log.info("traitlens serve: http://%s:%d/  (API schema: /openapi.json%s; models: %s)", shown, port,
             ", /docs" if docs else "", ", ".join(models))
    uvicorn.Server(uvicorn_config(app, host, port, lim)).run()
