""""Why A, not B": contrast maps (target A minus target B) for any class-specific method, scored against the
TraitShapes sibling-discriminative mask (metrics.md §6 "TraitShapes discriminative precision")."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence, Sized
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import Dataset

from traitlens.backbones.preprocess import normalize
from traitlens.evaluation._data import load_batch, trait_info
from traitlens.explain import Explanation, explain, get_method, list_methods
from traitlens.metrics import dilate as _dilate
from traitlens.metrics import energy_share, raw_pixel_maps

__all__ = ["ContrastScores", "contrast_explanation", "score_contrast"]

log = logging.getLogger(__name__)


def contrast_explanation(
    model: nn.Module,
    images: torch.Tensor,
    target_a: torch.Tensor | int | Sequence[int],
    target_b: torch.Tensor | int | Sequence[int],
    method: str = "cdam",
    **options: Any,
) -> Explanation:
    """The contrast map s_A − s_B ("why A, not B") of a class-specific method.

    Both maps come from one `explain` call with K = 2 targets and are compared un-normalised (the raw patch maps,
    upsampled with the method's default mode), so they share a scale. The result is signed: positive where the
    evidence favours A over B.

    Args:
        images: [B,3,H,W] in the model's input space.
        target_a, target_b: a class id, or one per image.
        method: a class-specific registry method (class-agnostic methods give an all-zero contrast).

    Returns:
        An `Explanation` with `maps` [B,1,H,W] = raw(A) − raw(B), `patch_maps` likewise, `targets` = A and
        `extras['contrast_with']` = B.
    """
    info = get_method(method)
    if not info.class_specific:
        log.warning("%s is not class-specific: its contrast maps are all zero", method)
    B = images.shape[0]

    def column(t: Any) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.long, device=images.device)
        return t.expand(B) if t.dim() == 0 else t.view(B)

    a, b = column(target_a), column(target_b)
    exp = explain(model, images, method=method, target=torch.stack([a, b], 1), **options)
    raw = raw_pixel_maps(exp)
    maps = raw[:, :1] - raw[:, 1:2]
    patch = exp.patch_maps[:, :1] - exp.patch_maps[:, 1:2]
    return Explanation(maps=maps, patch_maps=patch, targets=a.view(B, 1), method=f"{method}:contrast", signed=True,
                       logits=exp.logits, extras={"contrast_with": b.view(B, 1), "raw_pixel_maps": maps})


@dataclass
class ContrastScores:
    """Per method: how much of the positive evidence lies on the trait that separates the class from its siblings.

    Attributes:
        rows: method, contrast_energy, plain_energy, contrast_pg, plain_pg, n_pairs (means over (image, sibling)
            pairs with a non-empty discriminative mask).
        png: example figure (image, map A, map B, A − B with the discriminative mask outlined), or b"".
    """

    rows: list[dict[str, Any]]
    png: bytes


def score_contrast(
    model: nn.Module,
    dataset: Dataset,
    methods: Sequence[str] | None = None,
    *,
    n_images: int = 64,
    batch_size: int = 16,
    tol: float = 0,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    n_figure: int = 3,
) -> ContrastScores:
    """Score contrast maps against TraitShapes sibling-discriminative masks M_{c,c′}.

    For every image (class c = its label) and sibling c′: contrast_energy = share of (s_c − s_{c′})⁺ inside
    M_{c,c′}, plain_energy = share of s_c⁺ inside M_{c,c′}, and the pointing game (tolerance `tol` px) of each.

    Args:
        methods: class-specific registry methods; default all class-specific ViT methods.
    """
    traits = trait_info(dataset)
    if traits is None:
        raise ValueError("score_contrast needs a TraitShapes dataset (a TraitShapesConfig as .config, or its CUB "
                         "export read back with traits.json)")
    method_options = method_options or {}
    names = list(methods) if methods is not None else [m.name for m in list_methods(family="vit")
                                                        if m.class_specific and m.name != "native"]
    device = next(model.parameters()).device
    n = min(n_images, len(cast(Sized, dataset)))
    sums: dict[str, dict[str, list[float]]] = {m: {k: [] for k in ("ce", "pe", "cp", "pp")} for m in names}
    example: dict[str, Any] = {}
    for start in range(0, n, batch_size):
        batch = load_batch(dataset, list(range(start, min(start + batch_size, n))), traits)
        x = normalize(model, batch.images01.to(device))
        siblings, labels, disc_masks = batch.siblings, batch.labels, batch.disc_masks
        if siblings is None or labels is None or disc_masks is None:
            raise ValueError("score_contrast needs labelled items with TraitShapes trait masks")
        S = siblings.shape[1]
        targets = torch.cat([labels.view(-1, 1), siblings.clamp_min(0)], 1).to(device)
        for name in names:
            exp = explain(model, x, method=name, target=targets, **method_options.get(name, {}))
            raw = raw_pixel_maps(exp).detach().double().cpu()
            s_c = raw[:, :1]
            contrast = s_c - raw[:, 1:]
            dm = disc_masks & (siblings >= 0)[..., None, None]
            ce = energy_share(contrast.clamp_min(0), dm)
            pe = energy_share(s_c.clamp_min(0).expand_as(contrast), dm)
            near = _dilate(dm, tol).flatten(-2)
            cp = near.gather(-1, contrast.flatten(-2).argmax(-1, keepdim=True)).squeeze(-1).double()
            pp = near.gather(-1, s_c.expand_as(contrast).flatten(-2).argmax(-1, keepdim=True)).squeeze(-1).double()
            valid = dm.flatten(-2).any(-1)
            for key, v in (("ce", ce), ("pe", pe), ("cp", cp), ("pp", pp)):
                sums[name][key].extend(v[valid].tolist())
            if not example.get(name) and start == 0:
                example[name] = (batch.images01[:n_figure], s_c[:n_figure, 0], raw[:n_figure, 1],
                                 contrast[:n_figure, 0], dm[:n_figure, 0], S)
    rows = []
    for name in names:
        s = sums[name]
        rows.append({"method": name, "contrast_energy": float(np.nanmean(s["ce"])) if s["ce"] else float("nan"),
                     "plain_energy": float(np.nanmean(s["pe"])) if s["pe"] else float("nan"),
                     "contrast_pg": float(np.nanmean(s["cp"])) if s["cp"] else float("nan"),
                     "plain_pg": float(np.nanmean(s["pp"])) if s["pp"] else float("nan"), "n_pairs": len(s["cp"])})
    png = _figure(example, traits.class_names, dataset, n_figure) if n_figure and example else b""
    return ContrastScores(rows, png)


def _figure(example: dict[str, Any], class_names: list[str], dataset: Dataset, n: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from traitlens.viz import figure_png, overlay, to_uint8_image

    names = list(example)
    rows = min(n, example[names[0]][0].shape[0])
    fig, axes = plt.subplots(rows * len(names), 4, figsize=(7, 1.8 * rows * len(names)), squeeze=False)
    for mi, name in enumerate(names):
        imgs, a, b, c, dm, _ = example[name]
        for r in range(rows):
            ax = axes[mi * rows + r]
            ax[0].imshow(to_uint8_image(imgs[r]))
            ax[0].set_ylabel(name, fontsize=7)
            ax[1].imshow(overlay(imgs[r], a[r], signed=True))
            ax[2].imshow(overlay(imgs[r], b[r], signed=True))
            ax[3].imshow(overlay(imgs[r], c[r], signed=True))
            ax[3].contour(dm[r].numpy().astype(float), levels=[0.5], colors="lime", linewidths=0.8)
            for j, t in enumerate(("image", "class A", "sibling B", "A − B (mask: green)")):
                if r == 0 and mi == 0:
                    ax[j].set_title(t, fontsize=7)
            for a_ in ax:
                a_.set_xticks([])
                a_.set_yticks([])
    return figure_png(fig)
