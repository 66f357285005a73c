"""What a metric reads (metrics.md §0): model scores, the target rule, the maps of an `Explanation` (or a raw
tensor) and the per-image seeds that keep results independent of batching."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from traitlens.explain import score_space
from traitlens.metrics.stats import minmax

__all__ = [
    "SCORE_SPACES",
    "batch_indices",
    "explanation_parts",
    "grid_region",
    "image_generator",
    "in_score_space",
    "logits_of",
    "map_normalisation",
    "misclassified",
    "perturbation_inputs",
    "predict",
    "raw_pixel_maps",
    "resolve_targets",
    "scores",
]

SCORE_SPACES = ("prob", "logit", "log_prob")


# ----------------------------------------------------------------------------- model scores


def logits_of(output: Any) -> torch.Tensor:
    """Logits from the output of a model outside timm's convention (an object or dict with `logits`).

    Every traitlens model's `forward` returns the logits tensor, so traitlens itself never needs this.
    """
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        return output["logits"]
    return output.logits


def scores(model: Callable[[torch.Tensor], Any], x: torch.Tensor, targets: torch.Tensor,
           score: str = "prob") -> torch.Tensor:
    """Target scores [N] (or [N,K] for targets [N,K]) of `x` in `score` space ('prob' softmax, 'logit', 'log_prob')."""
    if score not in SCORE_SPACES:
        raise ValueError(f"unknown score '{score}'; choose from {SCORE_SPACES}")
    out = model(x)
    if score == "prob":
        out = out.softmax(-1)
    elif score == "log_prob":
        out = out.log_softmax(-1)
    t = targets.to(out.device).long()
    return out.gather(-1, t.view(-1, 1)).squeeze(-1) if t.dim() == 1 else out.gather(-1, t)


@torch.no_grad()
def predict(model: Callable[[torch.Tensor], Any], images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Logits [B,C] of clean images, chunked."""
    return torch.cat([model(images[i:i + batch_size]) for i in range(0, images.shape[0], batch_size)])


def resolve_targets(
    target: str | torch.Tensor | None,
    exp_targets: torch.Tensor | None,
    model: Callable[[torch.Tensor], Any] | None,
    images: torch.Tensor,
    labels: torch.Tensor | None,
    k: int,
    batch_size: int = 64,
) -> torch.Tensor:
    """The target rule (metrics.md §0): 'explained' (exp.targets, the default), 'pred' (clean top-1) or 'label'.

    Returns [B,K] class ids; 'pred' and 'label' are broadcast over the K maps.
    """
    if isinstance(target, torch.Tensor):
        t = target.long()
        return t.view(-1, 1).expand(-1, k) if t.dim() == 1 else t
    if target in (None, "explained"):
        if exp_targets is None:
            raise ValueError("target='explained' needs an Explanation (or pass targets explicitly)")
        return exp_targets.long()
    if target == "pred":
        if model is None:
            raise ValueError("target='pred' needs the model")
        return predict(model, images, batch_size).argmax(-1).view(-1, 1).expand(-1, k).cpu()
    if target == "label":
        if labels is None:
            raise ValueError("target='label' needs labels")
        return labels.long().view(-1, 1).expand(-1, k).cpu()
    raise ValueError(f"unknown target rule {target!r}; choose 'explained', 'pred', 'label' or a tensor")


def in_score_space(logits: torch.Tensor, score: str) -> torch.Tensor:
    """The metrics' `score=` option: the same score spaces as the explainers' `target_space`."""
    return score_space(logits, score, option="score")


def misclassified(model: Any, images: torch.Tensor | None, labels: torch.Tensor | None, exp: Any,
                  B: int, K: int, batch_size: int) -> torch.Tensor:
    """[B,K] bool: images whose top-1 prediction (`exp.logits`, else the model's) is not the label."""
    if labels is None:
        raise ValueError("preset 'agcam' needs labels to skip misclassified images")
    logits = getattr(exp, "logits", None)
    if logits is None:
        if model is None or images is None:
            raise ValueError("preset 'agcam' needs the model and images (or exp.logits) for the predictions")
        logits = predict(model, images, batch_size)
    wrong = logits.argmax(-1).cpu() != labels.long().cpu()
    return wrong.view(B, 1).expand(B, K)


# ----------------------------------------------------------------------------- maps


