"""Infidelity (metrics.md §1.6) and max-sensitivity (metrics.md §2), after Yeh et al. 2019 and
`captum.metrics`. Noise is drawn per image from a generator seeded by (seed, dataset index), so a value does not
depend on how images are batched or sharded; tests feed captum the identical samples."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from traitlens.metrics._registry import MetricResult, register_metric
from traitlens.metrics.inputs import (
    batch_indices,
    explanation_parts,
    image_generator,
    in_score_space,
    resolve_targets,
)

__all__ = ["PERTURBATIONS", "infidelity", "perturbation_noise", "sensitivity_max"]

PERTURBATIONS = ("gaussian", "square", "noisy_baseline")

Perturbation = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def perturbation_noise(kind: str, x: torch.Tensor, generator: torch.Generator, *, sigma: float = 0.2,
                       square: int | None = None) -> torch.Tensor:
    """Perturbations I [n,C,H,W] for n copies `x` of one image (the perturbed input is x − I).

    'gaussian': I ~ N(0, σ²) i.i.d. (Yeh's reference, σ = 0.2). 'square': I = x ⊙ (a random square of side `square`,
    default H//4), i.e. that square is removed. 'noisy_baseline': x − I = N(0, σ²), a noisy zero baseline.
    """
    n, _, H, W = x.shape
    if kind == "gaussian":
        return sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
    if kind == "noisy_baseline":
        return x - sigma * torch.randn(x.shape, generator=generator, dtype=torch.float64).to(x)
    if kind == "square":
        side = square or max(1, H // 4)
        y0 = torch.randint(0, H - side + 1, (n,), generator=generator)
        x0 = torch.randint(0, W - side + 1, (n,), generator=generator)
        ys, xs = torch.arange(H), torch.arange(W)
        m = (((ys[None] >= y0[:, None]) & (ys[None] < y0[:, None] + side))[:, :, None]
             & ((xs[None] >= x0[:, None]) & (xs[None] < x0[:, None] + side))[:, None, :])
        return x * m[:, None].to(x)
    raise ValueError(f"unknown perturbation '{kind}'; choose from {PERTURBATIONS} or pass a callable")


@register_metric("infidelity", category="faithfulness", direction="lower", needs=["model"],
                 cost="n forwards per image (all K targets share them)", spec="metrics.md §1.6",
                 summary="Yeh et al. infidelity: E[(IᵀΦ − (f(x) − f(x−I)))²] with β-scaling")
def infidelity(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    *,
    perturbation: str | Perturbation = "gaussian",
    sigma: float = 0.2,
    n_samples: int = 10,
    normalize: bool = True,
    score: str = "logit",
    target: Any = "explained",
    preset: str | None = None,
    level: str = "pixel",
    seed: int = 0,
    indices: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """Infidelity (metrics.md §1.6; `captum.metrics.infidelity`). ↓.

    **INFD = E_I[(IᵀΦ − (f(x) − f(x − I)))²]**, Φ the pixel map broadcast over channels (IᵀΦ = Σ_{c,h,w} I·Φ).
    With `normalize=True` (β-scaling, the default): β = E[IᵀΦ·Δf] / E[(IᵀΦ)²] and the score uses βΦ, which makes
    it independent of the map's scale. A zero map gives NaN.

    Args:
        perturbation: 'gaussian' (σ = `sigma`), 'square', 'noisy_baseline', or a callable
            `(x [n,C,H,W] copies of one image, generator) -> I [n,C,H,W]`.
        n_samples: perturbations per image (captum/Quantus default 10); preset 'scouter_repro' uses 100, σ = 0.2.
        score: 'logit' (default), 'prob', 'log_prob'.
    """
    if preset == "scouter_repro":
        perturbation, sigma, n_samples, normalize = "gaussian", 0.2, 100, True
    elif preset is not None:
        raise ValueError(f"unknown infidelity preset '{preset}'; choose None or 'scouter_repro'")
    maps, exp_targets = explanation_parts(exp, level)
    B, K, H, W = maps.shape
    targets = resolve_targets(target, exp_targets, model, images, labels, K, batch_size).to(images.device)
    ids = batch_indices(indices, B)
    pert: Perturbation = (perturbation if callable(perturbation)
                          else lambda x, g: perturbation_noise(perturbation, x, g, sigma=sigma))
    noise = torch.cat([pert(images[b:b + 1].expand(n_samples, -1, -1, -1), image_generator(seed, ids[b]))
                       for b in range(B)])  # [B·n, C,H,W], image-major like captum's repeat_interleave
    x_rep = images.repeat_interleave(n_samples, 0)
    tgt_rep = targets.repeat_interleave(n_samples, 0)
    with torch.no_grad():
        clean = in_score_space(model(images), score).gather(-1, targets)  # [B,K]
        pert_scores = torch.cat([
            in_score_space(model(x_rep[i:i + batch_size] - noise[i:i + batch_size]), score)
            .gather(-1, tgt_rep[i:i + batch_size]) for i in range(0, B * n_samples, batch_size)])
    dfx = (clean.repeat_interleave(n_samples, 0) - pert_scores).double().view(B, n_samples, K)
    phi = maps.to(images.device).double()  # [B,K,H,W]; broadcast over channels
    i_sum = noise.double().view(B, n_samples, -1, H, W).sum(2)  # Σ_c I  → [B,n,H,W]
    a = torch.einsum("bnhw,bkhw->bnk", i_sum, phi)  # IᵀΦ
    zero_map = phi.flatten(-2).abs().sum(-1) == 0  # [B,K]
    if normalize:
        den = (a * a).sum(1)
        beta = (a * dfx).sum(1) / torch.where(den > 0, den, torch.ones_like(den))
        a = a * beta[:, None, :]
    values = ((a - dfx) ** 2).mean(1)
    values = torch.where(zero_map, torch.full_like(values, math.nan), values)
    name = perturbation if isinstance(perturbation, str) else getattr(perturbation, "__name__", "callable")
    return MetricResult("infidelity", values, "lower",
                        {"spec": "metrics.md §1.6", "preset": preset, "perturbation": name, "sigma": sigma,
                         "n_samples": n_samples, "normalize": normalize, "score": score, "level": level,
                         "target": target if isinstance(target, str) else "given", "seed": seed})



def _maps_of(out: Any, use: str) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    return out.patch_maps if use == "raw" else out.maps


@register_metric("sensitivity_max", category="robustness", direction="lower", needs=["model", "explainer"],
                 cost="n explanation calls per image, each at its method's cost", spec="metrics.md §2",
                 summary="Max relative change of the map under small uniform input noise")
def sensitivity_max(
    model: Callable[[torch.Tensor], Any],
    images: torch.Tensor,
    exp: Any,
    explainer: Callable[..., Any],
    *,
    radius: float = 0.02,
    n_samples: int = 10,
    use: str = "maps",
    preset: str | None = None,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 64,
) -> MetricResult:
    """Max-sensitivity (metrics.md §2; `captum.metrics.sensitivity_max`). ↓.

    **SENS = max_{k ≤ n} ‖Φ(x + δ_k) − Φ(x)‖_F / ‖Φ(x)‖_F**, δ_k ~ U[−r, r] over the input tensor, the target fixed
    at the clean image's target; a zero ‖Φ(x)‖ is replaced by 1 (as captum does). Φ = `exp.maps` (after the
    method's default normalisation); `use='raw'` reads `patch_maps`. Defaults r = 0.02, n = 10 (captum); preset
    'yeh' = r 0.2, n 50.

    Args:
        explainer: `(model, images, target [N,K]) -> Explanation` (or a map tensor [N,K,...]).
    """
    if preset == "yeh":
        radius, n_samples = 0.2, 50
    elif preset is not None:
        raise ValueError(f"unknown sensitivity preset '{preset}'; choose None or 'yeh'")
    if use not in ("maps", "raw"):
        raise ValueError(f"unknown use '{use}'; choose 'maps' or 'raw'")
    base = _maps_of(exp, use).double()
    B, K = base.shape[:2]
    targets = exp.targets if not isinstance(exp, torch.Tensor) else None
    if targets is None:
        raise ValueError("sensitivity_max needs an Explanation (its targets stay fixed)")
    ids = batch_indices(indices, B)
    delta = torch.cat([(torch.rand((n_samples, *images.shape[1:]), generator=image_generator(seed, ids[b]),
                                   dtype=torch.float64) * 2 - 1) * radius for b in range(B)]).to(images)
    x_pert = images.repeat_interleave(n_samples, 0) + delta
    t_rep = targets.repeat_interleave(n_samples, 0)
    perturbed = torch.cat([_maps_of(explainer(model, x_pert[i:i + batch_size], t_rep[i:i + batch_size]), use)
                           .detach().double().cpu() for i in range(0, B * n_samples, batch_size)])
    base_rep = base.cpu().repeat_interleave(n_samples, 0)
    diff = (perturbed - base_rep).flatten(2).norm(dim=-1)  # [B·n, K]: per target (captum: one image = one target)
    norm = base.cpu().flatten(2).norm(dim=-1)
    norm = torch.where(norm == 0, torch.ones_like(norm), norm).repeat_interleave(n_samples, 0)
    sens = (diff / norm).view(B, n_samples, K).max(1).values
    return MetricResult("sensitivity_max", sens, "lower",
                        {"spec": "metrics.md §2", "preset": preset, "radius": radius, "n_samples": n_samples,
                         "use": use, "norm": "fro per (image, target)", "seed": seed})
