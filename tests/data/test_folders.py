"""ImageFolder and CUB-layout loading, the export round trip and bad-file errors."""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.data import (
    CUBDataset,
    DataError,
    ImageFolderDataset,
    Resize,
    TraitShapes,
    TraitShapesConfig,
    class_traits,
    export_cub,
    load_image,
    materialize,
)

CFG = TraitShapesConfig(size=40, num_classes=6, seed=1)


def write_png(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, TraitShapes, TraitShapes]:
    train, test = TraitShapes(CFG, "train", 14), TraitShapes(CFG, "test", 6)
    root = export_cub(materialize(train, num_workers=0, progress=False), tmp_path_factory.mktemp("cub"), test=test)
    return root, train, test


def test_export_layout_files(exported) -> None:
    root, train, _ = exported
    images = (root / "images.txt").read_text().splitlines()
    assert len(images) == 20 and images[0].startswith("1 001.")
    assert (root / "train_test_split.txt").read_text().splitlines()[-1] == "20 0"
    assert len((root / "parts" / "part_locs.txt").read_text().splitlines()) == 20 * 6
    assert (root / "parts" / "parts.txt").read_text().splitlines()[1] == "2 head"
    rel = images[0].split()[1]
    assert (root / "segmentations" / rel).is_file() and (root / "part_masks" / rel).is_file()
    first_box = (root / "bounding_boxes.txt").read_text().splitlines()[0].split()
    x0, y0, x1, y1 = train.raw(0).box
    assert [float(v) for v in first_box[1:]] == [x0, y0, x1 - x0, y1 - y0]


@pytest.mark.parametrize("split", ["train", "test"])
def test_cub_round_trip_matches_the_generator(exported, split: str) -> None:
    root, train, test = exported
    source = train if split == "train" else test
    ds = CUBDataset(root, split=split)
    assert len(ds) == len(source) and ds.classes == source.classes and ds.num_classes == 6
    for i in range(len(ds)):
        got, want = ds[i], source[i]
        assert torch.equal(got["image"], want["image"])
        assert int(got["label"]) == int(want["label"])
        assert torch.equal(got["box"], want["box"])
        for key in ("mask", "part_masks", "trait_masks", "traits"):
            assert torch.equal(got[key], want[key]), key
        assert torch.allclose(got["parts"], want["parts"], atol=1e-3)
    assert len(CUBDataset(root, split="all")) == 20
    assert ds.trait_table is not None


def test_cub_exposes_the_exported_trait_table(exported) -> None:
    root, _, _ = exported
    table = CUBDataset(root, split="test", with_masks=False).trait_table  # class-level: no masks needed
    assert table is not None and table.slots == CFG.slots
    assert list(table.class_traits) == class_traits(CFG)
    assert table.slot_parts["head_colour"] == "head" and table.values["crest"] == ("none", "spike")
    assert table.config["seed"] == 1


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda doc: doc["classes"].pop(), "do not match the 6 classes"),
        (lambda doc: doc["slot_parts"].update(crest="antenna"), "not in parts/parts.txt"),
        (lambda doc: doc["classes"][0].update(traits=[0, 0]), "not one value index per slot"),
        (lambda doc: doc["classes"][0].update(traits=[0, 0, 0, 7]), "not one value index per slot"),
        (lambda doc: doc.pop("slots"), "cannot read"),
    ],
)
def test_bad_traits_json_is_an_error_naming_the_problem(exported, tmp_path: Path, edit, message) -> None:
    root, _, _ = exported
    bad = tmp_path / "cub"
    shutil.copytree(root, bad)
    doc = json.loads((bad / "traits.json").read_text())
    edit(doc)
    (bad / "traits.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=re.escape(message)):
        CUBDataset(bad, split="test")


def test_cub_without_masks_and_with_transform(exported) -> None:
    root, _, _ = exported
    ds = CUBDataset(root, split="test", with_masks=False, transform=Resize((80, 80)))
    item = ds[0]
    assert "mask" not in item and "part_masks" not in item
    assert item["image"].shape == (3, 80, 80)
    assert torch.allclose(item["box"], CUBDataset(root, split="test")[0]["box"] * 2)


def test_corrupt_image_error_names_the_file(exported, tmp_path: Path, caplog) -> None:
    root, _, _ = exported
    bad_root = tmp_path / "cub"
    shutil.copytree(root, bad_root)
    rel = (bad_root / "images.txt").read_text().splitlines()[2].split()[1]
    (bad_root / "images" / rel).write_bytes(b"this is not a png")
    ds = CUBDataset(bad_root, split="train")
    with pytest.raises(DataError, match=re.escape(rel.split("/")[-1])):
        ds[2]
    skipping = CUBDataset(bad_root, split="train", skip_bad=True)
    with caplog.at_level(logging.WARNING):
        item = skipping[2]
    assert item["index"] == 3 and rel.split("/")[-1] in caplog.text

    missing = bad_root / "images" / (bad_root / "images.txt").read_text().splitlines()[4].split()[1]
    missing.unlink()
    with pytest.raises(DataError, match=re.escape(missing.name)):
        CUBDataset(bad_root, split="train")
    assert len(CUBDataset(bad_root, split="train", skip_bad=True)) == 13


def test_cub_missing_index_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"images\.txt"):
        CUBDataset(tmp_path)


def test_image_folder_with_and_without_splits(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for c, name in enumerate(("cat", "dog")):
            for k in range(2 if split == "train" else 1):
                write_png(tmp_path / split / name / f"{k}.png", 40 * c + k)
    (tmp_path / "train" / "dog" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="split"):
        ImageFolderDataset(tmp_path)
    ds = ImageFolderDataset(tmp_path, split="train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 4
    labels = [int(ds[i]["label"]) for i in range(4)]
    assert labels == [0, 0, 1, 1]
    assert ds[3]["image"].shape == (3, 10, 12) and ds[3]["path"].endswith("dog/1.png")
    assert abs(float(ds[3]["image"][0, 0, 0]) - 41 / 255) < 1e-6
    assert len(ImageFolderDataset(tmp_path / "val")) == 2
    with pytest.raises(FileNotFoundError, match="test"):
        ImageFolderDataset(tmp_path, split="test")


def test_image_folder_bad_file(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "good.png", 10)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "broken.jpg").write_bytes(b"\x00garbage")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(DataError, match=r"broken\.jpg"):
        ds[1]
    skipping = ImageFolderDataset(tmp_path, skip_bad=True)
    assert skipping[1]["path"].endswith("good.png") and skipping.bad == {1}


def test_load_image_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png"):
        load_image(tmp_path / "nope.png")
