"""Transforms on sample dicts that move boxes, part points and masks with the pixels.

A sample is a dict with ``image`` (float tensor [C, H, W]) and optionally ``box`` (xyxy, float
pixels, pixel ``i`` spans ``[i, i + 1)``), ``parts`` ([P, 3]: x, y, visible) and mask tensors
(``mask``, ``part_masks``, ``trait_masks``: bool [..., H, W]). Every geometric transform applies
the same mapping to all of them (datasets.md: "a transform that moves pixels moves annotations
too"); other keys pass through unchanged. Images are resized bilinearly with antialiasing, masks
with nearest-neighbour, so masks stay boolean.

Example:
    >>> t = Compose([Resize(72), RandomResizedCrop(64, seed=0), RandomHorizontalFlip(0.5, seed=1)])
    >>> sample = t(sample)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from traitlens.data.images import to_rgb

__all__ = [
    "MASK_KEYS",
    "CenterCrop",
    "Compose",
    "RandomHorizontalFlip",
    "RandomResizedCrop",
    "Resize",
    "ToTensor",
    "hflip",
]

MASK_KEYS: tuple[str, ...] = ("mask", "part_masks", "trait_masks")
"""Keys holding pixel masks [..., H, W] that follow the image."""

Sample = dict[str, Any]


def _size_of(sample: Sample) -> tuple[int, int]:
    h, w = sample["image"].shape[-2:]
    return int(h), int(w)


def _pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either seed or generator, not both")
    return torch.Generator().manual_seed(seed) if seed is not None else generator


class Compose:
    """Apply transforms in order.

    Args:
        transforms: callables taking and returning a sample dict.
    """

    def __init__(self, transforms: Sequence[Callable[[Sample], Sample]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, sample: Sample) -> Sample:
        for t in self.transforms:
            sample = t(sample)
        return sample

    def __repr__(self) -> str:
        return f"Compose({self.transforms!r})"


class ToTensor:
    """Convert a PIL / numpy sample to tensors: image float [C,H,W] in [0,1], masks bool, boxes float.

    Tensors pass through unchanged, so it is safe to apply twice.
    """

    def __call__(self, sample: Sample) -> Sample:
        out = dict(sample)
        out["image"] = _image_to_tensor(sample["image"])
        for key in MASK_KEYS:
            if key in out and not isinstance(out[key], torch.Tensor):
                out[key] = torch.from_numpy(np.asarray(out[key]) > 0)
        for key in ("box", "parts"):
            if key in out and not isinstance(out[key], torch.Tensor):
                out[key] = torch.as_tensor(np.asarray(out[key], dtype=np.float32))
        return out

    def __repr__(self) -> str:
        return "ToTensor()"


def _image_to_tensor(image: Any) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image) if image.mode not in ("L", "RGB") else image)  # 16-bit greys: high byte
    array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    tensor = torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    return tensor.float().div_(255.0) if array.dtype == np.uint8 else tensor.float()


def _resize(sample: Sample, out_h: int, out_w: int) -> Sample:
    h, w = _size_of(sample)
    out = dict(sample)
    image = sample["image"]
    out["image"] = F.interpolate(
        image[None].float(), size=(out_h, out_w), mode="bilinear", align_corners=False, antialias=True
    )[0].clamp_(0.0, 1.0)
    for key in MASK_KEYS:
        if key in sample:
            m = sample[key]
            flat = m.reshape(-1, 1, h, w).float()
            # nearest-exact samples at pixel centres (plain "nearest" is shifted by half a pixel).
            res = F.interpolate(flat, size=(out_h, out_w), mode="nearest-exact")
            out[key] = (res > 0.5).reshape(*m.shape[:-2], out_h, out_w)
    sx, sy = out_w / w, out_h / h
    if "box" in sample:
        out["box"] = sample["box"] * torch.tensor([sx, sy, sx, sy], dtype=sample["box"].dtype)
    if "parts" in sample:
        parts = sample["parts"].clone()
        parts[..., 0] *= sx
        parts[..., 1] *= sy
        out["parts"] = parts
    return out


def _crop(sample: Sample, top: int, left: int, height: int, width: int) -> Sample:
    """Crop a window that may extend past the image (the outside is zero / False)."""
    h, w = _size_of(sample)
    y0, y1 = max(top, 0), min(top + height, h)
    x0, x1 = max(left, 0), min(left + width, w)
    out = dict(sample)
    for key in ("image", *MASK_KEYS):
        if key in sample:
            src = sample[key]
            dst = src.new_zeros((*src.shape[:-2], height, width))
            if y1 > y0 and x1 > x0:
                dst[..., y0 - top : y1 - top, x0 - left : x1 - left] = src[..., y0:y1, x0:x1]
            out[key] = dst
    if "box" in sample:
        box = sample["box"] - torch.tensor([left, top, left, top], dtype=sample["box"].dtype)
        box[..., 0::2] = box[..., 0::2].clamp(0, width)  # boxes may be [4] or [n, 4]
        box[..., 1::2] = box[..., 1::2].clamp(0, height)
        out["box"] = box
    if "parts" in sample:
        parts = sample["parts"].clone()
        parts[..., 0] -= left
        parts[..., 1] -= top
        inside = (parts[..., 0] >= 0) & (parts[..., 0] < width) & (parts[..., 1] >= 0) & (parts[..., 1] < height)
        parts[..., 2] = parts[..., 2] * inside
        out["parts"] = parts
    return out


class Resize:
    """Resize to ``(h, w)``, or so the shorter side is ``size`` when given an int.

    Args:
        size: int (shorter side, aspect kept) or (height, width) (squash).
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = size

    def __call__(self, sample: Sample) -> Sample:
        h, w = _size_of(sample)
        if isinstance(self.size, int):
            short = min(h, w)
            out_h, out_w = round(h * self.size / short), round(w * self.size / short)
        else:
            out_h, out_w = _pair(self.size)
        return sample if (out_h, out_w) == (h, w) else _resize(sample, out_h, out_w)

    def __repr__(self) -> str:
        return f"Resize({self.size})"


