"""The model-kind registry: one decorator registers an interpretable model, its loader and its recipes.

`@register_model_kind("promptcam", recipes=..., quick_options=..., notes=...)` on the class is all a new kind
needs: `load_model(dir)` rebuilds saved models of that kind, `traitlens train KIND` builds and trains it, and
`recommended_fit_config(KIND, recipe)` / `recommended_model_options(KIND, recipe)` return its recipes (what each
reference did and what traitlens does: docs/recipes.md). `list_model_kinds()` is what the CLI, the web page and the
benchmarks list, like `list_methods()` and `list_metrics()` for the other two registries.
"""

from __future__ import annotations

import fnmatch
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import torch.nn as nn

from traitlens.backbones.loading import register_builder
from traitlens.models.base import InterpretableModel
from traitlens.train import FitConfig
from traitlens.train.recipes import CLASSIFIER_MODES, classifier_fit_config

__all__ = [
    "KINDS",
    "RECIPES",
    "ModelKind",
    "RecipeVariant",
    "build_interpretable",
    "get_model_kind",
    "list_model_kinds",
    "recommended_fit_config",
    "recommended_model_options",
    "register_model_kind",
]

#: Recipe names every kind provides: "quick" (tiny TraitShapes models on a CPU), "reference" (the paper's set-up).
RECIPES = ("quick", "reference")

M = TypeVar("M", bound=type[InterpretableModel])


@dataclass(frozen=True)
class RecipeVariant:
    """How a recipe changes for a family of backbones (e.g. Prompt-CAM's DINOv2 configs against its DINO ones).

    Attributes:
        backbones: glob patterns matched against the lower-cased backbone name (`"*dinov2*"`); any match applies.
        fit: `FitConfig` fields that replace the recipe's.
        options: constructor options that replace the recipe's (dict values such as `backbone_args` are merged).
        note: why, in a few words (docs/recipes.md gives the source).
    """

    backbones: tuple[str, ...]
    fit: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    note: str = ""

    def matches(self, backbone: str | None) -> bool:
        """Whether `backbone` (a name or path; None matches nothing) belongs to this family."""
        name = (backbone or "").lower()
        return bool(name) and any(fnmatch.fnmatch(name, pattern) for pattern in self.backbones)


@dataclass(frozen=True)
class ModelKind:
    """One registered interpretable model.

    Attributes:
        name: the kind (`traitlens train NAME`, `config.json["kind"]`).
        cls: the `InterpretableModel` subclass; built as `cls(backbone, num_classes, class_names=..., **options)`.
        recipes: `FitConfig` per recipe name ("quick", "reference").
        quick_options: constructor options of the small CPU variant the quickstart trains.
        notes: what the reference recipe does that traitlens does not (reported, not silently dropped).
        summary: one line for listings.
        reference_options: constructor options of the reference set-up (prompt dropout, drop-path, slots...).
        variants: per recipe name, the `RecipeVariant`s applied, in order, when the backbone matches.
    """

    name: str
    cls: type[InterpretableModel]
    recipes: Mapping[str, FitConfig]
    quick_options: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    summary: str = ""
    reference_options: Mapping[str, Any] = field(default_factory=dict)
    variants: Mapping[str, tuple[RecipeVariant, ...]] = field(default_factory=dict)

    def recipe_options(self, recipe: str) -> dict[str, Any]:
        """The constructor options of `recipe` before any backbone variant ("quick": `quick_options`)."""
        return dict(self.quick_options if recipe == "quick" else self.reference_options)


_KINDS: dict[str, ModelKind] = {}


