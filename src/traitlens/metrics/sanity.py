"""Model-parameter randomisation test, MPRT (Adebayo et al., NeurIPS 2018) (metrics.md §5).

The model is deep-copied and randomised top-down (cascading) or one layer at a time (independent); after each
step the same images are explained with the targets fixed to the original model's, and the maps are compared
with Spearman rank correlation (of |maps| and of the signed maps; SSIM optionally). Similarity should fall toward
0 as more of the model is randomised. The user's model is never touched.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn as nn

from traitlens.metrics._registry import MetricResult, register_metric
from traitlens.metrics.inputs import explanation_parts
from traitlens.metrics.stats import SSIM_SETTINGS, minmax_ssim, spearman

__all__ = ["mprt", "mprt_layers", "randomize_parameters"]

log = logging.getLogger(__name__)

Layer = tuple[str, list[str]]

SIMILARITIES = ("spearman", "ssim")


def mprt_layers(model: nn.Module) -> list[Layer]:
    """The cascade order as (step name, [qualified module/parameter names]) (metrics.md §5).

    A model may define `mprt_layers()` itself (the interpretable models put their own heads first). For a timm ViT:
    [head + fc_norm, norm, blocks[L−1], …, blocks[0], patch_embed + pos_embed + prefix tokens]. Otherwise the
    top-level children in reverse order.
    """
    own = getattr(model, "mprt_layers", None)
    if callable(own):
        return list(own())
    names = dict(model.named_children())
    if "blocks" in names and "patch_embed" in names:
        layers: list[Layer] = []
        head: list[str] = [n for n in ("head", "fc_norm", "head_drop", "attn_pool") if n in names]
        if head:
            layers.append(("head", head))
        if "norm" in names:
            layers.append(("norm", ["norm"]))
        blocks: Any = model.blocks  # an nn.Sequential / nn.ModuleList of blocks
        for i in reversed(range(len(blocks))):
            layers.append((f"blocks.{i}", [f"blocks.{i}"]))
        embed = ["patch_embed"] + [n for n, _ in model.named_parameters(recurse=False)]
        layers.append(("embed", embed))
        return layers
    children = list(names)
    own_params = [n for n, _ in model.named_parameters(recurse=False)]
    layers = [(n, [n]) for n in reversed(children)]
    if own_params:
        layers.append(("own parameters", own_params))
    return layers


def _params_under(model: nn.Module, prefixes: Sequence[str]) -> list[tuple[str, nn.Parameter]]:
    out = []
    for name, p in model.named_parameters():
        if any(name == pre or name.startswith(pre + ".") for pre in prefixes):
            out.append((name, p))
    return out


@torch.no_grad()
def randomize_parameters(model: nn.Module, prefixes: Sequence[str], generator: torch.Generator,
                         reinit: str = "trunc_normal") -> int:
    """Re-initialise every parameter under `prefixes` in place; returns how many tensors changed.

    'trunc_normal' (our choice, metrics.md §5): N(0, σ²) truncated at ±2σ, σ = the tensor's std (0.02 when that
    std is 0 or undefined). 'module' calls `reset_parameters()` where a module has one (the architecture's own
    initialiser) and falls back to 'trunc_normal' for the rest.
    """
    done: set[str] = set()
    if reinit == "module":
        for mod_name, mod in model.named_modules():
            under = any(mod_name == pre or mod_name.startswith(pre + ".") for pre in prefixes)
            if under and hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
                done.update(f"{mod_name}.{n}" for n, _ in mod.named_parameters(recurse=False))
    elif reinit != "trunc_normal":
        raise ValueError(f"unknown reinit '{reinit}'; choose 'trunc_normal' or 'module'")
    count = 0
    for name, p in _params_under(model, prefixes):
        count += 1
        if name in done:
            continue
        std = float(p.float().std()) if p.numel() > 1 else 0.0
        sigma = std if std > 0 and std == std else 0.02
        fresh = torch.empty(p.shape, dtype=torch.float64)
        torch.nn.init.trunc_normal_(fresh, 0.0, sigma, -2 * sigma, 2 * sigma, generator=generator)
        p.copy_(fresh.to(p))
    return count


def _maps_of(out: Any, level: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return explanation_parts(out, level)[0]


def _similarity(a: torch.Tensor, b: torch.Tensor, similarity: str) -> torch.Tensor:
    """Per-map similarity [B,K] of [B,K,H,W] maps: Spearman over pixels, or SSIM of the min-maxed maps (§6's)."""
    if similarity == "ssim":
        return minmax_ssim(a, b)
    return spearman(a.flatten(2), b.flatten(2))


@register_metric("mprt", category="sanity", needs=["model", "explainer"],
                 outputs={"mprt": "lower", "mprt_signed": "lower"},
                 cost="(#steps + 1) explanation calls per image, one model copy", spec="metrics.md §5",
                 summary="Spearman (or SSIM) similarity of maps before/after cascading parameter randomisation")
def mprt(
    model: nn.Module,
    images: torch.Tensor,
    exp: Any,
    explainer: Callable[..., Any],
    *,
    mode: str = "cascading",
    layers: Sequence[Layer] | None = None,
    reinit: str = "trunc_normal",
    seed: int = 42,
    level: str = "pixel",
    similarity: str = "spearman",
) -> dict[str, MetricResult]:
    """Model-parameter randomisation test (metrics.md §5). ↓ (similarity should drop toward 0).

    Returns two outputs: 'mprt' (similarity of |maps|, the default) and 'mprt_signed' (of the signed maps).
    Each value is the mean over the cascade of the per-step similarity; `curves` [B,K,steps] hold the full curve
    and `knobs['steps']` the step names.

    Args:
        explainer: `(model, images, target [B,K]) -> Explanation` (or maps) — called on the randomised copies.
        mode: 'cascading' (top-down, the default) or 'independent' (one layer at a time on a fresh copy).
        layers: the order as (name, [qualified names]); default `mprt_layers(model)`.
        reinit: 'trunc_normal' (seed 42) or 'module'.
        similarity: 'spearman' (rank correlation over pixels, Adebayo's default) or 'ssim' (the random-logit SSIM
            of §6 on min-max-normalised maps; the maps must be at least 7×7).
    """
    if mode not in ("cascading", "independent"):
        raise ValueError(f"unknown mode '{mode}'; choose 'cascading' or 'independent'")
    if similarity not in SIMILARITIES:
        raise ValueError(f"unknown similarity '{similarity}'; choose from {SIMILARITIES}")
    steps = list(layers) if layers is not None else mprt_layers(model)
    base = _maps_of(exp, level).detach().double().cpu()
    targets = exp.targets if not isinstance(exp, torch.Tensor) else None
    if targets is None:
        raise ValueError("mprt needs an Explanation (its targets stay fixed)")
    sims_abs, sims_signed = [], []
    work = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for name, prefixes in steps:
        if mode == "independent":
            work = copy.deepcopy(model)
            gen = torch.Generator().manual_seed(seed)
        n = randomize_parameters(work, prefixes, gen, reinit)
        if n == 0:
            log.warning("MPRT step '%s' matched no parameters", name)
        maps = _maps_of(explainer(work, images, targets), level).detach().double().cpu()
        sims_abs.append(_similarity(base.abs(), maps.abs(), similarity))
        sims_signed.append(_similarity(base, maps, similarity))
    del work
    knobs = {"spec": "metrics.md §5", "mode": mode, "reinit": reinit, "seed": seed, "level": level,
             "steps": [n for n, _ in steps], "similarity": similarity,
             **({"ssim": SSIM_SETTINGS} if similarity == "ssim" else {})}
    curve_abs = torch.stack(sims_abs, -1)
    curve_signed = torch.stack(sims_signed, -1)
    x = torch.arange(1, len(steps) + 1, dtype=torch.float64)
    return {
        "mprt": MetricResult("mprt", curve_abs.nanmean(-1), "lower", {**knobs, "of": "|maps|"}, curves=curve_abs,
                             curve_x=x),
        "mprt_signed": MetricResult("mprt_signed", curve_signed.nanmean(-1), "lower", {**knobs, "of": "signed maps"},
                                    curves=curve_signed, curve_x=x),
    }
