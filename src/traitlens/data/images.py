"""The one image decoder: a file, its bytes or a PIL image → an RGB PIL image with its EXIF orientation applied.

Every loader uses it (the dataset folders, `traitlens.load_images` and the CLI, the server's uploads), so a
photo looks the same, and gives the model the same pixels, whichever way it comes in. Callers keep their own
error types: this module raises PIL's errors as they are, plus `PixelLimitError` for the optional pixel cap.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageOps

__all__ = ["EXIF_ORIENTATION", "ImageSource", "PixelLimitError", "decode_image"]

#: The EXIF tag saying how the stored pixels must be turned to be seen upright (1 = as stored).
EXIF_ORIENTATION = 0x0112

ImageSource = str | Path | bytes | Image.Image
"""What `decode_image` reads: a file path, the file's bytes, or an already opened PIL image."""


class PixelLimitError(ValueError):
    """The image has more pixels than the caller's cap; raised from the header, before any pixel is decoded."""

    def __init__(self, width: int, height: int, limit: int) -> None:
        super().__init__(f"{width}×{height} = {width * height} pixels is more than the limit of {limit} pixels")
        self.width = width
        self.height = height
        self.limit = limit


def _upright_rgb(img: Image.Image) -> Image.Image:
    """Decode `img` fully, turn it upright by its EXIF orientation, and convert it to RGB."""
    img.load()  # a PNG's eXIf chunk may follow the pixel data: read everything before asking for the orientation
    if img.getexif().get(EXIF_ORIENTATION, 1) != 1:
        img = ImageOps.exif_transpose(img)
    return img.convert("RGB")


def decode_image(
    source: ImageSource, *, formats: Sequence[str] | None = None, max_pixels: int | None = None
) -> Image.Image:
    """Decode an image to RGB, EXIF orientation applied.

    Args:
        source: a file path, the file's bytes, or a PIL image (not closed here).
        formats: PIL format names to try (e.g. ``["PNG"]``, the type judged from the bytes); None: any.
        max_pixels: refuse images with more than width × height pixels, judged from the header.

    Returns:
        A new RGB image, independent of the source file.

    Raises:
        FileNotFoundError: the path does not exist.
        PixelLimitError: more pixels than `max_pixels`.
        PIL.UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError: not a readable image
            (truncated, corrupt, wrong type); PIL.Image.DecompressionBombError: beyond PIL's own pixel guard.
    """
    if isinstance(source, Image.Image):
        if max_pixels is not None and source.width * source.height > max_pixels:
            raise PixelLimitError(source.width, source.height, max_pixels)
        return _upright_rgb(source)
    fp = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(fp, formats=list(formats) if formats is not None else None) as img:
        if max_pixels is not None and img.width * img.height > max_pixels:
            raise PixelLimitError(img.width, img.height, max_pixels)
        return _upright_rgb(img)
