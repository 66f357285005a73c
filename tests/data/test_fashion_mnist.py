"""Fashion-MNIST IDX parsing (on files written here) and the installed Debian data when present."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from traitlens.data import DataError, FashionMNIST, load_fashion_mnist, read_idx
from traitlens.data.fashion_mnist import DEFAULT_ROOT


def write_idx(path: Path, array: np.ndarray, compress: bool) -> None:
    codes = {np.uint8: 0x08, np.int32: 0x0C}
    header = bytes([0, 0, codes[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path: Path, compress: bool) -> None:
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.idx", images, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.idx"), images)
    ints = np.array([-5, 70000, 3], dtype=np.int32)
    write_idx(tmp_path / "y.idx", ints, compress)
    np.testing.assert_array_equal(read_idx(tmp_path / "y.idx"), ints)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    (tmp_path / "junk").write_bytes(b"\x89PNG not idx")
    with pytest.raises(DataError, match="junk"):
        read_idx(tmp_path / "junk")
    write_idx(tmp_path / "short", np.zeros((2, 3), np.uint8), compress=False)
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-1])
    with pytest.raises(DataError, match="short"):
        read_idx(tmp_path / "short")


def test_load_from_a_tiny_folder(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1], np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images, compress=True)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels, compress=False)
    x, y = load_fashion_mnist(tmp_path, "test")
    np.testing.assert_array_equal(x, images)
    assert y.dtype == np.int64 and y.tolist() == [0, 9, 3, 3, 1]
    ds = FashionMNIST(tmp_path, "test", size=32)
    item = ds[1]
    assert item["image"].shape == (3, 32, 32) and int(item["label"]) == 9
    assert torch.equal(item["image"][0], item["image"][2])
    assert abs(float(item["image"].mean()) - images[1].mean() / 255) < 0.01
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path, "train")


@pytest.mark.skipif(
    not Path(DEFAULT_ROOT, "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not installed in {DEFAULT_ROOT} (apt-get install dataset-fashion-mnist)",
)
def test_installed_fashion_mnist() -> None:
    x, y = load_fashion_mnist(split="test")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10
