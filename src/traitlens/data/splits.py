"""Train / validation / test splits of a data folder, with a validation split carved from train when it has none.

Model selection must never see the test images: CUB-200-2011 ships train and test only, and so do many ImageFolder
trees (``train/`` + ``test/``). ``open_splits`` then holds out a seeded, stratified fraction of the training images
for validation (``stratified_split``), and keeps the test split for one final score. A ``val/`` folder, where there
is one, is the validation split.

Example:
    >>> splits = open_splits("data/CUB_200_2011", size=(224, 224), val_fraction=0.1)  # doctest: +SKIP
    >>> splits.summary()["validation"]["source"]  # doctest: +SKIP
    'carved from train'
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from traitlens.data.errors import DataError
from traitlens.data.folders import CUBDataset, ImageFolderDataset
from traitlens.data.layout import detect_layout, split_folders
from traitlens.data.transforms import Resize

__all__ = ["DataSplits", "SubsetDataset", "open_splits", "stratified_split"]

FileDataset = CUBDataset | ImageFolderDataset


def stratified_split(labels: Sequence[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Positions of `labels` split into (kept, held out), `fraction` of every class held out.

    A class of n items holds out ⌊fraction·n + ½⌋ of them, clipped to 1 … n − 1 so that every class with two or
    more items is on both sides; a class with one item stays whole on the kept side. Which items: one permutation
    per class, in label order, from numpy's ``default_rng(seed)``. Both lists are sorted.

    Raises:
        ValueError: `fraction` is not strictly between 0 and 1.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1 (exclusive), got {fraction}")
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for position, label in enumerate(labels):
        by_class.setdefault(int(label), []).append(position)
    held: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        n = len(members)
        k = min(max(math.floor(fraction * n + 0.5), 1), n - 1)
        held += [members[i] for i in rng.permutation(n)[:k]]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


class SubsetDataset(Dataset):
    """The items `indices` of a file data set, with its class names (what `fit` fingerprints and reports)."""

    def __init__(self, base: FileDataset, indices: Sequence[int], name: str) -> None:
        self.base, self.indices, self.name = base, list(indices), name
        self.classes = list(base.classes)
        self.num_classes = len(self.classes)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.base[self.indices[index]]

    @property
    def targets(self) -> list[int]:
        """The label of every item, in item order."""
        labels = self.base.targets
        return [labels[i] for i in self.indices]

    @property
    def files(self) -> list[str]:
        """Every item's path relative to the base data set's image folder."""
        files = self.base.files
        return [files[i] for i in self.indices]

    def __repr__(self) -> str:
        return f"SubsetDataset({self.name!r}, {len(self)} of {len(self.base)} images of {self.base!r})"


@dataclass
class DataSplits:
    """The splits of one data folder.

    Attributes:
        train: the training images (without the held-out validation images when those were carved from train).
        val: the images to select the checkpoint on; None with ``val_fraction=0`` and no ``val/`` folder.
        test: the test split, to be scored once at the end; None when the folder has none.
        layout: ``detect_layout`` of the folder.
        val_source: "val/ folder", "carved from train" or "none".
        val_fraction, seed: how a carved validation split was drawn (``stratified_split``).
    """

    train: FileDataset | SubsetDataset
    val: FileDataset | SubsetDataset | None
    test: FileDataset | None
    layout: str
    val_source: str
    val_fraction: float = 0.0
    seed: int = 0

    @property
    def classes(self) -> list[str]:
        """The class names, shared by every split."""
        return list(self.train.classes)

    def describe(self) -> str:
        """One line for the log: where validation comes from and which split is scored at the end."""
        n_val = len(self.val) if self.val is not None else 0
        if self.val_source == "carved from train":
            val = (f"validation: {n_val} images ({self.val_fraction:.0%} of every class, seed {self.seed}) held out "
                   f"of the training split, {len(self.train)} left to train on")
        elif self.val_source == "none":
            val = "no validation split: the last epoch is kept"
        else:
            val = f"validation: the val/ folder ({n_val} images); {len(self.train)} training images"
        test = (f"the test split ({len(self.test)} images) is scored once, for the selected checkpoint"
                if self.test is not None else "no test split")
        return f"{val}; {test}"

    def summary(self) -> dict[str, Any]:
        """What a run records about its data: the layout, the split sizes and which images validated it."""
        val: dict[str, Any] = {"source": self.val_source, "images": len(self.val) if self.val is not None else 0}
        if self.val_source == "carved from train":
            val.update(fraction=self.val_fraction, seed=self.seed, rule="stratified_split")
        if self.val is not None:
            val["files"] = self.val.files
        return {"layout": self.layout, "classes": len(self.classes), "train_images": len(self.train),
                "validation": val, "test_images": len(self.test) if self.test is not None else None}


def _same_classes(reference: ImageFolderDataset, other: ImageFolderDataset) -> None:
    """Labels are positions in the sorted folder list: a split with other class folders would shift them."""
    if other.folders != reference.folders:
        missing = sorted(set(reference.folders) - set(other.folders))
        extra = sorted(set(other.folders) - set(reference.folders))
        raise DataError(f"{other.root} has other class folders than {reference.root} (missing {missing[:5]}, "
                        f"extra {extra[:5]}); every split needs the same class folders")


def open_splits(root: str | Path, size: tuple[int, int] | None = None, val_fraction: float = 0.1,
                seed: int = 0) -> DataSplits:
    """Open a CUB-layout folder or an ImageFolder tree as train / validation / test.

    - CUB layout: ``train_test_split.txt``'s train and test; validation carved from train.
    - ImageFolder ``train/`` (+ ``val/``) (+ ``test/``): ``val/`` validates when present, else it is carved from
      ``train/``; ``test/`` is the test split.
    - ImageFolder of class folders only: all of it is training data; validation carved from it; no test split.

    Args:
        root: the data folder.
        size: (H, W) every image is resized to; None keeps the file sizes (enough to read the classes).
        val_fraction: the share of every class held out for validation when there is no ``val/``; 0 holds out
            nothing (then nothing validates and a run keeps its last epoch).
        seed: the seed of the held-out draw (`stratified_split`); the same seed gives the same split.

    Raises:
        DataError: not a recognised layout, a split tree without ``train/``, or splits with other class folders.
        ValueError: `val_fraction` outside [0, 1).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"the validation fraction must be in [0, 1), got {val_fraction}")
    root = Path(root)
    resize = Resize(size) if size is not None else None
    layout = detect_layout(root)
    val: FileDataset | None = None
    test: FileDataset | None = None
    full: FileDataset
    if layout == "cub":
        full = CUBDataset(root, split="train", transform=resize, with_masks=False)
        cub_test = CUBDataset(root, split="test", transform=resize, with_masks=False)
        test = cub_test if len(cub_test) else None
    elif layout == "imagefolder-splits":
        names = split_folders(root)
        if "train" not in names:
            raise DataError(f"{root} has the split folders {names} but no train/; training needs train/")
        image_folder = ImageFolderDataset(root, "train", transform=resize)
        for split in ("val", "test"):
            if split in names:
                other = ImageFolderDataset(root, split, transform=resize)
                _same_classes(image_folder, other)
                val, test = (other, test) if split == "val" else (val, other)
        full = image_folder
    else:
        full = ImageFolderDataset(root, transform=resize)
    if val is not None:
        return DataSplits(full, val, test, layout, "val/ folder")
    if val_fraction == 0.0:
        return DataSplits(full, None, test, layout, "none")
    kept, held = stratified_split(full.targets, val_fraction, seed)
    if not held:
        raise DataError(f"{root}: no class has two training images, so none can be held out for validation; add "
                        "images, a val/ folder, or pass a validation fraction of 0")
    return DataSplits(SubsetDataset(full, kept, "train"), SubsetDataset(full, held, "val"), test, layout,
                      "carved from train", val_fraction, seed)
