"""The builder registry: how to rebuild a saved model of each `config.json` kind.

`load_model(dir)` reads `config["kind"]` and calls the builder registered for it. Backbones register "timm" and
"hf-vit"; `traitlens.models` registers its interpretable kinds through `register_model_kind`. This module imports
nothing else from traitlens, so every loader can register here without import cycles.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn

__all__ = ["Builder", "ModelLoadError", "attach_config", "get_builder", "register_builder", "registered_kinds"]


class ModelLoadError(RuntimeError):
    """A model could not be built or its weights could not be loaded; the message names the cause."""


Builder = Callable[[dict[str, Any]], nn.Module]
_BUILDERS: dict[str, Builder] = {}


def register_builder(kind: str) -> Callable[[Builder], Builder]:
    """Register how to rebuild a saved model of `kind` from its `config.json`."""

    def deco(fn: Builder) -> Builder:
        _BUILDERS[kind] = fn
        return fn

    return deco


def registered_kinds() -> list[str]:
    """The `config.json` kinds `load_model` can rebuild."""
    return list(_BUILDERS)


def get_builder(kind: str, source: str = "config.json") -> Builder:
    """The builder of `kind`.

    Raises:
        ModelLoadError: no builder is registered for `kind` (the message names `source` and the known kinds).
    """
    if kind not in _BUILDERS:
        raise ModelLoadError(f"{source}: unknown model kind '{kind}'; known kinds: {', '.join(_BUILDERS)}")
    return _BUILDERS[kind]


def attach_config(model: nn.Module, config: dict[str, Any]) -> nn.Module:
    """Record the rebuild config, class names and mean/std on the model so saving and preprocessing work."""
    tagged: Any = model  # plain attributes beside the module's parameters
    tagged.traitlens_config = {k: v for k, v in config.items() if k != "class_names"}
    if config.get("class_names"):
        tagged.class_names = list(config["class_names"])
    cfg = dict(getattr(model, "pretrained_cfg", {}) or {})
    if config.get("mean") is not None:
        cfg["mean"] = tuple(config["mean"])
        cfg["std"] = tuple(config["std"])
    tagged.pretrained_cfg = cfg
    return model
