"""TraitShapes as torch datasets: rendered on access, or materialised once into memory."""

from __future__ import annotations

import copy
import multiprocessing
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from traitlens.data.traitshapes.classes import class_names
from traitlens.data.traitshapes.config import PART_NAMES, TraitShapesConfig
from traitlens.data.traitshapes.render import render
from traitlens.data.traitshapes.sample import TraitShapesSample, _part_masks, _slot_part_index

__all__ = ["InMemoryDataset", "TraitShapes", "materialize"]


def _item(
    image: torch.Tensor,
    owner: torch.Tensor,
    label: int,
    traits: torch.Tensor,
    box: torch.Tensor,
    parts: torch.Tensor,
    index: int,
    slots: tuple[str, ...],
) -> dict[str, Any]:
    """The dataset dict shared by ``TraitShapes`` and ``InMemoryDataset`` (image uint8 [3,H,W])."""
    part_masks = _part_masks(owner)
    return {
        "image": image.float().div_(255.0),
        "label": torch.tensor(label, dtype=torch.int64),
        "index": index,
        "box": box,
        "parts": parts,
        "part_masks": part_masks,
        "trait_masks": part_masks[_slot_part_index(slots)],
        "mask": (owner > 0)[None],
        "traits": traits,
    }


class TraitShapes(Dataset):
    """TraitShapes as a map-style dataset; images render on access (see ``materialize``).

    Items are dicts: ``image`` float32 [3,H,W] in [0,1] (not normalised), ``label`` int64,
    ``index``, ``box`` float32 xyxy, ``parts`` float32 [n_parts,3], ``part_masks`` bool
    [n_parts,H,W], ``trait_masks`` bool [n_slots,H,W], ``mask`` bool [1,H,W] foreground and
    ``traits`` int64 [n_slots].

    Args:
        config: what to generate.
        split: split name (seeds the images; "train" and "test" never share an image).
        length: number of images.
        transform: optional callable on the item dict (see ``traitlens.data.transforms``).
    """

    def __init__(
        self,
        config: TraitShapesConfig | None = None,
        split: str = "train",
        length: int = 10_000,
        transform: Any = None,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.config = config or TraitShapesConfig()
        self.split = split
        self.length = length
        self.transform = transform
        self.classes = class_names(self.config)
        self.num_classes = self.config.num_classes

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> TraitShapesSample:
        """The untransformed sample of ``index`` as numpy arrays."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        return render(self.config, index, self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.raw(index)
        item = _item(
            torch.from_numpy(s.image).permute(2, 0, 1),
            torch.from_numpy(s.owner),
            s.label,
            torch.tensor(s.traits, dtype=torch.int64),
            torch.tensor(s.box, dtype=torch.float32),
            torch.from_numpy(s.parts),
            index,
            self.config.slots,
        )
        return self.transform(item) if self.transform is not None else item


class InMemoryDataset(Dataset):
    """A materialised TraitShapes split: stacked uint8 tensors, same items as ``TraitShapes``.

    Attributes:
        images: uint8 [N, 3, H, W]. owners: uint8 [N, H, W] part-owner maps.
        labels: int64 [N]. traits: int64 [N, n_slots]. boxes: float32 [N, 4].
        parts: float32 [N, n_parts, 3]. indices: int64 [N] generator indices.
    """

    def __init__(
        self,
        config: TraitShapesConfig,
        split: str,
        arrays: Mapping[str, np.ndarray],
        transform: Any = None,
    ) -> None:
        self.config = config
        self.split = split
        self.transform = transform
        self.classes = class_names(config)
        self.num_classes = config.num_classes
        self.images = torch.from_numpy(np.ascontiguousarray(arrays["images"].transpose(0, 3, 1, 2)))
        self.owners = torch.from_numpy(arrays["owners"])
        self.labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        self.traits = torch.from_numpy(arrays["traits"].astype(np.int64))
        self.boxes = torch.from_numpy(arrays["boxes"].astype(np.float32))
        self.parts = torch.from_numpy(arrays["parts"].astype(np.float32))
        self.indices = torch.from_numpy(arrays["indices"].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, n: int) -> InMemoryDataset:
        """The first ``n`` samples as a split of their own (tensors shared, not copied)."""
        part = copy.copy(self)
        for name in ("images", "owners", "labels", "traits", "boxes", "parts", "indices"):
            setattr(part, name, getattr(self, name)[:n])
        return part

    def raw(self, index: int) -> TraitShapesSample:
        """The untransformed sample at position ``index`` as numpy arrays."""
        return TraitShapesSample(
            image=self.images[index].permute(1, 2, 0).numpy(),
            label=int(self.labels[index]),
            traits=tuple(int(t) for t in self.traits[index]),
            box=tuple(float(b) for b in self.boxes[index]),  # type: ignore[arg-type]
            owner=self.owners[index].numpy(),
            parts=self.parts[index].numpy(),
            slots=self.config.slots,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = _item(
            self.images[index],
            self.owners[index],
            int(self.labels[index]),
            self.traits[index],
            self.boxes[index],
            self.parts[index],
            int(self.indices[index]),
            self.config.slots,
        )
        return self.transform(item) if self.transform is not None else item


def _render_chunk(args: tuple[TraitShapesConfig, str, int, int]) -> dict[str, np.ndarray]:
    """Render indices [start, stop) into stacked arrays (a module-level function: spawn-safe)."""
    config, split, start, stop = args
    samples = [render(config, i, split) for i in range(start, stop)]
    return {
        "images": np.stack([s.image for s in samples]),
        "owners": np.stack([s.owner for s in samples]),
        "labels": np.asarray([s.label for s in samples], dtype=np.int64),
        "traits": np.asarray([s.traits for s in samples], dtype=np.int64),
        "boxes": np.asarray([s.box for s in samples], dtype=np.float32),
        "parts": np.stack([s.parts for s in samples]),
        "indices": np.arange(start, stop, dtype=np.int64),
    }


def materialize(
    dataset: TraitShapes, num_workers: int = 2, progress: bool = True, chunk_size: int = 256
) -> InMemoryDataset:
    """Render every item of ``dataset`` once, in parallel, into an ``InMemoryDataset``.

    About 10,000 64-px images take a few seconds on 2 cores. The dataset's transform is kept
    and applied on access, so random augmentations stay random per epoch.

    Args:
        dataset: the lazily rendered split.
        num_workers: worker processes; 0 renders in this process.
        progress: show a progress bar.
        chunk_size: indices per task.

    Returns:
        The in-memory split with identical items.
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    tasks = [(dataset.config, dataset.split, i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    bar = tqdm(total=n, desc=f"TraitShapes {dataset.split}", unit="img", disable=not progress)
    chunks = []
    if num_workers > 0 and len(tasks) > 1:
        with multiprocessing.get_context().Pool(num_workers) as pool:
            for chunk in pool.imap(_render_chunk, tasks):
                chunks.append(chunk)
                bar.update(len(chunk["labels"]))
    else:
        for task in tasks:
            chunks.append(_render_chunk(task))
            bar.update(task[3] - task[2])
    bar.close()
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else _empty(dataset.config)
    return InMemoryDataset(dataset.config, dataset.split, arrays, transform=dataset.transform)


def _empty(config: TraitShapesConfig) -> dict[str, np.ndarray]:
    n, p, s = config.size, len(PART_NAMES), len(config.slots)
    return {
        "images": np.zeros((0, n, n, 3), np.uint8),
        "owners": np.zeros((0, n, n), np.uint8),
        "labels": np.zeros(0, np.int64),
        "traits": np.zeros((0, s), np.int64),
        "boxes": np.zeros((0, 4), np.float32),
        "parts": np.zeros((0, p, 3), np.float32),
        "indices": np.zeros(0, np.int64),
    }
