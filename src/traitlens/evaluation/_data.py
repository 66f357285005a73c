"""Batches for evaluation: images, labels and every annotation a metric may read, from dataset dicts.

TraitShapes datasets (anything with a `TraitShapesConfig` as `.config`) also yield, per image, the sibling classes
of its class, the sibling-discriminative masks M_{c,c′} and the class mask (datasets.md "TraitShapes").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["Batch", "TraitInfo", "load_batch", "trait_info"]


@dataclass(frozen=True)
class TraitInfo:
    """Sibling structure of a TraitShapes config.

    Attributes:
        config: the `TraitShapesConfig`.
        siblings: class → [(sibling class, differing slot index)].
        defining_slots: the slots that vary between classes (their union is the class mask).
        class_names: readable class names.
    """

    config: Any
    siblings: dict[int, list[tuple[int, int]]]
    defining_slots: list[int]
    class_names: list[str]

    @property
    def max_siblings(self) -> int:
        return max((len(v) for v in self.siblings.values()), default=0)


def trait_info(dataset: Dataset) -> TraitInfo | None:
    """The sibling structure when `dataset` is TraitShapes (has a `TraitShapesConfig` as `.config`), else None."""
    from traitlens.data.traitshapes import TraitShapesConfig, class_names, class_traits, sibling_pairs

    config = getattr(dataset, "config", None)
    if not isinstance(config, TraitShapesConfig):
        return None
    sib: dict[int, list[tuple[int, int]]] = {c: [] for c in range(config.num_classes)}
    for a, b, slot in sibling_pairs(config):
        sib[a].append((b, slot))
        sib[b].append((a, slot))
    traits = class_traits(config)
    defining = [j for j in range(len(config.slots)) if len({t[j] for t in traits}) > 1]
    return TraitInfo(config, sib, defining, class_names(config))


@dataclass
class Batch:
    """One evaluation batch (images in [0,1]; the caller normalises them for the model).

    Attributes:
        indices: [B] dataset indices.
        images01: [B,3,H,W] in [0,1].
        labels: [B] or None.
        masks: [B,H,W] object masks (from `mask`, else rasterised `box`) or None.
        boxes: per image [n,4] xyxy or None.
        part_masks: [B,n_parts,H,W] or None.
        siblings: [B,S] sibling classes (−1 pads) or None.
        disc_masks: [B,S,H,W] sibling-discriminative masks or None.
        class_masks: [B,H,W] or None.
        parts: [B,n_parts,3] part points (x, y, visible) or None.
    """

    indices: torch.Tensor
    images01: torch.Tensor
    labels: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    boxes: list[torch.Tensor] | None = None
    part_masks: torch.Tensor | None = None
    siblings: torch.Tensor | None = None
    disc_masks: torch.Tensor | None = None
    class_masks: torch.Tensor | None = None
    parts: torch.Tensor | None = None


def load_batch(dataset: Dataset, indices: Sequence[int], traits: TraitInfo | None = None) -> Batch:
    """Read `indices` from `dataset` (dict items) into a `Batch`."""
    from traitlens.metrics._common import boxes_to_masks

    items = [dataset[i] for i in indices]
    first = items[0]
    images = torch.stack([it["image"].float() for it in items])
    H, W = images.shape[-2:]
    labels = torch.stack([torch.as_tensor(it["label"]).long() for it in items]) if "label" in first else None
    boxes = [torch.as_tensor(it["box"], dtype=torch.float32).view(-1, 4) for it in items] if "box" in first else None
    if "mask" in first:
        masks = torch.stack([torch.as_tensor(it["mask"]).bool().view(H, W) for it in items])
    elif boxes is not None:
        masks = boxes_to_masks(boxes, (H, W))
    else:
        masks = None
    part_masks = torch.stack([it["part_masks"].bool() for it in items]) if "part_masks" in first else None
    parts = torch.stack([torch.as_tensor(it["parts"]).float() for it in items]) if "parts" in first else None
    batch = Batch(torch.as_tensor(list(indices), dtype=torch.long), images, labels, masks, boxes, part_masks,
                  parts=parts)
    if traits is not None and "trait_masks" in first and labels is not None:
        S = max(traits.max_siblings, 1)
        sib = torch.full((len(items), S), -1, dtype=torch.long)
        disc = torch.zeros(len(items), S, H, W, dtype=torch.bool)
        cls = torch.zeros(len(items), H, W, dtype=torch.bool)
        for b, it in enumerate(items):
            tm = it["trait_masks"].bool()
            for s, (other, slot) in enumerate(traits.siblings[int(labels[b])]):
                sib[b, s] = other
                disc[b, s] = tm[slot]  # siblings differ in exactly this one slot
            cls[b] = tm[traits.defining_slots].any(0)
        batch.siblings, batch.disc_masks, batch.class_masks = sib, disc, cls
    return batch
