"""The model-kind registry: one decorator registers an interpretable model, its loader and its recipes.

`@register_model_kind("promptcam", recipes=..., quick_options=..., notes=...)` on the class is all a new kind
needs: `load_model(dir)` rebuilds saved models of that kind, `traitlens train KIND` builds and trains it, and
`recommended_fit_config(KIND, recipe)` returns its recipes. `list_model_kinds()` is what the CLI, the web page
and the benchmarks list, like `list_methods()` and `list_metrics()` for the other two registries.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch.nn as nn

from traitlens.backbones.loading import register_builder
from traitlens.models.base import InterpretableModel
from traitlens.train import FitConfig

__all__ = [
    "KINDS",
    "RECIPES",
    "ModelKind",
    "build_interpretable",
    "get_model_kind",
    "list_model_kinds",
    "recommended_fit_config",
    "register_model_kind",
]

#: Recipe names every kind provides: "quick" (tiny TraitShapes models on a CPU), "reference" (the paper's set-up).
RECIPES = ("quick", "reference")

M = TypeVar("M", bound=type[InterpretableModel])


@dataclass(frozen=True)
class ModelKind:
    """One registered interpretable model.

    Attributes:
        name: the kind (`traitlens train NAME`, `config.json["kind"]`).
        cls: the `InterpretableModel` subclass; built as `cls(backbone, num_classes, class_names=..., **options)`.
        recipes: `FitConfig` per recipe name ("quick", "reference").
        quick_options: constructor options of the small CPU variant the quickstart trains.
        notes: what the reference recipe needs beyond `FitConfig` (reported, not silently dropped).
        summary: one line for listings.
    """

    name: str
    cls: type[InterpretableModel]
    recipes: Mapping[str, FitConfig]
    quick_options: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    summary: str = ""


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(
    name: str,
    *,
    recipes: Mapping[str, FitConfig],
    quick_options: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    summary: str = "",
) -> Callable[[M], M]:
    """Class decorator: register an interpretable model kind, its `load_model` builder and its recipes.

    Raises:
        ValueError: the name is taken, or a recipe of `RECIPES` is missing.
    """
    missing = [r for r in RECIPES if r not in recipes]
    if missing:
        raise ValueError(f"model kind '{name}' lacks the recipes {missing}")

    def deco(cls: M) -> M:
        if name in _KINDS:
            raise ValueError(f"model kind '{name}' is already registered")
        cls.kind = name
        _KINDS[name] = ModelKind(name, cls, dict(recipes), dict(quick_options or {}), tuple(notes), summary)

        def build(config: dict[str, Any]) -> nn.Module:
            return cls(config["backbone"], config["num_classes"], **config.get("options", {}),
                       class_names=config.get("class_names"))

        register_builder(name)(build)
        return cls

    return deco


def list_model_kinds(pattern: str = "*") -> list[ModelKind]:
    """Registered interpretable models whose name matches the glob `pattern`, sorted by name."""
    return [kind for name, kind in sorted(_KINDS.items()) if fnmatch.fnmatch(name, pattern)]


def get_model_kind(name: str) -> ModelKind:
    """The registered kind `name`.

    Raises:
        ValueError: unknown kind (the message lists the known ones).
    """
    if name not in _KINDS:
        raise ValueError(f"unknown interpretable model '{name}'; choose from {', '.join(_KINDS)}")
    return _KINDS[name]


class _KindClasses(Mapping[str, type[InterpretableModel]]):
    """Read-only live view `{kind: class}` of the registry (the older `KINDS` dict)."""

    def __getitem__(self, name: str) -> type[InterpretableModel]:
        return _KINDS[name].cls

    def __iter__(self) -> Iterator[str]:
        return iter(_KINDS)

    def __len__(self) -> int:
        return len(_KINDS)


KINDS: Mapping[str, type[InterpretableModel]] = _KindClasses()


def build_interpretable(
    kind: str,
    backbone: str | Path | nn.Module,
    num_classes: int,
    class_names: Sequence[str] | None = None,
    **options: Any,
) -> InterpretableModel:
    """Build a registered interpretable model (what `traitlens train KIND --backbone B` does).

    Args:
        kind: a registered kind ("promptcam", "intr", "scouter", ...).
        backbone: timm name, preset, traitlens model directory (e.g. a trained ViT) or module.
        num_classes: C, read from the dataset.
        class_names: the dataset's class names.
        **options: the model's constructor options (e.g. `variant="shallow"`, `e=-1`, `pretrained=False`).

    Raises:
        ValueError: unknown kind.

    Example:
        >>> net = build_interpretable("scouter", "resnet18", 10, pretrained=False, e=-1)  # doctest: +SKIP
    """
    return get_model_kind(kind).cls(backbone, num_classes, class_names=class_names, **options)


def recommended_fit_config(kind: str, recipe: str = "quick", **overrides: Any) -> FitConfig:
    """The `FitConfig` for `kind` under `recipe` ("quick" for tiny CPU runs, "reference" for parity).

    `overrides` replace fields (e.g. `epochs=20`). `get_model_kind(kind).notes` lists what the reference recipe
    needs beyond `FitConfig`.

    Raises:
        ValueError: unknown recipe or kind.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe '{recipe}'; choose 'quick' or 'reference'")
    return replace(get_model_kind(kind).recipes[recipe], **overrides)