def register_model_kind(
    name: str,
    *,
    recipes: Mapping[str, FitConfig],
    quick_options: Mapping[str, Any] | None = None,
    notes: Sequence[str] = (),
    summary: str = "",
    reference_options: Mapping[str, Any] | None = None,
    variants: Mapping[str, Sequence[RecipeVariant]] | None = None,
) -> Callable[[M], M]:
    """Class decorator: register an interpretable model kind, its `load_model` builder and its recipes.

    `recipes` holds a `FitConfig` per recipe name; `quick_options` / `reference_options` the constructor options
    of each; `variants` what changes per backbone family (see `RecipeVariant`).

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
        _KINDS[name] = ModelKind(name, cls, dict(recipes), dict(quick_options or {}), tuple(notes), summary,
                                 dict(reference_options or {}),
                                 {k: tuple(v) for k, v in (variants or {}).items()})

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


def _check_recipe(recipe: str) -> None:
    if recipe not in RECIPES:
        raise ValueError(f"unknown recipe '{recipe}'; choose 'quick' or 'reference'")


def _backbone_name(backbone: str | Path | None) -> str | None:
    """The name variants match: a timm/hub name as given; for a traitlens model folder, the timm architecture in
    its config.json (a fine-tuned `vit_base_patch16_224.dino` stays a DINO ViT)."""
    if backbone is None:
        return None
    config = Path(backbone) / "config.json"
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return str(backbone)
        if isinstance(data, dict) and isinstance(data.get("architecture"), str):
            return data["architecture"]
    return str(backbone)


def _variants(kind: ModelKind, recipe: str, backbone: str | Path | None) -> list[RecipeVariant]:
    name = _backbone_name(backbone)
    return [v for v in kind.variants.get(recipe, ()) if v.matches(name)]


def recommended_fit_config(kind: str, recipe: str = "quick", **overrides: Any) -> FitConfig:
    """The `FitConfig` for `kind` under `recipe` (docs/recipes.md lists every value and where it comes from).

    Called as `recommended_fit_config(kind, recipe, pretrained=None, backbone=None, **fields)`: `pretrained` and
    `backbone` are keywords (taken from `overrides`, so a `**dict` of `FitConfig` fields type-checks at call sites).

    Args:
        kind: a registered interpretable model ("promptcam", "intr", "scouter"), or "linear" / "finetune" for a
            timm classifier.
        recipe: "quick" (tiny models on a CPU) or "reference" (the paper's published set-up). For "linear" and
            "finetune" both names give the same recipe: `pretrained` decides.
        pretrained: "linear" / "finetune": True gives the pretrained-backbone recipes (`train.recipes`: DINO's
            linear evaluation, a low-lr fine-tune), False or None `FitConfig(mode=mode)` (the tiny from-scratch
            defaults). The interpretable models' recipes do not depend on it.
        backbone: the backbone name; a recipe's `RecipeVariant`s whose patterns match it apply (e.g. Prompt-CAM's
            DINOv2 learning rate).
        overrides: `FitConfig` fields that replace the result's (e.g. `epochs=20`).

    Raises:
        ValueError: unknown recipe or kind.

    Example:
        >>> recommended_fit_config("promptcam", "reference", backbone="vit_base_patch14_dinov2.lvd142m").lr
        0.001
    """
    _check_recipe(recipe)
    pretrained: bool | None = overrides.pop("pretrained", None)
    backbone: str | Path | None = overrides.pop("backbone", None)
    if kind in CLASSIFIER_MODES:
        return replace(classifier_fit_config(kind, bool(pretrained)), **overrides)
    entry = get_model_kind(kind)
    cfg = entry.recipes[recipe]
    for variant in _variants(entry, recipe, backbone):
        cfg = replace(cfg, **variant.fit)
    return replace(cfg, **overrides)


#: Backbones whose published weights expect another input size than the recipes use: DINOv2 is published at 518 px,
#: Prompt-CAM resamples its position embedding to 224 (so do the classifier recipes).
_CLASSIFIER_VARIANTS = (RecipeVariant(("*dinov2*",), options={"img_size": 224}, note="DINOv2 at 224 px, not 518"),)


def recommended_model_options(kind: str, recipe: str = "quick", *, backbone: str | Path | None = None,
                              pretrained: bool | None = None) -> dict[str, Any]:
    """Constructor options of `kind` under `recipe`: what `build_interpretable(kind, backbone, C, **options)` needs
    for the reference set-up (prompt dropout, drop-path, slots per class, input size...), after the variants that
    match `backbone`. For "linear" / "finetune": `load_model` keyword arguments (`img_size` for a DINOv2 backbone
    when `pretrained`). Options the user gives should replace these.

    Raises:
        ValueError: unknown recipe or kind.

    Example:
        >>> recommended_model_options("promptcam", "reference", backbone="vit_base_patch16_224.dino")["prompt_dropout"]
        0.1
    """
    _check_recipe(recipe)
    if kind in CLASSIFIER_MODES:
        found = [v for v in _CLASSIFIER_VARIANTS if pretrained and v.matches(_backbone_name(backbone))]
        return _merge({}, *(v.options for v in found))
    entry = get_model_kind(kind)
    return _merge(entry.recipe_options(recipe), *(v.options for v in _variants(entry, recipe, backbone)))


def _merge(base: Mapping[str, Any], *updates: Mapping[str, Any]) -> dict[str, Any]:
    """`base` updated by each of `updates` in turn; dict values (e.g. `backbone_args`) are merged one level deep."""
    out = {k: dict(v) if isinstance(v, Mapping) else v for k, v in base.items()}
    for update in updates:
        for key, value in update.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = {**out[key], **value}
            else:
                out[key] = dict(value) if isinstance(value, Mapping) else value
    return out
