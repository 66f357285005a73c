"""Build the classifier a training run starts from, by mode: what `traitlens train MODE` builds.

`linear` / `finetune` load a timm classifier (`load_model`); every registered kind is a mode too. Options go to the
model's constructor and are checked against it, so a typo is a one-line error listing the valid names. They replace
the recipe's options (`recommended_model_options`): under "quick" a kind's `quick_options` (the small CPU variant the
quickstart trains), under "reference" the paper's set-up for that backbone (docs/recipes.md).

A frozen backbone without trained weights (a linear probe or Prompt-CAM on a preset name or a `--no-pretrained` timm
name) is refused unless asked for: its features are random, and so would be every explanation of the model trained
on them.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn

from traitlens.backbones.loading import is_random_init, load_model
from traitlens.models.registry import build_interpretable, get_model_kind, list_model_kinds, recommended_model_options

__all__ = ["TIMM_MODES", "RandomBackboneError", "build_classifier", "kind_option_names", "parse_model_options",
           "published_weights", "train_modes"]

log = logging.getLogger(__name__)

#: Modes that train a timm classifier rather than a registered interpretable kind.
TIMM_MODES = ("linear", "finetune")

#: Constructor arguments a mode sets itself (from the data set and the command line), never through options.
_RESERVED = frozenset({"self", "backbone", "num_classes", "class_names", "pretrained"})


class RandomBackboneError(ValueError):
    """A frozen backbone would keep its random initial weights."""


def train_modes() -> tuple[str, ...]:
    """`linear`, `finetune` and every registered interpretable kind."""
    return (*TIMM_MODES, *(kind.name for kind in list_model_kinds()))


def published_weights(model: str, pretrained: bool = True) -> bool:
    """Whether `model` starts from published weights: a timm / `hf-hub:` name with `pretrained`, or an `hf:` model;
    not a model folder or file, nor a preset. This picks the pretrained-backbone recipes of `linear` / `finetune`
    (`recommended_fit_config(mode, recipe, pretrained=...)`)."""
    return not Path(model).exists() and not is_random_init(model, pretrained)


def kind_option_names(kind: str) -> list[str]:
    """The constructor options of a registered kind (what `--model-arg` may set), in signature order."""
    params = inspect.signature(get_model_kind(kind).cls.__init__).parameters
    return [name for name in params if name not in _RESERVED]


def _value(text: str) -> Any:
    """A JSON value when the text is one (`64`, `0.1`, `true`, `null`, `[1, 2]`, `{"img_size": 64}`), else the
    text itself (`shallow`)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_model_options(pairs: Sequence[str] = (), config_file: str | Path | None = None) -> dict[str, Any]:
    """Model options from a JSON object file and `key=value` pairs (the pairs win), values parsed as JSON.

    Raises:
        ValueError: a pair without `=` or with an empty key, or a file that is not a JSON object.
        OSError: the file cannot be read.
    """
    options: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = json.loads(Path(config_file).read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{config_file} is not valid JSON: {err}") from err
        if not isinstance(loaded, dict):
            raise ValueError(f"{config_file} must hold a JSON object of model options, not {type(loaded).__name__}")
        options.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"bad model option '{pair}': expected KEY=VALUE, e.g. hidden_dim=64")
        options[key.strip()] = _value(value.strip())
    return options


def _refuse_random(mode: str, backbone: str, allow: bool) -> None:
    if not allow:
        raise RandomBackboneError(
            f"{mode} would train on a frozen backbone with random weights ('{backbone}' is built without trained "
            "weights): use pretrained weights (--pretrained, the default, for a timm name), a trained model folder, "
            "or pass --allow-random-backbone")
    log.warning("%s trains on a frozen backbone with random weights ('%s'), as --allow-random-backbone asks",
                mode, backbone)


def build_classifier(mode: str, model: str, num_classes: int, class_names: Sequence[str] | None = None, *,
                     pretrained: bool = True, options: dict[str, Any] | None = None, recipe: str = "quick",
                     img_size: int = 0, allow_random_backbone: bool = False) -> nn.Module:
    """The classifier a `mode` run trains, on `model` (its backbone for a kind).

    Args:
        mode: `linear`, `finetune` or a registered kind (`train_modes()`).
        model: a timm name, `hf-hub:` / `hf:` id, preset or model folder (`load_model`).
        num_classes, class_names: from the data set; a saved classifier with another count gets a new head.
        pretrained: published weights for a timm name (ignored by folders and presets).
        options: constructor options: timm arguments for `linear` / `finetune`, the kind's options otherwise.
        recipe: "quick" or "reference": the options `recommended_model_options` gives for it and this backbone.
        img_size: a ViT's input size (0 keeps the model's own); for a kind it becomes `backbone_args["img_size"]`.
        allow_random_backbone: train a frozen backbone that has no trained weights (else `RandomBackboneError`).

    Raises:
        ValueError: an unknown mode or option (the message lists the valid ones); `RandomBackboneError`.
    """
    options = dict(options or {})
    if "pretrained" in options:
        raise ValueError("set pretrained with --pretrained / --no-pretrained (the pretrained= argument), not as a "
                         "model option")
    random_init = is_random_init(model, pretrained)
    if mode not in train_modes():
        raise ValueError(f"unknown mode '{mode}'; choose from {', '.join(train_modes())}")
    recipe_options = recommended_model_options(mode, recipe, backbone=model,
                                               pretrained=published_weights(model, pretrained))
    if mode in TIMM_MODES:
        if mode == "linear" and random_init:
            _refuse_random(mode, model, allow_random_backbone)
        args = {**recipe_options, **options, **({"img_size": img_size} if img_size else {})}
        return load_model(model, num_classes=num_classes, pretrained=pretrained,
                          class_names=list(class_names) if class_names else None, **args)
    kind = get_model_kind(mode)
    valid = kind_option_names(mode)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown {mode} option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
                         f"{kind.cls.__name__} takes {', '.join(valid)}")
    chosen = {**recipe_options, **options}
    if img_size:
        chosen["backbone_args"] = {**(chosen.get("backbone_args") or {}), "img_size": img_size}
    if chosen:
        log.info("%s options (recipe '%s', then the given ones): %s", mode, recipe,
                 ", ".join(f"{k}={v!r}" for k, v in chosen.items()))
    net = build_interpretable(mode, model, num_classes, class_names=class_names, pretrained=pretrained, **chosen)
    backbone = getattr(net, "backbone", None)
    frozen = backbone is not None and not any(p.requires_grad for p in backbone.parameters())
    if random_init and frozen:
        _refuse_random(mode, model, allow_random_backbone)
    return net
