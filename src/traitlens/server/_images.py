"""Uploaded bytes → a checked RGB image: type from magic bytes, size bounds, decompression-bomb guard.

The client's file name and content type are never trusted: the format is read from the first bytes and
PIL is told to open that format only.
"""

from __future__ import annotations

import logging

from PIL import Image, UnidentifiedImageError

from traitlens.data.images import PixelLimitError, decode_image

__all__ = ["FORMATS", "UploadError", "decode_upload", "sniff_format"]

log = logging.getLogger(__name__)

#: Accepted formats: PIL format name → (readable name, magic-byte test).
FORMATS: dict[str, str] = {"PNG": "PNG", "JPEG": "JPEG", "GIF": "GIF", "WEBP": "WebP", "BMP": "BMP"}


class UploadError(ValueError):
    """A rejected upload; `status` is the HTTP status to answer with, the message says why."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def sniff_format(data: bytes) -> str | None:
    """The PIL format name of `data` from its magic bytes, or None when it is none of `FORMATS`."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data[:2] == b"BM" and len(data) >= 26:
        return "BMP"
    return None


def decode_upload(data: bytes, *, max_bytes: int, max_pixels: int, label: str = "image") -> Image.Image:
    """Check and decode an uploaded image to RGB with the shared decoder (`traitlens.data.images.decode_image`).

    Args:
        data: the file's bytes.
        max_bytes: larger files are refused (413).
        max_pixels: images with more pixels are refused before decoding (422, decompression-bomb guard).
        label: how to name the file in messages (never the client's file name).

    Returns:
        The decoded RGB image, EXIF orientation applied.

    Raises:
        UploadError: 400 empty, 413 too many bytes, 415 not an accepted image type, 422 corrupt, truncated
            or too many pixels.
    """
    if not data:
        raise UploadError(400, f"{label}: the uploaded file is empty")
    if len(data) > max_bytes:
        raise UploadError(413, f"{label}: upload of {len(data)} bytes is larger than the limit of {max_bytes} bytes")
    fmt = sniff_format(data)
    if fmt is None:
        raise UploadError(415, f"{label}: not a supported image (by its content, not its name or content type); "
                               f"accepted: {', '.join(FORMATS.values())}")
    try:
        rgb = decode_image(data, formats=[fmt], max_pixels=max_pixels)
    except PixelLimitError as err:
        raise UploadError(422, f"{label}: {err} (decompression-bomb guard)") from err
    except Image.DecompressionBombError as err:
        raise UploadError(422, f"{label}: image too large to decode safely, more than the limit of {max_pixels} "
                               f"pixels (decompression-bomb guard: {err})") from err
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as err:
        raise UploadError(422, f"{label}: corrupt or truncated {FORMATS[fmt]} file ({err})") from err
    if rgb.width < 1 or rgb.height < 1:
        raise UploadError(422, f"{label}: image has no pixels")
    return rgb
