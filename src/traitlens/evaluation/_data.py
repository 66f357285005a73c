"""Batches for evaluation: images, labels and every annotation a metric may read, from dataset dicts.

TraitShapes datasets (a `TraitShapesConfig` as `.config`, or the CUB export read back by `CUBDataset`, whose
`trait_table` comes from `traits.json`) also yield, per image, the sibling classes of its class, the
sibling-discriminative masks M_{c,c′} and the class mask (datasets.md "TraitShapes").

Multi-label datasets (metrics.md §3.1: "every present class is a target") give items a multi-hot `labels` [C]
instead of `label`, with either `mask` holding one mask per present class (ascending class order; [C,H,W] with
one per class is accepted too) or `box` [n,4] with the class id of each box in `box_labels` [n].
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["Batch", "TraitInfo", "load_batch", "trait_info"]


@dataclass(frozen=True)
class TraitInfo:
    """Sibling structure of a TraitShapes class trait table.

    Attributes:
        slots: trait slot names.
        slot_parts: the part carrying each slot (its trait mask), e.g. "head".
        class_traits: class → value index per slot.
        siblings: class → [(sibling class, differing slot index)], pairs in ascending (a, b) order.
        defining_slots: the slots that vary between classes (their union is the class mask).
        class_names: readable class names.
    """

    slots: tuple[str, ...]
    slot_parts: tuple[str, ...]
    class_traits: tuple[tuple[int, ...], ...]
    siblings: dict[int, list[tuple[int, int]]]
    defining_slots: list[int]
    class_names: list[str]

    @property
    def max_siblings(self) -> int:
        return max((len(v) for v in self.siblings.values()), default=0)


def _from_table(slots: Sequence[str], slot_parts: Sequence[str], table: Sequence[Sequence[int]],
                names: Sequence[str]) -> TraitInfo:
    """Siblings (classes differing in exactly one slot) and defining slots of a class trait table."""
    rows = tuple(tuple(int(v) for v in row) for row in table)
    sib: dict[int, list[tuple[int, int]]] = {c: [] for c in range(len(rows))}
    for a, b in itertools.combinations(range(len(rows)), 2):
        diff = [j for j, (u, v) in enumerate(zip(rows[a], rows[b], strict=True)) if u != v]
        if len(diff) == 1:
            sib[a].append((b, diff[0]))
            sib[b].append((a, diff[0]))
    defining = [j for j in range(len(slots)) if len({row[j] for row in rows}) > 1]
    return TraitInfo(tuple(slots), tuple(slot_parts), rows, sib, defining, list(names))


def trait_info(dataset: Dataset) -> TraitInfo | None:
    """The sibling structure of a TraitShapes dataset, else None.

    Read from the generator config (`dataset.config`) or, for the CUB export read back from disk, from the exported
    class trait table (`dataset.trait_table`), so both give the same siblings and masks.
    """
    from traitlens.data.traitshapes import SLOT_PARTS, TraitShapesConfig, class_names, class_traits

    config = getattr(dataset, "config", None)
    if isinstance(config, TraitShapesConfig):
        return _from_table(config.slots, [SLOT_PARTS[s] for s in config.slots], class_traits(config),
                           class_names(config))
    table = getattr(dataset, "trait_table", None)
    if table is not None:
        return _from_table(table.slots, [table.slot_parts[s] for s in table.slots], table.class_traits,
                           getattr(dataset, "classes", [str(c) for c in range(len(table.class_traits))]))
    return None


@dataclass
class Batch:
    """One evaluation batch (images in [0,1]; the caller normalises them for the model).

    Attributes:
        indices: [B] dataset indices.
        images01: [B,3,H,W] in [0,1].
        labels: [B] or None (also None for multi-label data).
        masks: [B,H,W] object masks (from `mask`, else rasterised `box`; multi-label: the union of the present
            classes) or None.
        boxes: per image [n,4] xyxy or None.
        part_masks: [B,n_parts,H,W] or None.
        siblings: [B,S] sibling classes (−1 pads) or None.
        disc_masks: [B,S,H,W] sibling-discriminative masks or None.
        class_masks: [B,H,W] or None.
        parts: [B,n_parts,3] part points (x, y, visible) or None.
        present: multi-label only: [B,K] present classes in ascending order (−1 pads) or None.
        present_masks: multi-label only: [B,K,H,W] the mask of each present class (empty for pads) or None.
        box_labels: multi-label only: per image the [n] class id of each box, or None.
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
    present: torch.Tensor | None = None
    present_masks: torch.Tensor | None = None
    box_labels: list[torch.Tensor] | None = None

    @property
    def multi_label(self) -> bool:
        return self.present is not None


