"""The shared image decoder: paths, bytes and PIL images give the same upright RGB pixels."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, UnidentifiedImageError

from traitlens.backbones.preprocess import load_image as backbone_load_image
from traitlens.data import load_image as data_load_image
from traitlens.data.images import EXIF_ORIENTATION, PixelLimitError, decode_image


def stored(width: int = 40, height: int = 24) -> np.ndarray:
    """Random uint8 pixels [H,W,3], as stored in the file (before any EXIF turn)."""
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def png_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    buf = io.BytesIO()
    Image.fromarray(stored()).save(buf, format="PNG", exif=exif)
    return buf.getvalue()


@pytest.mark.parametrize(("orientation", "expected"), [
    (1, lambda a: a),
    (3, lambda a: np.rot90(a, 2)),
    (6, lambda a: np.rot90(a, -1)),  # "rotate 90° clockwise to view"
    (8, lambda a: np.rot90(a, 1)),
])
def test_exif_orientation_is_applied(orientation, expected) -> None:
    out = decode_image(png_with_orientation(orientation))
    assert out.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(out), expected(stored()))


def test_path_bytes_and_pil_give_the_same_pixels(tmp_path: Path) -> None:
    data = png_with_orientation(6)
    path = tmp_path / "turned.png"
    path.write_bytes(data)
    ref = np.asarray(decode_image(data))
    np.testing.assert_array_equal(np.asarray(decode_image(path)), ref)
    np.testing.assert_array_equal(np.asarray(decode_image(str(path))), ref)
    with Image.open(path) as img:
        np.testing.assert_array_equal(np.asarray(decode_image(img)), ref)
    # The dataset loader and traitlens.load_image read the same upright pixels.
    np.testing.assert_array_equal(data_load_image(path).numpy(), backbone_load_image(path).numpy())
    np.testing.assert_allclose(backbone_load_image(path).permute(1, 2, 0).numpy(), ref / 255.0, atol=1e-7)


def test_pixel_cap_and_formats() -> None:
    data = png_with_orientation(1)
    with pytest.raises(PixelLimitError, match="960 pixels is more than the limit of 959"):
        decode_image(data, max_pixels=959)
    assert decode_image(data, max_pixels=960).size == (40, 24)
    with pytest.raises(UnidentifiedImageError):
        decode_image(data, formats=["JPEG"])
    with pytest.raises(FileNotFoundError):
        decode_image(Path("/no/such/image.png"))