def explanation_parts(exp: Any, level: str = "pixel") -> tuple[torch.Tensor, torch.Tensor | None]:
    """(maps, targets) from an `Explanation` or a raw tensor.

    `level='pixel'` reads `exp.maps` [B,K,H,W]; `'patch'` reads `exp.patch_maps`; `'raw'` gives the pixel-size
    maps without the method's normalisation (the raw patch map upsampled with the method's default mode). A raw
    tensor [B,H,W] or [B,K,H,W] is used as is, with no targets.
    """
    if isinstance(exp, torch.Tensor):
        maps = exp.unsqueeze(1) if exp.dim() == 3 else exp
        return maps, None
    if level == "pixel":
        return exp.maps, exp.targets
    if level == "patch":
        return exp.patch_maps, exp.targets
    if level == "raw":
        return raw_pixel_maps(exp), exp.targets
    raise ValueError(f"unknown level '{level}'; choose 'pixel', 'patch' or 'raw'")


def raw_pixel_maps(exp: Any, mode: str | None = None) -> torch.Tensor:
    """Pixel-size maps before normalisation: `patch_maps` upsampled with `mode` (the method's default when None)."""
    from traitlens.explain import get_method, upsample_maps

    given = getattr(exp, "extras", {}).get("raw_pixel_maps")
    if given is not None:  # adapters whose maps live at pixel resolution (captum) carry them here
        return given
    if mode is None:
        try:
            mode = get_method(exp.method).default_upsample
        except ValueError:  # adapters and native maps: fall back to the grid the maps came on
            mode = "bilinear"
    return upsample_maps(exp.patch_maps.to(exp.maps.dtype), tuple(exp.maps.shape[-2:]), mode)


def map_normalisation(exp: Any) -> str:
    """How `exp.maps` were normalised, for the knobs record: the `normalize` recorded in `exp.extras` when the
    explainer stored it, else the method's registry default; 'given' for raw tensors."""
    if isinstance(exp, torch.Tensor):
        return "given"
    norm = (getattr(exp, "extras", None) or {}).get("normalize")
    if norm is not None:
        return str(norm)
    from traitlens.explain import get_method

    try:
        return f"{get_method(exp.method).default_norm} (method default)"
    except ValueError:
        return "unknown"


def grid_region(exp: Any, maps: torch.Tensor) -> int:
    """The patch size as a region side (maps' height over the patch grid height); 1 for raw tensors."""
    if isinstance(exp, torch.Tensor):
        return 1
    return max(1, maps.shape[-2] // exp.patch_maps.shape[-2])


def perturbation_inputs(
    exp: Any,
    images: torch.Tensor,
    model: Any,
    labels: torch.Tensor | None,
    target: Any,
    batch_size: int,
    maps_mode: str = "exp",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """What a perturbation metric reads: (maps [B,K,H,W] on the image device, targets [B,K], patch maps or None).

    `maps_mode='exp'` takes `exp.maps`; 'bilinear_minmax' rebuilds them from the patch maps in the AGCAM/Chefer
    reference order (bilinear upsampling, then min-max).
    """
    maps, exp_targets = explanation_parts(exp)
    patch = None if isinstance(exp, torch.Tensor) else exp.patch_maps
    if maps_mode == "bilinear_minmax" and patch is not None:
        # AGCAM/Chefer reference order: bilinear upsampling of the token map, then min-max (after upsampling).
        up = F.interpolate(patch.reshape(-1, 1, *patch.shape[-2:]).double(), size=maps.shape[-2:], mode="bilinear",
                           align_corners=False)
        maps = minmax(up.view(*patch.shape[:2], *maps.shape[-2:]))[0]
    targets = resolve_targets(target, exp_targets, model, images, labels, maps.shape[1], batch_size)
    return maps.to(images.device), targets, patch


# ----------------------------------------------------------------------------- per-image seeds


def image_generator(seed: int, index: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one image, seeded by (seed, dataset index), so results never depend on batching."""
    return torch.Generator(device=device).manual_seed(int(seed) * 1_000_003 + int(index))


def batch_indices(indices: torch.Tensor | None, b: int) -> list[int]:
    """Dataset indices of a batch (0..B−1 when not given)."""
    return list(range(b)) if indices is None else [int(i) for i in torch.as_tensor(indices).view(-1)]