def _present_classes(items: Sequence[dict[str, Any]]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """([B,K] present class ids, −1 pads; per image its class ids) from multi-hot `labels`."""
    ids = [torch.as_tensor(it["labels"]).flatten().gt(0).nonzero().flatten() for it in items]
    present = torch.full((len(items), max([len(i) for i in ids] + [1])), -1, dtype=torch.long)
    for b, i in enumerate(ids):
        present[b, : len(i)] = i
    return present, ids


def _present_masks(items: Sequence[dict[str, Any]], ids: list[torch.Tensor], K: int, size: tuple[int, int],
                   boxes: list[torch.Tensor] | None) -> tuple[torch.Tensor | None, list[torch.Tensor] | None]:
    """Per-present-class masks [B,K,H,W] from `mask` (one per present class, or one per class) or from boxes with
    `box_labels`; also the box class ids. (None, None) when neither is given."""
    from traitlens.metrics import boxes_to_masks

    H, W = size
    box_labels = ([torch.as_tensor(it["box_labels"]).long().flatten() for it in items]
                  if "box_labels" in items[0] else None)
    if "mask" not in items[0] and (boxes is None or box_labels is None):
        return None, box_labels
    out = torch.zeros(len(items), K, H, W, dtype=torch.bool)
    for b, it in enumerate(items):
        if "mask" in it:
            m = torch.as_tensor(it["mask"]).bool().reshape(-1, H, W)
            n_classes = torch.as_tensor(it["labels"]).numel()
            if m.shape[0] == n_classes and m.shape[0] != len(ids[b]):
                m = m[ids[b]]
            if m.shape[0] != len(ids[b]):
                raise ValueError(f"multi-label item {it.get('index', b)}: 'mask' has {m.shape[0]} channels; give one "
                                 f"per present class ({len(ids[b])}) or one per class ({n_classes})")
            out[b, : len(ids[b])] = m
        else:
            if boxes is None or box_labels is None:
                raise ValueError(f"multi-label item {it.get('index', b)} has no 'mask', and not every item has "
                                 "'box' and 'box_labels'")
            if len(box_labels[b]) != len(boxes[b]):
                raise ValueError(f"multi-label item {it.get('index', b)}: {len(boxes[b])} boxes but "
                                 f"{len(box_labels[b])} box_labels")
            for k, c in enumerate(ids[b].tolist()):
                out[b, k] = boxes_to_masks([boxes[b][box_labels[b] == c]], (H, W))[0]
    return out, box_labels


def load_batch(dataset: Dataset, indices: Sequence[int], traits: TraitInfo | None = None) -> Batch:
    """Read `indices` from `dataset` (dict items) into a `Batch`."""
    from traitlens.metrics import boxes_to_masks

    items = [dataset[i] for i in indices]
    first = items[0]
    if "labels" in first and "label" in first:
        raise ValueError("dataset items carry both 'label' and multi-hot 'labels'; give one of them")
    images = torch.stack([it["image"].float() for it in items])
    H, W = images.shape[-2:]
    labels = torch.stack([torch.as_tensor(it["label"]).long() for it in items]) if "label" in first else None
    boxes = [torch.as_tensor(it["box"], dtype=torch.float32).view(-1, 4) for it in items] if "box" in first else None
    part_masks = torch.stack([it["part_masks"].bool() for it in items]) if "part_masks" in first else None
    parts = torch.stack([torch.as_tensor(it["parts"]).float() for it in items]) if "parts" in first else None
    batch = Batch(torch.as_tensor(list(indices), dtype=torch.long), images, labels, None, boxes, part_masks,
                  parts=parts)
    if "labels" in first:
        batch.present, ids = _present_classes(items)
        batch.present_masks, batch.box_labels = _present_masks(items, ids, batch.present.shape[1], (H, W), boxes)
        batch.masks = batch.present_masks.any(1) if batch.present_masks is not None else None
    elif "mask" in first:
        batch.masks = torch.stack([torch.as_tensor(it["mask"]).bool().view(H, W) for it in items])
    if batch.masks is None and boxes is not None:
        batch.masks = boxes_to_masks(boxes, (H, W))
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
