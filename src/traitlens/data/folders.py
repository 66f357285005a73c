"""Datasets for the formats users bring: ImageFolder trees and the CUB-200-2011 layout.

Both return the sample dicts of ``traitlens.data`` (``image`` float [3,H,W] in [0,1], ``label``
int64, ``index``, ``path``, plus annotations) so the transforms in
``traitlens.data.transforms`` move boxes, parts and masks with the pixels. A missing or
unreadable image raises ``DataError`` naming the file; ``skip_bad=True`` logs a warning and
skips it instead (datasets.md, "Real formats users bring").
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from traitlens.data.errors import DataError
from traitlens.data.images import decode_image
from traitlens.data.layout import _is_split_tree, _subdirs

logger = logging.getLogger(__name__)

__all__ = ["IMAGE_EXTENSIONS", "CUBDataset", "ImageFolderDataset", "TraitTable", "class_names_from_folders",
           "load_image"]

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
"""File suffixes (case-insensitive) that ``ImageFolderDataset`` picks up."""

Transform = Callable[[dict[str, Any]], dict[str, Any]]

_ORDER_PREFIX = re.compile(r"^\d+\.")


def class_names_from_folders(folders: list[str]) -> list[str]:
    """Class names from class folder names: a numeric ordering prefix is dropped (``001.Black_footed_Albatross``
    becomes ``Black_footed_Albatross``), the rest is kept as written.

    The one rule of both loaders, so a CUB folder read through ``classes.txt`` and the same images arranged as an
    ImageFolder tree give a model the same class names. When dropping the prefixes would leave an empty or a
    repeated name (``1.cat``, ``2.cat``), every folder name is kept whole.
    """
    stripped = [_ORDER_PREFIX.sub("", name) for name in folders]
    if all(stripped) and len(set(stripped)) == len(stripped):
        return stripped
    return list(folders)


def load_image(path: str | Path) -> torch.Tensor:
    """Read an image file as float32 [3, H, W] in [0, 1], EXIF orientation applied (``decode_image``).

    Raises:
        DataError: the file is missing or not a readable image (the message names it).
    """
    try:
        array = np.asarray(decode_image(path))
    except FileNotFoundError as e:
        raise DataError(f"image file not found: {path}") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def _load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """Read a grey mask; the caller decides how values map to booleans or labels."""
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("L") if im.mode not in ("L", "P", "1") else im)
    except FileNotFoundError as e:
        raise DataError(f"mask file not found: {path}") from e
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise DataError(f"cannot read mask {path}: {e}") from e
    if array.shape != shape:
        raise DataError(f"mask {path} has size {array.shape[::-1]}, its image has {shape[::-1]}")
    return array


class _FileDataset(Dataset):
    """Shared loading with the ``skip_bad`` policy: error naming the file, or warn and skip.

    Subclasses also expose ``targets`` (every item's label, read from the index, no image decoded) and ``files``
    (every item's path relative to its image folder), e.g. to split a data set by class without loading it.
    """

    def __init__(self, transform: Transform | None, skip_bad: bool) -> None:
        self.transform = transform
        self.skip_bad = skip_bad
        self.bad: set[int] = set()

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for offset in range(n):
            i = (index + offset) % n
            if i in self.bad:
                continue
            try:
                item = self._load(i)
            except DataError as e:
                if not self.skip_bad:
                    raise
                # A map-style dataset must return something: warn once, serve the next image.
                logger.warning("skipping bad image (%s); serving the next one instead", e)
                self.bad.add(i)
                continue
            return self.transform(item) if self.transform is not None else item
        raise DataError(f"no readable image left in {self!r}")


class ImageFolderDataset(_FileDataset):
    """Images in ``root/<class>/*`` (or ``root/<split>/<class>/*``), labels from the sorted class folder names.

    ``folders`` are the class folder names in label order, ``classes`` the class names made from them by
    ``class_names_from_folders`` (``001.Black_footed_Albatross`` → ``Black_footed_Albatross``, as the CUB loader
    names it).

    Args:
        root: the folder of class folders, or of split folders ``train/``, ``val/``, ``test/``.
        split: a split folder name under ``root``; ``None`` uses ``root`` itself.
        transform: optional callable on the sample dict.
        skip_bad: log and skip unreadable images instead of raising ``DataError``.

    Items: ``image``, ``label`` (int64), ``index``, ``path``.
    """

    def __init__(
        self,
        root: str | Path,
        split: str | None = None,
        transform: Transform | None = None,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(transform, skip_bad)
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        subdirs = _subdirs(root)
        if split is not None:
            if split not in subdirs:
                raise FileNotFoundError(f"split folder {root / split} not found; {root} has {subdirs}")
            root = root / split
        elif _is_split_tree(subdirs):
            raise DataError(f"{root} holds split folders {subdirs}; pass split= one of them")
        self.root = root
        self.folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not self.folders:
            raise DataError(f"no class folders in {root}")
        self.classes = class_names_from_folders(self.folders)
        self.num_classes = len(self.classes)
        self.samples: list[tuple[Path, int]] = [
            (path, label)
            for label, name in enumerate(self.folders)
            for path in sorted((root / name).rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
        ]
        if not self.samples:
            raise DataError(f"no images with suffix in {IMAGE_EXTENSIONS} under {root}")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def targets(self) -> list[int]:
        """The label of every item, in item order."""
        return [label for _, label in self.samples]

    @property
    def files(self) -> list[str]:
        """Every item's path relative to ``root`` (``<class folder>/<file>``), in item order."""
        return [path.relative_to(self.root).as_posix() for path, _ in self.samples]

    def _load(self, index: int) -> dict[str, Any]:
        path, label = self.samples[index]
        return {
            "image": load_image(path),
            "label": torch.tensor(label, dtype=torch.int64),
            "index": index,
            "path": str(path),
        }

    def __repr__(self) -> str:
        return f"ImageFolderDataset({str(self.root)!r}, {len(self)} images, {self.num_classes} classes)"


def _read_table(path: Path, columns: int) -> list[list[str]]:
    """Rows of a whitespace-separated CUB index file; the last column keeps any spaces."""
    if not path.is_file():
        raise DataError(f"CUB layout incomplete: {path} not found")
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = line.split(maxsplit=columns - 1)
        if len(row) != columns:
            raise DataError(f"{path}:{n}: expected {columns} columns, got {line!r}")
        rows.append(row)
    return rows


@dataclass(frozen=True)
class TraitTable:
    """The class trait table of a TraitShapes export (its ``traits.json``); real CUB has none.

    It carries what trait metrics need beyond the pixels (datasets.md, "TraitShapes"): which trait
    value every class has in every slot, so siblings, discriminative masks and least-similar classes
    can be derived from the exported files alone, without the generator.

    Attributes:
        slots: trait slot names, e.g. ``("head_colour", "wing_pattern")``.
        values: slot -> its value names.
        slot_parts: slot -> the part that carries it (its trait mask is that part's mask).
        class_traits: per class (0-based label) the value index of every slot.
        config: the generator config as exported (provenance only).
    """

    slots: tuple[str, ...]
    values: dict[str, tuple[str, ...]]
    slot_parts: dict[str, str]
    class_traits: tuple[tuple[int, ...], ...]
    config: dict[str, Any]


class CUBDataset(_FileDataset):
    """The CUB-200-2011 layout (also TraitShapes exported by ``export_cub``).

    Reads ``images.txt``, ``classes.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``bounding_boxes.txt`` (x y w h -> xyxy), ``parts/parts.txt`` and ``parts/part_locs.txt`` when
    present, and with ``with_masks`` the optional ``segmentations/<path>.png`` (foreground, soft
    CUB masks thresholded at 128) and ``part_masks/<path>.png`` (a label map of 1-based part ids).
    With a ``traits.json`` (TraitShapes) it exposes the class trait table as ``trait_table`` and adds
    ``trait_masks`` and ``traits`` to items that have part masks; without it ``trait_table`` is None.
    Ids are 1-based; labels are ``class_id - 1``. Class names are the ``classes.txt`` names through
    ``class_names_from_folders`` (``001.Black_footed_Albatross`` → ``Black_footed_Albatross``), or the
    TraitShapes names of ``traits.json``.

    Args:
        root: the folder holding ``images.txt`` and ``images/``.
        split: "train", "test" or "all".
        transform: optional callable on the sample dict.
        with_masks: load segmentation and part masks when the folders exist.
        skip_bad: drop missing images and skip unreadable ones with a warning instead of raising.

    Items: ``image``, ``label``, ``index``, ``path``, ``image_id``, ``box`` float32 xyxy,
    ``parts`` float32 [n_parts, 3] (x, y, visible), ``mask`` bool [1,H,W], ``part_masks`` bool
    [n_parts,H,W], ``trait_masks`` bool [n_slots,H,W] and ``traits`` int64 — each when available.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        with_masks: bool = True,
        skip_bad: bool = False,
    ) -> None:
        super().__init__(transform, skip_bad)
        if split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
        self.root = root = Path(root)
        self.split = split
        paths = {int(i): p for i, p in _read_table(root / "images.txt", 2)}
        labels = {int(i): int(c) - 1 for i, c in _read_table(root / "image_class_labels.txt", 2)}
        is_train = {int(i): t == "1" for i, t in _read_table(root / "train_test_split.txt", 2)}
        class_rows = sorted((int(i), name) for i, name in _read_table(root / "classes.txt", 2))
        self.classes = class_names_from_folders([name for _, name in class_rows])
        boxes_file = root / "bounding_boxes.txt"
        self._boxes = (
            {int(r[0]): [float(v) for v in r[1:]] for r in _read_table(boxes_file, 5)} if boxes_file.is_file() else {}
        )
        self._load_parts(root / "parts")
        self._slot_part_index: list[int] = []
        self.trait_table = self._load_traits(root / "traits.json", len(self.classes))
        seg_dir, part_dir = root / "segmentations", root / "part_masks"
        self._seg_dir = seg_dir if with_masks and seg_dir.is_dir() else None
        self._part_dir = part_dir if with_masks and part_dir.is_dir() and self.part_names else None

        ids = sorted(i for i in paths if split == "all" or is_train.get(i) == (split == "train"))
        missing = [i for i in ids if i not in labels]
        if missing:
            raise DataError(f"{root / 'image_class_labels.txt'} has no label for image ids {missing[:5]}")
        kept = []
        for i in ids:
            if not (root / "images" / paths[i]).is_file():
                if not skip_bad:
                    raise DataError(f"image file not found: {root / 'images' / paths[i]}")
                logger.warning("skipping missing image %s", root / "images" / paths[i])
                continue
            kept.append(i)
        self.ids = kept
        self._paths, self._labels = paths, labels
        self.num_classes = len(self.classes)

    def _load_parts(self, parts_dir: Path) -> None:
        self.part_names: list[str] = []
        self._parts: dict[int, np.ndarray] = {}
        if not (parts_dir / "parts.txt").is_file():
            return
        rows = sorted((int(i), name) for i, name in _read_table(parts_dir / "parts.txt", 2))
        self.part_names = [name for _, name in rows]
        locs_file = parts_dir / "part_locs.txt"
        if not locs_file.is_file():
            return
        try:
            table = np.loadtxt(locs_file, ndmin=2, dtype=np.float64)
        except ValueError as e:
            raise DataError(f"cannot parse {locs_file}: {e}") from e
        if table.size and table.shape[1] != 5:
            raise DataError(f"{locs_file}: expected 5 columns (image part x y visible), got {table.shape[1]}")
        for image_id in np.unique(table[:, 0]).astype(int) if table.size else []:
            self._parts[int(image_id)] = np.zeros((len(self.part_names), 3), np.float32)
        for image_id, part, x, y, vis in table:
            self._parts[int(image_id)][int(part) - 1] = (x, y, vis)

    def _load_traits(self, path: Path, num_classes: int) -> TraitTable | None:
        """The trait table of ``traits.json`` (None when absent), checked against the parts and classes."""
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
            slots = tuple(doc["slots"])
            slot_parts = {slot: doc["slot_parts"][slot] for slot in slots}
            values = {slot: tuple(doc["values"][slot]) for slot in slots}
            rows = {int(c["id"]): (c["name"], tuple(int(v) for v in c["traits"])) for c in doc["classes"]}
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise DataError(f"cannot read {path}: {e}") from e
        unknown = sorted({p for p in slot_parts.values() if p not in self.part_names})
        if unknown:
            raise DataError(f"{path}: slot parts {unknown} are not in parts/parts.txt {self.part_names}")
        if sorted(rows) != list(range(1, num_classes + 1)):
            raise DataError(f"{path}: class ids {sorted(rows)} do not match the {num_classes} classes of classes.txt")
        for cid, (_, traits) in rows.items():
            ok = len(traits) == len(slots) and all(0 <= v < len(values[s]) for v, s in zip(traits, slots, strict=True))
            if not ok:
                raise DataError(f"{path}: class {cid} has traits {list(traits)}, not one value index per slot {slots}")
        self._slot_part_index = [self.part_names.index(slot_parts[s]) for s in slots]
        # TraitShapes class names ("red-head/stripes/fan/spike") read better than folder names.
        self.classes = [rows[c][0] for c in sorted(rows)]
        return TraitTable(slots, values, slot_parts, tuple(rows[c][1] for c in sorted(rows)), doc.get("config", {}))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def targets(self) -> list[int]:
        """The label of every item, in item order."""
        return [self._labels[i] for i in self.ids]

    @property
    def files(self) -> list[str]:
        """Every item's path relative to ``images/`` (as in ``images.txt``), in item order."""
        return [self._paths[i] for i in self.ids]

    def _load(self, index: int) -> dict[str, Any]:
        image_id = self.ids[index]
        rel = self._paths[image_id]
        path = self.root / "images" / rel
        image = load_image(path)
        label = self._labels[image_id]
        item: dict[str, Any] = {
            "image": image,
            "label": torch.tensor(label, dtype=torch.int64),
            "index": index,
            "image_id": image_id,
            "path": str(path),
        }
        if image_id in self._boxes:
            x, y, w, h = self._boxes[image_id]
            item["box"] = torch.tensor([x, y, x + w, y + h], dtype=torch.float32)
        if self.part_names:
            parts = self._parts.get(image_id, np.zeros((len(self.part_names), 3), np.float32))
            item["parts"] = torch.from_numpy(parts.copy())
        shape = (image.shape[1], image.shape[2])
        mask_rel = Path(rel).with_suffix(".png")
        if self._seg_dir is not None:
            item["mask"] = torch.from_numpy(_load_mask(self._seg_dir / mask_rel, shape) >= 128)[None]
        if self._part_dir is not None:
            owner = torch.from_numpy(_load_mask(self._part_dir / mask_rel, shape).astype(np.int64))
            ids = torch.arange(1, len(self.part_names) + 1)
            item["part_masks"] = owner[None] == ids[:, None, None]
            if self.trait_table is not None:
                item["trait_masks"] = item["part_masks"][self._slot_part_index]
                item["traits"] = torch.tensor(self.trait_table.class_traits[label], dtype=torch.int64)
        return item

    def __repr__(self) -> str:
        return f"CUBDataset({str(self.root)!r}, split={self.split!r}, {len(self)} images, {self.num_classes} classes)"
