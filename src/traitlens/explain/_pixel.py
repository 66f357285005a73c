"""Shared machinery of the pixel-space methods (posthoc.md §0, §11–13).

Input×gradient, integrated gradients and SmoothGrad all differentiate the target score with respect to the
model input at some points around each image, combine the gradients per (image, target), and reduce the
channels. Their patch maps are **sum-pools** of the full-resolution map over p×p patches (our convention,
§0); the full-resolution maps go to `extras['pixel_maps']` because upsampling a patch map loses their detail.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.introspect import is_vit, vit_layout
from traitlens.explain._base import forward_bytes
from traitlens.explain._compat import prompted_backbone
from traitlens.explain._gradients import AUTO_BUDGET_BYTES, _check_batch_size, _rows_per_pass, attention_bytes
from traitlens.explain._targets import target_scores

__all__ = [
    "CHANNEL_REDUCTIONS",
    "MULTI_TARGET",
    "check_model_state",
    "check_options",
    "check_patch_size",
    "gaussian_blur",
    "input_gradients",
    "patch_geometry",
    "pixel_outputs",
    "reduce_channels",
    "sum_pool",
]

CHANNEL_REDUCTIONS = ("mean", "sum")
MULTI_TARGET = ("expand", "vjp")
DEFAULT_PATCH = 16

#: points(b, s) → model inputs [M,C,H,W] for image indices b [M] and sample indices s [M].
PointFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
#: transform(grads [M,K',C,H,W], points [M,1,C,H,W], s [M]) → per-sample contributions, same shape as grads.
TransformFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def check_patch_size(patch_size: int | tuple[int, int] | None) -> int | tuple[int, int] | None:
    """Validate a `patch_size` option (None = the ViT's own, or 16 for other models)."""
    if patch_size is None:
        return None
    p = _pair(patch_size)
    if min(p) < 1:
        raise ValueError(f"patch_size must be positive, got {patch_size}")
    return patch_size


def check_options(channel_reduce: str, multi_target: str, internal_batch_size: int | str | None) -> None:
    """Validate the options every pixel method shares."""
    if channel_reduce not in CHANNEL_REDUCTIONS:
        raise ValueError(f"unknown channel_reduce '{channel_reduce}'; choose from {CHANNEL_REDUCTIONS}")
    if multi_target not in MULTI_TARGET:
        raise ValueError(f"unknown multi_target '{multi_target}'; choose from {MULTI_TARGET}")
    _check_batch_size(internal_batch_size)


#: Rows per pass of 'auto' where no per-row estimate exists (models other than ViTs): the former fixed default.
FALLBACK_ROWS = 16


def gradient_row_bytes(model: nn.Module, images: torch.Tensor) -> int:
    """Estimated peak memory of one row of a pixel-gradient pass (what 'auto' divides its budget by).

    For a ViT: per block, the attention scores and probabilities kept for the backward and the probabilities'
    gradient (3 attention-sized tensors) plus the block's token activations; the budget of `FALLBACK_ROWS` rows
    for any other model.
    """
    if not is_vit(model):
        return AUTO_BUDGET_BYTES // FALLBACK_ROWS
    layout = vit_layout(model, (int(images.shape[-2]), int(images.shape[-1])))
    per_block = 3 * attention_bytes(layout) + forward_bytes(model, layout.num_tokens)
    return layout.num_blocks * per_block


def patch_geometry(
    model: nn.Module, image_size: tuple[int, int], patch_size: int | tuple[int, int] | None = None
) -> tuple[tuple[int, int], tuple[int, int]]:
    """((p_h, p_w), (g_h, g_w)) for sum-pooling pixel maps into patch maps.

    A ViT's own patch size and grid are used unless `patch_size` overrides them (Prompt-CAM: its backbone's);
    other models (CNNs, INTR, SCOUTER) use `patch_size` or 16. The grid is ⌊H/p_h⌋×⌊W/p_w⌋: a remainder strip
    is dropped, like a ViT's patch embedding.
    """
    H, W = image_size
    vit = model if is_vit(model) else prompted_backbone(model)
    if patch_size is None and vit is not None:
        layout = vit_layout(vit, image_size)
        return layout.patch_size, layout.grid
    p = _pair(patch_size if patch_size is not None else DEFAULT_PATCH)
    if p[0] > H or p[1] > W:
        raise ValueError(f"patch size {p} is larger than the image {image_size}; pass a smaller patch_size")
    return p, (H // p[0], W // p[1])


def sum_pool(maps: torch.Tensor, patch: tuple[int, int]) -> torch.Tensor:
    """[..., H, W] → [..., ⌊H/p_h⌋, ⌊W/p_w⌋]: the sum over each p_h×p_w patch (posthoc.md §0)."""
    lead, (H, W) = maps.shape[:-2], maps.shape[-2:]
    g_h, g_w = H // patch[0], W // patch[1]
    cropped = maps[..., : g_h * patch[0], : g_w * patch[1]]
    return cropped.reshape(*lead, g_h, patch[0], g_w, patch[1]).sum(dim=(-3, -1))


def reduce_channels(attr: torch.Tensor, how: str = "mean") -> torch.Tensor:
    """[..., C, H, W] → [..., H, W] by the mean (reference) or the sum over channels."""
    if how == "mean":
        return attr.mean(-3)
    if how == "sum":
        return attr.sum(-3)
    raise ValueError(f"unknown channel_reduce '{how}'; choose from {CHANNEL_REDUCTIONS}")


def check_model_state(model: nn.Module) -> None:
    """Refuse BatchNorm models in train mode: batch statistics would mix the samples of a batch (§0)."""
    if model.training and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        raise RuntimeError(
            "the model has BatchNorm layers and is in training mode, so its outputs mix the images of a batch "
            "and batched gradients are wrong; call model.eval() first"
        )


def pixel_outputs(
    attributions: torch.Tensor, patch: tuple[int, int], channel_reduce: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel attributions [B,K,C,H,W] → (patch_maps [B,K,g_h,g_w], pixel_maps [B,K,H,W])."""
    pixel_maps = reduce_channels(attributions, channel_reduce)
    return sum_pool(pixel_maps, patch), pixel_maps


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [B,C,H,W] with radius ⌈3σ⌉ and replicate padding (any image size)."""
    if sigma <= 0:
        return images.clone()
    radius = max(1, int(torch.tensor(3.0 * sigma).ceil().item()))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    C = images.shape[1]
    kx = kernel.view(1, 1, 1, -1).expand(C, 1, 1, -1)
    ky = kernel.view(1, 1, -1, 1).expand(C, 1, -1, 1)
    out = F.conv2d(F.pad(images, (radius, radius, 0, 0), mode="replicate"), kx, groups=C)
    return F.conv2d(F.pad(out, (0, 0, radius, radius), mode="replicate"), ky, groups=C)


def input_gradients(
    model: nn.Module,
    targets: torch.Tensor,
    target_space: str,
    points: PointFn,
    num_samples: int,
    image_shape: tuple[int, ...],
    weights: torch.Tensor | None = None,
    transform: TransformFn | None = None,
    multi_target: str = "expand",
    internal_batch_size: int | str | None = None,
    row_bytes: int = 0,
) -> torch.Tensor:
    """Σ_s w_s·transform(∂y_{b,k}/∂x at points(b, s)) for every image b and target k → [B,K,C,H,W].

    'expand' runs the flat [B·K·S] batch (one row per image, target and sample) and 'vjp' the [B·S] batch
    with one batched VJP over the K one-hot outputs (posthoc.md §0). Either way the batch is cut into chunks
    of `internal_batch_size` rows, each with one forward and one `autograd.grad` of the summed scores; this
    is exact because eval-mode models never mix samples. Rows are visited in (b, [k,] s) order, so a
    sampler that draws noise image by image stays deterministic whatever the chunk size.
    """
    B, K = targets.shape
    S = num_samples
    out: torch.Tensor | None = None
    per_target = multi_target == "expand"
    total = B * K * S if per_target else B * S
    chunk = _rows_per_pass(internal_batch_size, row_bytes) or total
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(start + chunk, total), device=targets.device)
        if per_target:
            b, k, s = idx // (K * S), (idx // S) % K, idx % S
            cls = targets[b, k].unsqueeze(1)  # [M,1]
        else:
            b, s = idx // S, idx % S
            cls = targets[b]  # [M,K]
        with torch.enable_grad():  # also under a caller's torch.no_grad(), like every gradient method
            x = points(b, s).detach().requires_grad_()
            logits = model(x)
            y = target_scores(logits, cls, target_space)  # [M,1] or [M,K]
            if per_target or K == 1:
                (g,) = torch.autograd.grad(y.sum(), x)
                g = g.unsqueeze(1)  # [M,1,C,H,W]
            else:
                eye = torch.eye(K, dtype=y.dtype, device=y.device)
                one_hots = eye.unsqueeze(1).expand(K, *y.shape)  # [K,M,K]
                (g,) = torch.autograd.grad(y, x, grad_outputs=one_hots, is_grads_batched=True)
                g = g.transpose(0, 1)  # [M,K,C,H,W]
        pts = x.detach().unsqueeze(1)
        contrib = transform(g, pts, s) if transform is not None else g
        if weights is not None:
            contrib = contrib * weights.to(contrib)[s].view(-1, *([1] * (contrib.dim() - 1)))
        if out is None:
            out = torch.zeros(B * K, *image_shape, dtype=contrib.dtype, device=contrib.device)
        if per_target:
            out.index_add_(0, b * K + k, contrib[:, 0])
        else:
            rows = (b.unsqueeze(1) * K + torch.arange(K, device=b.device)).reshape(-1)
            out.index_add_(0, rows, contrib.reshape(-1, *image_shape))
    assert out is not None
    return out.view(B, K, *image_shape)
