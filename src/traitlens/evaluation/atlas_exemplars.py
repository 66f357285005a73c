"""The exemplars of the atlas: a few correctly classified images per class, explained once more for the overlays.

Per exemplar of class A: the image, the map of A, the contrast A − B for each class B that A is most confused
with, and, for models with per-head maps, each head's map in ranked order: by blurring for Prompt-CAM (models.md
§1.5, the full order of `rank_heads` with k = 0), by head index otherwise (INTR defines no ranking).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import Dataset

from traitlens.backbones.preprocess import normalize
from traitlens.evaluation._data import TraitInfo, load_batch
from traitlens.evaluation.atlas_types import Atlas, Exemplar
from traitlens.explain import explain
from traitlens.metrics import raw_pixel_maps
from traitlens.viz import overlay, to_uint8_image

__all__ = ["add_exemplars", "png_bytes"]


def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 [H,W,3] array as PNG bytes (no metadata: the same pixels give the same bytes)."""
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


class _Items(Dataset):
    """Already-read items as a dataset (so `load_batch` does not read them again)."""

    def __init__(self, items: Sequence[dict[str, Any]]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.items[i]


def _name(item: Mapping[str, Any], index: int) -> str:
    path = item.get("path")
    return Path(str(path)).name if path else f"image {index}"


def _head_order(model: nn.Module, x: torch.Tensor, target: int, n_heads: int) -> tuple[list[list[int]], str]:
    from traitlens.models.head_ranking import rank_heads
    from traitlens.models.promptcam import PromptCAM

    if isinstance(model, PromptCAM):
        return rank_heads(model, x, target, k=0).order.tolist(), "blurring"
    return [list(range(n_heads)) for _ in range(x.shape[0])], "index"


def add_exemplars(res: Atlas, model: nn.Module, device: torch.device, dataset: Dataset,
                  records: list[dict[str, torch.Tensor]], traits: TraitInfo | None, n: int,
                  options: Mapping[str, Any]) -> None:
    """Fill `exemplars` of every class of `res` (and `res.images`, `res.head_ranking`) in place.

    The exemplars of class A are its first `n` correctly classified images in pass order; each class is one
    explanation call with the targets [A, B₁, …] (B = A's confused classes when contrast maps are on).
    """
    indices = torch.cat([r["indices"] for r in records])
    labels, preds = torch.cat([r["labels"] for r in records]), torch.cat([r["preds"] for r in records])
    probs = torch.cat([r["probs"] for r in records])
    for row in res.classes:
        a = row.index
        pos = ((labels == a) & (preds == a)).nonzero().flatten()[:n].tolist()
        if not pos or n <= 0:
            continue
        idx = [int(indices[p]) for p in pos]
        items = [dataset[i] for i in idx]
        batch = load_batch(_Items(items), list(range(len(items))), traits)
        x = normalize(model, batch.images01.to(device))
        others = [p.other for p in row.confused] if res.contrast else []
        target = torch.tensor([[a, *others]] * len(idx), device=device)
        exp = explain(model, x, method=res.method, target=target, **options)
        raw = raw_pixel_maps(exp).detach().double().cpu() if others else None
        if exp.head_maps is not None:
            order, res.head_ranking = _head_order(model, x, a, exp.head_maps.shape[2])
        for b, (i, p) in enumerate(zip(idx, pos, strict=True)):
            img = batch.images01[b]
            ex = Exemplar(i, _name(items[b], i), float(probs[p, a]))
            base = f"exemplars/c{a:04d}/i{i:07d}"

            def put(role: str, array: np.ndarray, base: str = base) -> str:
                rel = f"{base}-{role}.png"
                res.images[rel] = png_bytes(array)
                return rel

            ex.files["image"] = put("image", to_uint8_image(img))
            ex.files["map"] = put("map", overlay(img, exp.maps[b, 0].cpu(), signed=exp.signed))
            for j, other in enumerate(others):
                assert raw is not None
                ex.files[f"contrast-{other}"] = put(f"contrast-{other}", overlay(img, raw[b, 0] - raw[b, 1 + j],
                                                                                   signed=True))
            if exp.head_maps is not None:
                heads = exp.head_maps[b, 0].detach().float().cpu()
                ex.heads = [(r, put(f"head-{r:02d}", overlay(img, heads[r]))) for r in order[b]]
            row.exemplars.append(ex)
