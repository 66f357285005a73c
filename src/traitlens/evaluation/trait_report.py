"""Trait report: which part each class (and each head, for models with per-head maps) relies on.

For every image the positive saliency s⁺ of the explained class is split over the part masks (TraitShapes
`part_masks`, or disks around CUB-style part points) and the background; shares are averaged per class and, from
`Explanation.head_maps`, per head. For TraitShapes the table also names the parts that *should* matter: the parts
carrying the slots in which the class differs from its siblings (datasets.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens.backbones.preprocess import normalize
from traitlens.evaluation._data import Batch, load_batch, trait_info
from traitlens.explain import explain, upsample_maps
from traitlens.metrics import raw_pixel_maps

__all__ = ["TraitReport", "part_disks", "trait_report"]


@dataclass
class TraitReport:
    """Part reliance per class and per head.

    Attributes:
        parts: part names (the columns), then "background".
        rows: per class: class, n, one share per part and background, top_part, expected (TraitShapes: the parts
            that tell the class from its siblings), hit (top_part in expected).
        head_rows: per head: head_index, one share per part and background, top_part (empty without head maps).
        png: heat maps (classes × parts, heads × parts).
    """

    parts: list[str]
    rows: list[dict[str, Any]]
    head_rows: list[dict[str, Any]] = field(default_factory=list)
    png: bytes = b""


def part_disks(points: torch.Tensor, size: tuple[int, int], radius: float) -> torch.Tensor:
    """Part masks [B,n_parts,H,W] from part points [B,n_parts,3] (x, y, visible): disks of `radius` px around
    visible points (CUB part locations); invisible parts give empty masks."""
    H, W = size
    ys = torch.arange(H, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(W, dtype=torch.float32)[None, :] + 0.5
    px, py, vis = points[..., 0, None, None], points[..., 1, None, None], points[..., 2, None, None]
    return (((xs - px) ** 2 + (ys - py) ** 2) <= radius**2) & (vis > 0)


def _part_masks(batch: Batch, radius: float) -> torch.Tensor:
    if batch.part_masks is not None:
        return batch.part_masks
    if batch.parts is not None:
        return part_disks(batch.parts, (batch.images01.shape[-2], batch.images01.shape[-1]), radius)
    raise ValueError("the trait report needs part masks (TraitShapes, CUB part_masks/) or part points (CUB parts/)")


def _shares(pos: torch.Tensor, parts: torch.Tensor) -> torch.Tensor:
    """pos [B,...,H,W] ≥ 0 and parts [B,P,H,W] → shares [B,...,P+1] (last = background); NaN where Σ pos = 0."""
    B, H, W = pos.shape[0], pos.shape[-2], pos.shape[-1]
    extra = pos.shape[1:-2]
    flat = pos.reshape(B, -1, H, W).double()
    p = parts.double()
    inside = torch.einsum("behw,bphw->bep", flat, p)
    background = (flat * (1 - p.amax(1, keepdim=True))).flatten(-2).sum(-1, keepdim=True)
    total = flat.flatten(-2).sum(-1, keepdim=True)
    out = torch.cat([inside, background], -1) / torch.where(total > 0, total, torch.ones_like(total))
    out = torch.where(total > 0, out, torch.full_like(out, float("nan")))
    return out.view(B, *extra, -1)


def trait_report(
    model: nn.Module,
    dataset: Dataset,
    method: str = "cdam",
    *,
    n_images: int = 256,
    batch_size: int = 32,
    target: str = "label",
    method_options: Mapping[str, Any] | None = None,
    part_names: Sequence[str] | None = None,
    point_radius: float | None = None,
) -> TraitReport:
    """Which part each class (and each head) relies on.

    Args:
        method: a registry method, or "native" for interpretable models (their `head_maps` give the head rows).
        n_images: the first N images.
        target: "label" (default) or "pred".
        part_names: column names; default TraitShapes `PART_NAMES` or the dataset's `part_names`.
        point_radius: disk radius around part points when there are no part masks (default: the patch size, else
            H/16).

    Returns:
        A `TraitReport`.
    """
    from traitlens.data.traitshapes import PART_NAMES

    traits = trait_info(dataset)
    device = next(model.parameters()).device
    n = min(n_images, len(cast(Sized, dataset)))
    names = list(part_names or getattr(dataset, "part_names", None) or PART_NAMES)
    classes = list(getattr(dataset, "classes", []))
    per_class: dict[int, list[torch.Tensor]] = {}
    per_head: list[torch.Tensor] = []
    for start in range(0, n, batch_size):
        batch = load_batch(dataset, list(range(start, min(start + batch_size, n))), traits)
        H, W = batch.images01.shape[-2:]
        patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
        radius = point_radius or (float(patch[0] if isinstance(patch, (tuple, list)) else patch) if patch else H / 16)
        parts = _part_masks(batch, radius)
        x = normalize(model, batch.images01.to(device))
        tgt = batch.labels.to(device) if target == "label" and batch.labels is not None else None
        exp = explain(model, x, method=method, target=tgt, **(method_options or {}))
        pos = raw_pixel_maps(exp)[:, 0].detach().double().cpu().clamp_min(0)
        shares = _shares(pos, parts)
        labels = exp.targets[:, 0].cpu()
        for b in range(shares.shape[0]):
            per_class.setdefault(int(labels[b]), []).append(shares[b])
        if exp.head_maps is not None:
            heads = exp.head_maps[:, 0].detach().double().cpu()  # [B,R,g_h,g_w]
            up = upsample_maps(heads, (H, W), "nearest").clamp_min(0)
            per_head.append(_shares(up, parts))
    cols = [*names[: parts.shape[1]], "background"]
    rows = []
    for c in sorted(per_class):
        mean = torch.stack(per_class[c]).nanmean(0)
        row: dict[str, Any] = {"class": classes[c] if c < len(classes) else str(c), "n": len(per_class[c]),
                               **{p: float(v) for p, v in zip(cols, mean, strict=True)}}
        row["top_part"] = cols[int(torch.nan_to_num(mean, nan=-1.0).argmax())]
        if traits is not None:
            expected = sorted({traits.slot_parts[slot] for _, slot in traits.siblings.get(c, [])})
            row["expected"] = ", ".join(expected)
            row["hit"] = row["top_part"] in expected
        rows.append(row)
    head_rows = []
    if per_head:
        mean = torch.cat(per_head).nanmean(0)  # [R, P+1]
        for r, v in enumerate(mean):
            head_rows.append({"head_index": r, **{p: float(x) for p, x in zip(cols, v, strict=True)},
                              "top_part": cols[int(torch.nan_to_num(v, nan=-1.0).argmax())]})
    return TraitReport(cols, rows, head_rows, _figure(cols, rows, head_rows, method))


def _figure(cols: list[str], rows: list[dict[str, Any]], head_rows: list[dict[str, Any]], method: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from traitlens.viz import figure_png

    panels = [("class", rows)] + ([("head_index", head_rows)] if head_rows else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 0.35 * max(len(rows), 4) + 1.5),
                             squeeze=False)
    for ax, (key, table) in zip(axes[0], panels, strict=True):
        data = np.array([[r[c] for c in cols] for r in table], dtype=float)
        im = ax.imshow(np.nan_to_num(data), cmap="viridis", vmin=0, vmax=max(1e-9, np.nanmax(data)), aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(table)), [str(r[key]) for r in table], fontsize=6)
        for i, r in enumerate(table):
            for part in str(r.get("expected", "")).split(", "):
                if part in cols:  # mark the parts that should matter (TraitShapes)
                    ax.add_patch(plt.Rectangle((cols.index(part) - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1))
        ax.set_title(f"share of positive {method} saliency per part (per {key.split('_')[0]})", fontsize=8)
        fig.colorbar(im, ax=ax, fraction=0.04)
    fig.tight_layout()
    return figure_png(fig)