class CenterCrop:
    """Crop the centre ``size`` window (zero-padded when the image is smaller).

    Args:
        size: int or (height, width).
    """

    def __init__(self, size: int | Sequence[int]) -> None:
        self.size = _pair(size)

    def __call__(self, sample: Sample) -> Sample:
        h, w = _size_of(sample)
        ch, cw = self.size
        return _crop(sample, round((h - ch) / 2), round((w - cw) / 2), ch, cw)

    def __repr__(self) -> str:
        return f"CenterCrop({self.size})"


class RandomResizedCrop:
    """Crop a random area/aspect window and resize it to ``size`` (torchvision's sampling).

    Args:
        size: output int or (height, width).
        scale: range of the window area as a fraction of the image.
        ratio: range of the window aspect ratio (w / h).
        seed: seeds a private generator (reproducible sequence); exclusive with ``generator``.
        generator: a torch generator; default is torch's global RNG (seeded per DataLoader worker).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.size = _pair(size)
        self.scale = scale
        self.ratio = ratio
        self.generator = _generator(seed, generator)

    def window(self, height: int, width: int) -> tuple[int, int, int, int]:
        """Sample (top, left, h, w) for an image of the given size."""
        area = height * width
        log_ratio = torch.log(torch.tensor(self.ratio))
        for _ in range(10):
            target = area * torch.empty(1).uniform_(*self.scale, generator=self.generator).item()
            aspect = math.exp(torch.empty(1).uniform_(*log_ratio.tolist(), generator=self.generator).item())
            w = round(math.sqrt(target * aspect))
            h = round(math.sqrt(target / aspect))
            if 0 < w <= width and 0 < h <= height:
                top = int(torch.randint(0, height - h + 1, (1,), generator=self.generator))
                left = int(torch.randint(0, width - w + 1, (1,), generator=self.generator))
                return top, left, h, w
        # Fallback: the whole image clipped to the ratio range, centred.
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, round(width / min(self.ratio))
        elif in_ratio > max(self.ratio):
            h, w = height, round(height * max(self.ratio))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, sample: Sample) -> Sample:
        top, left, h, w = self.window(*_size_of(sample))
        return _resize(_crop(sample, top, left, h, w), *self.size)

    def __repr__(self) -> str:
        return f"RandomResizedCrop({self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``; ``x -> W - x`` for boxes and part points.

    Part names such as "left eye" are not swapped.

    Args:
        p: flip probability.
        seed: seeds a private generator; exclusive with ``generator``.
        generator: a torch generator; default is torch's global RNG.
    """

    def __init__(self, p: float = 0.5, seed: int | None = None, generator: torch.Generator | None = None) -> None:
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = p
        self.generator = _generator(seed, generator)

    def __call__(self, sample: Sample) -> Sample:
        if torch.rand(1, generator=self.generator).item() >= self.p:
            return sample
        return hflip(sample)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def hflip(sample: Sample) -> Sample:
    """Mirror a sample left-right, annotations included."""
    _, w = _size_of(sample)
    out = dict(sample)
    for key in ("image", *MASK_KEYS):
        if key in sample:
            out[key] = sample[key].flip(-1)
    if "box" in sample:
        x0, y0, x1, y1 = sample["box"].unbind(-1)
        out["box"] = torch.stack([w - x1, y0, w - x0, y1], -1)
    if "parts" in sample:
        parts = sample["parts"].clone()
        parts[..., 0] = w - parts[..., 0]
        out["parts"] = parts
    return out
