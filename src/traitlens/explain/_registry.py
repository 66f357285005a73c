"""One registry of explanation methods by name, read by the API, the CLI, the web page and the benchmarks."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from traitlens.explain._base import Explainer

__all__ = ["MethodInfo", "get_method", "list_methods", "register_method"]

_E = TypeVar("_E", bound="type[Explainer]")


@dataclass(frozen=True)
class MethodInfo:
    """What a method is and what it costs (posthoc.md §0 registry metadata).

    Attributes:
        name: registry name, e.g. "cdam".
        cls: the explainer class (`Explainer` subclass).
        signed: negative values are counter-evidence.
        class_specific: the map depends on the target class.
        needs_grad: the method backpropagates.
        default_upsample: "nearest" | "bilinear".
        default_norm: "none" | "minmax" | "maxabs".
        cost: forward/backward cost in words, e.g. "1 fwd (trunk no-grad) + 1 bwd, last block".
        summary: one line for listings.
        families: model families it runs on ("vit", "prompted_vit", "cnn", "logits", "native"; see
            `traitlens.explain.model_families`); a model that offers none of them is refused up front.
        concept: accepts a `Concept` target.
        batched_targets: with its default options, the K targets of an image share one forward of the network
            (the rows of every pass are images, never (image, target) pairs), so K targets cost about what one
            does; `evaluate` and the atlas pass all of an image's targets in one call either way.
        amp_tolerance: how far the maps under `explain(amp=True)` may be from the float32 maps, as a fraction of
            the float32 map's range (max − min), measured with bf16 autocast on a CPU (docs/performance.md);
            None: the method is amp-unsafe and `amp=True` is refused.
    """

    name: str
    cls: type[Explainer]
    signed: bool
    class_specific: bool
    needs_grad: bool
    default_upsample: str
    default_norm: str
    cost: str
    summary: str
    families: tuple[str, ...] = ("vit",)
    concept: bool = False
    batched_targets: bool = False
    amp_tolerance: float | None = None


_METHODS: dict[str, MethodInfo] = {}


def register_method(
    name: str,
    *,
    signed: bool,
    class_specific: bool,
    needs_grad: bool,
    default_upsample: str,
    default_norm: str,
    cost: str,
    summary: str,
    families: tuple[str, ...] = ("vit",),
    concept: bool = False,
    batched_targets: bool = False,
    amp_tolerance: float | None = None,
) -> Callable[[_E], _E]:
    """Class decorator adding an explainer to the registry under `name`."""

    if isinstance(families, str) or not families or not all(isinstance(f, str) for f in families):
        raise TypeError(f"families of method '{name}' must be a non-empty tuple of family names, got {families!r}")
    if amp_tolerance is not None and not 0 < amp_tolerance <= 1:
        raise ValueError(f"amp_tolerance of method '{name}' must be in (0, 1] or None, got {amp_tolerance!r}")

    def deco(cls: _E) -> _E:
        if name in _METHODS:
            raise ValueError(f"method '{name}' is already registered by {_METHODS[name].cls.__qualname__}")
        info = MethodInfo(name, cls, signed, class_specific, needs_grad, default_upsample, default_norm,
                          cost, summary, tuple(families), concept, batched_targets, amp_tolerance)
        cls.info = info
        _METHODS[name] = info
        return cls

    return deco


def list_methods(pattern: str = "*", family: str | None = None) -> list[MethodInfo]:
    """Registered methods whose name matches the glob `pattern` (and run on `family` if given), sorted."""
    return [
        info for name, info in sorted(_METHODS.items())
        if fnmatch.fnmatch(name, pattern) and (family is None or family in info.families)
    ]


def get_method(name: str) -> MethodInfo:
    """Look a method up by name; an unknown name raises a ValueError listing the known ones."""
    if name not in _METHODS:
        raise ValueError(f"unknown method '{name}'; available: {', '.join(sorted(_METHODS))}")
    return _METHODS[name]

