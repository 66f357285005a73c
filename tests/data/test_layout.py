"""detect_layout and split_folders: CUB vs ImageFolder (flat or split) and the errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from traitlens.data import (
    LAYOUTS,
    SPLIT_NAMES,
    DataError,
    ImageFolderDataset,
    TraitShapes,
    TraitShapesConfig,
    detect_layout,
    export_cub,
    split_folders,
)


def write_png(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(path)


def test_cub_export_is_cub(tmp_path: Path) -> None:
    cfg = TraitShapesConfig(size=32, num_classes=2)
    root = export_cub(TraitShapes(cfg, "train", 2), tmp_path / "cub")
    assert detect_layout(root) == "cub" and detect_layout(str(root)) == "cub"


def test_images_txt_wins_over_folders(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    (tmp_path / "images.txt").write_text("")
    assert detect_layout(tmp_path) == "cub"


def test_class_folders_are_imagefolder(tmp_path: Path) -> None:
    write_png(tmp_path / "cat" / "a.png")
    write_png(tmp_path / "dog" / "b.png")
    assert detect_layout(tmp_path) == "imagefolder"
    assert split_folders(tmp_path) == []


def test_split_folders_are_imagefolder_splits(tmp_path: Path) -> None:
    for split in ("test", "train"):
        write_png(tmp_path / split / "cat" / "a.png")
    assert detect_layout(tmp_path) == "imagefolder-splits"
    assert split_folders(tmp_path) == ["train", "test"]
    # The dataset applies the same rule: a split tree needs split=.
    with pytest.raises(DataError, match="split"):
        ImageFolderDataset(tmp_path)
    assert len(ImageFolderDataset(tmp_path, "train")) == 1


def test_a_class_folder_next_to_splits_makes_a_flat_tree(tmp_path: Path) -> None:
    for name in ("train", "val", "cat"):
        write_png(tmp_path / name / "a.png")
    assert detect_layout(tmp_path) == "imagefolder"
    assert split_folders(tmp_path) == ["train", "val"]


def test_missing_or_empty_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        detect_layout(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(FileNotFoundError):
        detect_layout(tmp_path / "file.txt")
    with pytest.raises(DataError, match=r"images\.txt"):
        detect_layout(tmp_path)


def test_constants() -> None:
    assert LAYOUTS == ("cub", "imagefolder", "imagefolder-splits")
    assert SPLIT_NAMES == ("train", "val", "test")
