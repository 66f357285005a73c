"""Fashion-MNIST from the IDX files of Debian's ``dataset-fashion-mnist`` package.

A real-image sanity set that installs from a package registry (no hub download): 60k train and
10k test 28×28 grey images in 10 classes (datasets.md, "Real data ...").

Example:
    >>> images, labels = load_fashion_mnist(split="test")  # doctest: +SKIP
    >>> images.shape, labels.shape
    ((10000, 28, 28), (10000,))
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from traitlens.data.errors import DataError

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_ROOT", "FASHION_MNIST_CLASSES", "FashionMNIST", "load_fashion_mnist", "read_idx"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
"""Where ``apt-get install dataset-fashion-mnist`` puts the files."""

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# IDX type codes (third magic byte) -> numpy big-endian dtypes.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (gzip-compressed or raw, detected from its first bytes).

    Raises:
        DataError: the file is not valid IDX (bad magic, type or size); the message names it.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as e:
            raise DataError(f"cannot decompress {path}: {e}") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(f"{path}: IDX shape {shape} needs {expected} data bytes, file has {len(raw) - header}")
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found in {root}. Install it with "
        "`apt-get install dataset-fashion-mnist` (Debian/Ubuntu) or pass root= a folder holding the IDX files."
    )


def load_fashion_mnist(root: str | Path = DEFAULT_ROOT, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Load a Fashion-MNIST split.

    Args:
        root: folder with the four IDX files (``.gz`` or raw).
        split: "train" (60k) or "test" (10k).

    Returns:
        images uint8 [N, 28, 28] and labels int64 [N].

    Raises:
        FileNotFoundError: the files are absent (the message says how to install them).
        DataError: the files are corrupt or disagree in length.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root)
    image_file, label_file = (_find(root, stem) for stem in _FILES[split])
    images = read_idx(image_file)
    labels = read_idx(label_file).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"{image_file} {images.shape} and {label_file} {labels.shape} do not match")
    return images.astype(np.uint8), labels


class FashionMNIST(Dataset):
    """Fashion-MNIST as 3-channel float images resized to ``size`` (bilinear, antialiased).

    Args:
        root: folder with the IDX files.
        split: "train" or "test".
        size: output side in pixels.
        transform: optional callable on the sample dict.

    Items: ``image`` float32 [3, size, size] in [0, 1], ``label`` int64, ``index``.
    """

    def __init__(
        self, root: str | Path = DEFAULT_ROOT, split: str = "train", size: int = 28, transform: Any = None
    ) -> None:
        images, labels = load_fashion_mnist(root, split)
        self.images = torch.from_numpy(images)
        self.labels = torch.from_numpy(labels)
        self.size = size
        self.transform = transform
        self.classes = list(FASHION_MNIST_CLASSES)
        self.num_classes = len(self.classes)
        logger.debug("loaded Fashion-MNIST %s: %d images", split, len(self.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.images[index].float().div_(255.0)[None, None]
        if self.size != image.shape[-1]:
            image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", antialias=True).clamp_(0, 1)
        item = {"image": image[0].expand(3, -1, -1).contiguous(), "label": self.labels[index], "index": index}
        return self.transform(item) if self.transform is not None else item
