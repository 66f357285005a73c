"""Which methods run on which model: model families and the one refusal rule (posthoc.md §0 "Model families").

A method declares the families it runs on (`MethodInfo.families`); a model offers families (`model_families`). A
method runs when the two share one; otherwise `explain` refuses up front with `method_refusal`'s one-line reason,
which the CLI and the web page show as they are. Models declare what they offer with a `traitlens_families`
attribute (the interpretable models do); other models are recognised by their parts.
"""

from __future__ import annotations

from typing import Protocol, cast

import torch
import torch.nn as nn

from traitlens.backbones.introspect import is_vit
from traitlens.explain._registry import MethodInfo, get_method, list_methods

__all__ = [
    "FAMILIES",
    "IncompatibleMethodError",
    "PromptedViT",
    "method_refusal",
    "model_families",
    "prompted_backbone",
    "supported_methods",
]

#: Every family a model can offer, and what it means (the refusal names what a method needs in these words).
FAMILIES: dict[str, str] = {
    "vit": "a timm VisionTransformer (patch_embed, blocks, norm, a token head)",
    "prompted_vit": "class tokens in front of a timm ViT's last block, logit c read from token c (Prompt-CAM)",
    "cnn": "a [B,C,h,w] feature map from forward_features that forward_head turns into logits "
           "(timm CNNs; INTR and SCOUTER)",
    "logits": "a differentiable classifier whose forward returns logits",
    "native": "an interpretable-by-design model with its own class maps (PromptCAM, INTR, SCOUTER)",
}


class IncompatibleMethodError(ValueError, TypeError):
    """The method does not run on this model; the message (one line) says why and which methods do.

    A ValueError (a bad argument combination) and, for code written before up-front refusals, a TypeError (the
    model type is wrong), which the methods used to raise from deep inside.
    """


class PromptedViT(Protocol):
    """What the "prompted_vit" family exposes (Prompt-CAM, models.md §1.2).

    `last_block_input(images)` gives the tokens entering `backbone.blocks[-1]`, [B, Q+n_p+M, D], with the Q =
    `num_classes` class tokens first; `score(z)` turns that block's outputs for the class tokens, [B,Q,D], into the
    logits [B,Q] (logit c reads token c only).
    """

    backbone: nn.Module
    num_classes: int

    def last_block_input(self, images: torch.Tensor) -> torch.Tensor: ...

    def score(self, z: torch.Tensor) -> torch.Tensor: ...


def model_families(model: nn.Module) -> tuple[str, ...]:
    """The families `model` offers: its declared `traitlens_families`, else read from its parts.

    A timm ViT offers "vit", a timm CNN (or any model with `forward_features` and `forward_head`) "cnn", and every
    classifier with classes "logits" (its forward is assumed to return logits, as timm's do). A headless model
    (`num_classes == 0`) offers no "logits".

    Example:
        >>> model_families(timm.create_model("vit_tiny_patch16_224"))  # doctest: +SKIP
        ('vit', 'logits')
    """
    declared = getattr(model, "traitlens_families", None)
    if declared is not None:
        if isinstance(declared, str) or not all(isinstance(f, str) for f in declared):
            raise TypeError(f"{type(model).__name__}.traitlens_families must be a tuple of family names, "
                            f"got {declared!r}")
        return tuple(declared)
    if is_vit(model):
        found = ["vit"]
    elif callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None)):
        found = ["cnn"]
    else:
        found = []
    if getattr(model, "num_classes", None) != 0:
        found.append("logits")
    return tuple(found)


def supported_methods(model: nn.Module) -> list[MethodInfo]:
    """The registered methods that run on `model` (their families meet the model's), sorted by name."""
    offered = set(model_families(model))
    return [info for info in list_methods() if offered & set(info.families)]


def method_refusal(model: nn.Module, method: str) -> str | None:
    """Why `method` does not run on `model`, in one line, or None when it runs.

    The line names the method, the model class, what the method needs and the methods that do run on the model.
    An unknown method name is not a refusal: it raises the registry's ValueError.

    Example:
        >>> method_refusal(promptcam_net, "rollout")  # doctest: +SKIP
        "method 'rollout' does not run on PromptCAM: it needs a timm VisionTransformer (...); PromptCAM offers ..."
    """
    info = get_method(method)
    offered = model_families(model)
    if set(offered) & set(info.families):
        return None
    name = type(model).__name__
    needs = " or ".join(f"{FAMILIES.get(f, f)} [{f}]" for f in info.families)
    fits = ", ".join(m.name for m in supported_methods(model)) or "none"
    return (f"method '{info.name}' does not run on {name}: it needs {needs}; {name} offers "
            f"{', '.join(offered) or 'no family'}; methods that run on it: {fits}")


def check_method(model: nn.Module, method: str) -> MethodInfo:
    """The method's registry entry, or `IncompatibleMethodError` with `method_refusal`'s reason."""
    info = get_method(method)
    why = method_refusal(model, method)
    if why is not None:
        raise IncompatibleMethodError(why)
    return info


def prompted_backbone(model: nn.Module) -> nn.Module | None:
    """The timm ViT inside a "prompted_vit" model (Prompt-CAM's frozen backbone), or None for other models."""
    if "prompted_vit" not in model_families(model):
        return None
    return cast(PromptedViT, model).backbone
