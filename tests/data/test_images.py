"""The shared image decoder: paths, bytes and PIL images give the same upright RGB pixels."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, UnidentifiedImageError

from tests.conftest import png16, png_bytes
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


def grey_gradient() -> np.ndarray:
    """uint16 [32,32]: a ramp 0, 64, …, 65472 with hand-picked values in the first row."""
    g = (np.arange(32 * 32, dtype=np.int64) * 64).reshape(32, 32)
    g[0, :6] = [0, 255, 256, 32896, 65280, 65535]
    return g.astype(np.uint16)


def test_sixteen_bit_grey_png_keeps_its_high_byte() -> None:
    """A 16-bit grey PNG is not clipped to white: each sample becomes v >> 8 (hand values in the first row)."""
    g = grey_gradient()
    buf = io.BytesIO()
    Image.fromarray(g).save(buf, format="PNG")  # PIL writes mode I;16 as a 16-bit grey PNG
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        assert img.mode == "I;16"
    out = np.asarray(decode_image(buf.getvalue()))
    assert out.dtype == np.uint8 and out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[0, :6, 0], [0, 0, 1, 128, 255, 255])  # 32896 = 128·257, 65280 = 255·256
    np.testing.assert_array_equal(out[31, 31], [255, 255, 255])  # 1023·64 = 65472 → 255
    np.testing.assert_array_equal(out[1, :4, 1], [8, 8, 8, 8])  # 32·64 … 35·64 = 2048 … 2240 → 8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], g // 256)
    # The same samples written by hand give the same pixels.
    np.testing.assert_array_equal(np.asarray(decode_image(png16(g))), out)


def test_sixteen_bit_rgb_png_agrees_with_the_grey_rule() -> None:
    """PIL reads 16-bit RGB PNGs by their high byte itself; a grey picture stored as 16-bit RGB decodes the same."""
    g = grey_gradient()
    grey = np.asarray(decode_image(png16(g)))
    np.testing.assert_array_equal(np.asarray(decode_image(png16(np.stack([g, g, g], -1)))), grey)
    rgb = np.stack([g, 65535 - g, np.full_like(g, 0x1234)], -1)
    out = np.asarray(decode_image(png16(rgb)))
    np.testing.assert_array_equal(out[0, :6, 0], [0, 0, 1, 128, 255, 255])
    np.testing.assert_array_equal(out[0, :6, 1], [255, 255, 254, 127, 0, 0])  # 65535−256 = 65279 → 254
    np.testing.assert_array_equal(out[..., 2], np.full((32, 32), 0x12))  # 0x1234 → 0x12
    np.testing.assert_array_equal(out, np.stack([g // 256, (65535 - g) // 256, np.full_like(g, 18)], -1))


def test_wide_grey_modes_in_memory() -> None:
    """Big-endian 16-bit and 32-bit integer greys follow the same rule; "I" is clipped to 0..65535 first."""
    g = grey_gradient()
    big = Image.frombytes("I;16B", (32, 32), g.astype(">u2").tobytes())
    np.testing.assert_array_equal(np.asarray(decode_image(big))[..., 0], g // 256)
    wide = Image.fromarray(np.array([[-5, 0, 511, 70000]], dtype=np.int32))
    assert wide.mode == "I"
    np.testing.assert_array_equal(np.asarray(decode_image(wide))[0, :, 0], [0, 0, 1, 255])


def big_png(side: int = 10_000) -> bytes:
    """A side×side 1-bit black PNG: a few KB on disk, `side`² pixels once decoded."""
    row = bytes(1 + (side + 7) // 8)
    return png_bytes(side, side, 1, 0, row * side)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL's own warning, above 89 MP
def test_oversized_image_is_refused_before_decoding(tmp_path: Path, monkeypatch) -> None:
    from PIL import ImageFile

    import traitlens as tl

    path = tmp_path / "bomb.png"
    path.write_bytes(big_png())
    assert path.stat().st_size < 100_000
    pil_limit = Image.MAX_IMAGE_PIXELS

    def no_decoding(self, *args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    t0 = time.perf_counter()
    with pytest.raises(tl.ImageLoadError, match=r"bomb\.png: image too large: 10000×10000 = 100000000 pixels is "
                                                r"more than the limit of 64000000"):
        tl.load_images([path], size=8)
    with pytest.raises(PixelLimitError):
        decode_image(path)  # the decoder's default cap
    with pytest.raises(tl.ImageLoadError, match="limit of 99999999"):
        tl.load_image(path, max_pixels=99_999_999)
    assert time.perf_counter() - t0 < 2.0
    assert pil_limit == Image.MAX_IMAGE_PIXELS


def test_pil_pixel_limit_is_left_alone(tmp_path: Path) -> None:
    """Importing traitlens and loading an oversized image leave PIL's global guard as it was."""
    path = tmp_path / "bomb.png"
    path.write_bytes(big_png())
    code = (
        "import json, sys\n"
        "from PIL import Image\n"
        "before = Image.MAX_IMAGE_PIXELS\n"
        "import traitlens as tl\n"
        "after_import = Image.MAX_IMAGE_PIXELS\n"
        "try:\n"
        "    tl.load_image(sys.argv[1])\n"
        "except tl.ImageLoadError as err:\n"
        "    message = str(err)\n"
        "print(json.dumps([before, after_import, Image.MAX_IMAGE_PIXELS, message]))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before, after_import, after_call, message = json.loads(proc.stdout.strip().splitlines()[-1])
    assert before == after_import == after_call
    assert "more than the limit of 64000000 pixels" in message


def test_in_memory_sixteen_bit_images_elsewhere() -> None:
    """`ToTensor` and a PIL image given to an interpretable model's `predict` follow the decoder's 16-bit rule."""
    from traitlens.data.transforms import ToTensor
    from traitlens.models.base import _to_image_tensor

    g = grey_gradient()
    expected = torch.from_numpy((g // 256).astype(np.float32) / 255.0)
    for tensor in (ToTensor()({"image": Image.fromarray(g)})["image"], _to_image_tensor(Image.fromarray(g))):
        assert tensor.shape == (3, 32, 32)
        for c in range(3):
            torch.testing.assert_close(tensor[c], expected, rtol=0, atol=1e-7)
