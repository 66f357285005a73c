"""Validation splits carved from train (never from test), the layouts `open_splits` reads, and one class-name rule."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traitlens.data import (
    CUBDataset,
    DataError,
    ImageFolderDataset,
    class_names_from_folders,
    open_splits,
    stratified_split,
)

BIRDS = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def write_png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, np.uint8)).save(path)


def write_cub(root: Path, folders: list[str], n_train: int, n_test: int) -> Path:
    """A CUB-200-2011 layout by hand: per class `n_train` training and `n_test` test images."""
    rows, labels, split = [], [], []
    for c, folder in enumerate(folders):
        for k in range(n_train + n_test):
            rel = f"{folder}/{folder.split('.')[-1]}_{k:04d}.png"
            write_png(root / "images" / rel, 10 * c + k)
            rows.append(rel)
            labels.append(c + 1)
            split.append(1 if k < n_train else 0)
    ids = range(1, len(rows) + 1)
    (root / "images.txt").write_text("".join(f"{i} {r}\n" for i, r in zip(ids, rows, strict=True)))
    (root / "image_class_labels.txt").write_text("".join(f"{i} {c}\n" for i, c in zip(ids, labels, strict=True)))
    (root / "train_test_split.txt").write_text("".join(f"{i} {s}\n" for i, s in zip(ids, split, strict=True)))
    (root / "classes.txt").write_text("".join(f"{c + 1} {f}\n" for c, f in enumerate(folders)))
    return root


def write_image_folder(root: Path, folders: list[str], counts: dict[str, int]) -> Path:
    for split, n in counts.items():
        for c, folder in enumerate(folders):
            for k in range(n):
                write_png(root / split / folder / f"{k}.png", 10 * c + k)
    return root


def test_stratified_split_by_hand() -> None:
    labels = [0] * 10 + [1] * 5 + [2] + [3] * 2
    kept, held = stratified_split(labels, 0.2, seed=0)
    # ⌊0.2·n + ½⌋ per class, clipped to 1 … n − 1: 10 → 2, 5 → 1, 1 → 0 (a single image stays in train), 2 → 1
    assert Counter(labels[i] for i in held) == {0: 2, 1: 1, 3: 1}
    assert sorted(kept + held) == list(range(len(labels))) and not set(kept) & set(held)
    assert stratified_split(labels, 0.2, seed=0) == (kept, held)  # seeded: the same split every time
    helds = {tuple(stratified_split(labels, 0.2, seed=s)[1]) for s in range(6)}
    assert len(helds) > 1  # and another seed draws other images
    _, most = stratified_split(labels, 0.9, seed=0)
    assert Counter(labels[i] for i in most) == {0: 9, 1: 4, 3: 1}  # at least one image of a class stays in train
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="between 0 and 1"):
            stratified_split(labels, bad)


def test_one_class_name_rule_for_both_loaders(tmp_path) -> None:
    """The CUB loader and an ImageFolder of the same class folders name the classes alike (issue 16.4)."""
    assert class_names_from_folders(BIRDS) == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert class_names_from_folders(["cat", "12.dog", "3.5mm jack"]) == ["cat", "dog", "5mm jack"]
    assert class_names_from_folders(["1.cat", "2.cat"]) == ["1.cat", "2.cat"]  # stripping would merge them
    assert class_names_from_folders(["1.", "2.b"]) == ["1.", "2.b"]  # nor leave an empty name
    cub = CUBDataset(write_cub(tmp_path / "cub", BIRDS, 2, 1), with_masks=False)
    folder = ImageFolderDataset(write_image_folder(tmp_path / "if", BIRDS, {"train": 2}), "train")
    assert cub.classes == folder.classes == ["Black_footed_Albatross", "Laysan_Albatross", "Sooty_Albatross"]
    assert folder.folders == BIRDS  # the folders keep their names; labels follow their sorted order
    assert folder.targets == [0, 0, 1, 1, 2, 2] == cub.targets
    assert [int(folder[i]["label"]) for i in range(6)] == folder.targets
    assert folder.files[2] == "002.Laysan_Albatross/0.png"
    assert cub.files[2] == "002.Laysan_Albatross/Laysan_Albatross_0000.png"


def test_cub_validation_is_carved_from_train_and_test_kept_apart(tmp_path) -> None:
    root = write_cub(tmp_path / "cub", BIRDS, 10, 3)
    splits = open_splits(root, (8, 8), val_fraction=0.2, seed=1)
    assert splits.val_source == "carved from train" and splits.layout == "cub"
    assert (len(splits.train), len(splits.val), len(splits.test)) == (24, 6, 9)
    train_files, val_files, test_files = set(splits.train.files), set(splits.val.files), set(splits.test.files)
    assert not val_files & test_files and not val_files & train_files
    assert val_files | train_files == set(CUBDataset(root, "train", with_masks=False).files)
    assert Counter(splits.val.targets) == {0: 2, 1: 2, 2: 2}
    assert splits.val[0]["image"].shape == (3, 8, 8)
    assert [int(splits.val[i]["label"]) for i in range(6)] == splits.val.targets
    summary = splits.summary()
    assert summary["validation"] == {"source": "carved from train", "images": 6, "fraction": 0.2, "seed": 1,
                                     "rule": "stratified_split", "files": splits.val.files}
    assert (summary["train_images"], summary["test_images"]) == (24, 9)
    assert "6 images (20% of every class, seed 1) held out" in splits.describe()


def test_image_folder_layouts(tmp_path) -> None:
    with_val = open_splits(write_image_folder(tmp_path / "a", BIRDS, {"train": 3, "val": 1, "test": 2}))
    assert with_val.val_source == "val/ folder" and len(with_val.train) == 9 and len(with_val.test) == 6
    assert isinstance(with_val.val, ImageFolderDataset) and with_val.val.root == tmp_path / "a" / "val"
    no_val = open_splits(write_image_folder(tmp_path / "b", BIRDS, {"train": 5, "test": 1}), val_fraction=0.2)
    assert no_val.val_source == "carved from train" and (len(no_val.train), len(no_val.val)) == (12, 3)
    assert set(no_val.val.files).isdisjoint(no_val.train.files) and len(no_val.test) == 3
    flat = open_splits(write_image_folder(tmp_path / "c", BIRDS, {"train": 4}) / "train", val_fraction=0.25)
    assert flat.layout == "imagefolder" and flat.test is None and len(flat.val) == 3
    kept_all = open_splits(tmp_path / "b", val_fraction=0.0)
    assert kept_all.val is None and kept_all.val_source == "none" and len(kept_all.train) == 15


def test_layout_errors_name_the_problem(tmp_path) -> None:
    root = write_image_folder(tmp_path / "a", BIRDS, {"train": 2})
    write_image_folder(tmp_path / "a", BIRDS[:2], {"test": 1})
    with pytest.raises(DataError, match=r"other class folders .*missing \['003.Sooty_Albatross'\]"):
        open_splits(root)
    only_test = write_image_folder(tmp_path / "b", BIRDS, {"test": 1})
    with pytest.raises(DataError, match="no train/"):
        open_splits(only_test)
    singles = write_image_folder(tmp_path / "c", BIRDS, {"train": 1})
    with pytest.raises(DataError, match="none can be held out"):
        open_splits(singles)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        open_splits(root, val_fraction=1.0)
