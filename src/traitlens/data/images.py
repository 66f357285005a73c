"""The one image decoder: a file, its bytes or a PIL image → an 8-bit RGB PIL image, EXIF orientation applied.

Every loader uses it (the dataset folders, `traitlens.load_images` and the CLI, the server's uploads), so a
photo looks the same, and gives the model the same pixels, whichever way it comes in. Callers keep their own
error types: this module raises PIL's errors as they are, plus `PixelLimitError` for the pixel cap, which is
checked from the header before any pixel is decoded (PIL's global `Image.MAX_IMAGE_PIXELS` is never changed).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

__all__ = ["EXIF_ORIENTATION", "MAX_PIXELS", "WIDE_GREY_MODES", "ImageSource", "PixelLimitError", "decode_image",
           "to_rgb"]

#: The EXIF tag saying how the stored pixels must be turned to be seen upright (1 = as stored).
EXIF_ORIENTATION = 0x0112

#: Default cap on width × height: a 64-megapixel RGB image already needs 192 MB once decoded.
MAX_PIXELS = 64_000_000

#: PIL modes of one-channel images with more than 8 bits per sample (16-bit PNG / TIFF greys, 32-bit integers).
WIDE_GREY_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})

ImageSource = str | Path | bytes | Image.Image
"""What `decode_image` reads: a file path, the file's bytes, or an already opened PIL image."""


class PixelLimitError(ValueError):
    """The image has more pixels than the caller's cap; raised from the header, before any pixel is decoded."""

    def __init__(self, width: int, height: int, limit: int) -> None:
        super().__init__(f"{width}×{height} = {width * height} pixels is more than the limit of {limit} pixels")
        self.width = width
        self.height = height
        self.limit = limit


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB; 16-bit grey samples keep their high byte (v >> 8), as PIL itself reads 16-bit RGB files.

    PIL's own `convert("RGB")` clips wide greys to 255 (a 16-bit PNG turns white). Mode "I" is read as 16-bit
    too: values are clipped to 0..65535 first.
    """
    if img.mode in WIDE_GREY_MODES:
        wide = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray((wide >> 8).astype(np.uint8)).convert("RGB")
    return img.convert("RGB")


def _upright_rgb(img: Image.Image) -> Image.Image:
    """Decode `img` fully, turn it upright by its EXIF orientation, and convert it to 8-bit RGB."""
    img.load()  # a PNG's eXIf chunk may follow the pixel data: read everything before asking for the orientation
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return to_rgb(img)


def _check_size(img: Image.Image, max_pixels: int | None) -> None:
    if max_pixels is not None and img.width * img.height > max_pixels:
        raise PixelLimitError(img.width, img.height, max_pixels)


def decode_image(
    source: ImageSource, *, formats: Sequence[str] | None = None, max_pixels: int | None = MAX_PIXELS
) -> Image.Image:
    """Decode an image to 8-bit RGB, EXIF orientation applied.

    16-bit samples become 8-bit by keeping their high byte (v >> 8, i.e. ⌊v/256⌋; 0 → 0, 65535 → 255), for
    greys ("I;16" and friends) as PIL already does for 16-bit RGB(A) PNG and TIFF files, so one picture
    stored either way gives the same pixels.

    Args:
        source: a file path, the file's bytes, or a PIL image (not closed here).
        formats: PIL format names to try (e.g. ``["PNG"]``, the type judged from the bytes); None: any.
        max_pixels: refuse images with more than width × height pixels, judged from the header before any
            pixel is decoded (`MAX_PIXELS` by default; None: no cap of ours).

    Returns:
        A new RGB image, independent of the source file.

    Raises:
        FileNotFoundError: the path does not exist.
        PixelLimitError: more pixels than `max_pixels`.
        PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError: not a readable image
            (truncated, corrupt, wrong type); PIL.Image.DecompressionBombError: beyond PIL's own pixel guard.
    """
    if isinstance(source, Image.Image):
        _check_size(source, max_pixels)
        return _upright_rgb(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp, formats=list(formats) if formats is not None else None) as img:
        _check_size(img, max_pixels)  # Image.open reads the header only: nothing is decoded yet
        return _upright_rgb(img)
