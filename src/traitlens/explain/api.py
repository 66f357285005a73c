"""`explain`: one entry point for every registered method (api.md)."""

from __future__ import annotations

import inspect
import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

from traitlens.backbones.introspect import class_names_of
from traitlens.explain._amp import amp_context, to_input_dtype
from traitlens.explain._base import Explainer, image_size
from traitlens.explain._compat import check_method
from traitlens.explain._explanation import Explanation
from traitlens.explain._postprocess import normalize_maps, upsample_maps
from traitlens.explain._targets import TARGET_SPACES, TargetSpec

__all__ = ["explain", "num_classes_of"]

log = logging.getLogger(__name__)


def num_classes_of(model: nn.Module) -> int | None:
    """C from the model (`num_classes` attribute), or None when unknown."""
    n = getattr(model, "num_classes", None)
    return int(n) if n else None


def explain(
    model: nn.Module,
    images: torch.Tensor,
    method: str = "cdam",
    target: Any = None,
    *,
    target_space: str = "logit",
    upsample: str | None = None,
    normalize: str | None = None,
    amp: bool = False,
    **options: Any,
) -> Explanation:
    """Explain `images` with `method` for `target` (top-1 by default).

    Args:
        model: a timm ViT (or a model the method supports: `supported_methods(model)`), in eval mode.
        images: [B,3,H,W] or [3,H,W] in the model's input space (see `backbones.normalize`).
        method: a registry name; `list_methods()` shows them all.
        target: None/"top1", "topk:K", int, class name, list per image, [B,K] tensor, or a `Concept`.
        target_space: score to explain: "logit" (default), "prob" or "log_prob".
        upsample: "nearest" | "bilinear"; when None, the method's default (pixel-space methods keep their
            full-resolution map).
        normalize: "none" | "minmax" | "maxabs"; the method's default when None.
        amp: run the model and the method under autocast: bfloat16 on a GPU that has it (else float16) and on a
            CPU with bf16 units (elsewhere a warning, and float32). Only for the methods whose maps stay within
            their registry `amp_tolerance` of float32 (docs/performance.md); the maps come back in the images'
            dtype. Default off: the float32 maps.
        **options: method options (e.g. `head_fusion="max"`), passed to the method's constructor.

    Returns:
        An `Explanation` with `maps` [B,K,H,W], `patch_maps` [B,K,g_h,g_w], `targets` [B,K], ...

    Raises:
        IncompatibleMethodError: the method does not run on this model (`method_refusal` says why); raised before
            any work. A ValueError (and a TypeError).
        ValueError: unknown method, bad target, unknown option value; `AmpUnsafeMethodError` for `amp=True` with
            a method declared amp-unsafe.
        RuntimeError: called under `torch.inference_mode`.

    Example:
        >>> exp = explain(model, x, method="cdam", target="topk:3")  # doctest: +SKIP
    """
    info = check_method(model, method)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("explain() cannot run under torch.inference_mode(); gradients and hooks need a normal mode")
    if target_space not in TARGET_SPACES:
        raise ValueError(f"unknown target_space '{target_space}'; choose from {TARGET_SPACES}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B,3,H,W], got {type(images).__name__}")
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"images must be [B,3,H,W], got shape {tuple(images.shape)}")
    if model.training:
        warnings.warn("explaining a model in training mode (dropout, batch statistics); call model.eval() first",
                      stacklevel=2)
    spec = TargetSpec(target, images.shape[0], num_classes_of(model), class_names_of(model))
    if spec.concept is not None and not info.concept:
        raise ValueError(f"method '{method}' does not take a Concept target; concept-capable: cdam and its variants")
    _check_options(info.cls, method, options)
    autocast, amp_dtype = amp_context(info, images.device, amp)
    explainer = info.cls(model, **options)
    with autocast:
        raw = explainer.attribute(images, spec, target_space=target_space)
    if amp_dtype is not None:
        raw = to_input_dtype(raw, images.dtype)
        raw.extras["amp"] = str(amp_dtype).removeprefix("torch.")
    norm = normalize or info.default_norm
    if info.signed and norm == "minmax":
        log.warning("%s is signed; min-max normalisation maps 0 away from 0 (use 'maxabs' to keep the sign)", method)
    if upsample is None and "pixel_maps" in raw.extras:
        used_upsample = "pixel"
        pixel = raw.extras["pixel_maps"]  # pixel-space methods keep their full-resolution map
    else:
        used_upsample = upsample or info.default_upsample
        pixel = upsample_maps(raw.patch_maps, image_size(images), used_upsample)
    maps, degenerate = normalize_maps(pixel, norm)
    extras = {**raw.extras, "normalize": norm, "upsample": used_upsample}  # the knobs metrics record
    return Explanation(
        maps=maps.detach(),
        patch_maps=raw.patch_maps.detach(),
        targets=raw.targets,
        method=method,
        logits=None if raw.logits is None else raw.logits.detach(),
        head_maps=None if raw.head_maps is None else raw.head_maps.detach(),
        degenerate=degenerate,
        signed=info.signed,
        target_names=spec.names(raw.targets),
        extras=extras,
    )


def _check_options(cls: type[Explainer], method: str, options: dict[str, Any]) -> None:
    """Name unknown options and list the valid ones, instead of Python's bare TypeError."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    valid = [name for name in params if name not in ("self", "model")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"{method} got unknown options: {', '.join(unknown)}; valid: {', '.join(valid)}")
