"""Which on-disk layout a data folder uses: the CUB-200-2011 index files or an ImageFolder tree.

The one place that decides how a folder is read, so the command line, evaluation and the
datasets agree (datasets.md, "Real formats users bring").

Example:
    >>> detect_layout("data/ts")  # doctest: +SKIP
    'cub'
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from traitlens.data.errors import DataError

__all__ = ["LAYOUTS", "SPLIT_NAMES", "Layout", "detect_layout", "split_folders"]

Layout = Literal["cub", "imagefolder", "imagefolder-splits"]

LAYOUTS: tuple[Layout, ...] = ("cub", "imagefolder", "imagefolder-splits")
"""What ``detect_layout`` returns: a CUB layout, class folders, or split folders of class folders."""

SPLIT_NAMES: tuple[str, ...] = ("train", "val", "test")
"""Folder names that mark an ImageFolder split (``root/<split>/<class>/*``)."""


def _subdirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir())


def _is_split_tree(subdirs: Iterable[str]) -> bool:
    """Whether folder names are split folders only (then a split must be chosen)."""
    names = set(subdirs)
    return bool(names) and names <= set(SPLIT_NAMES)


def detect_layout(root: str | Path) -> Layout:
    """The layout of a data folder.

    - ``"cub"``: it holds ``images.txt`` (the CUB-200-2011 layout, also ``export_cub``'s output);
    - ``"imagefolder-splits"``: its sub-folders are split folders only (``train``, ``val``, ``test``);
    - ``"imagefolder"``: any other sub-folders, read as class folders.

    Raises:
        FileNotFoundError: ``root`` is not a folder.
        DataError: it holds neither ``images.txt`` nor sub-folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    if (root / "images.txt").is_file():
        return "cub"
    subdirs = _subdirs(root)
    if not subdirs:
        raise DataError(f"{root}: neither a CUB layout (images.txt) nor an ImageFolder tree (sub-folders)")
    return "imagefolder-splits" if _is_split_tree(subdirs) else "imagefolder"


def split_folders(root: str | Path) -> list[str]:
    """The split folders (``SPLIT_NAMES``, in that order) present under an ImageFolder ``root``."""
    root = Path(root)
    return [name for name in SPLIT_NAMES if (root / name).is_dir()]
