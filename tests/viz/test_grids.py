"""Report figures: labels that fit, and head maps drawn on the image."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.viz import head_grid
from traitlens.viz.grids import _wrap


@pytest.mark.parametrize(("text", "lines"), [
    ("red-head/plain/fan/spike", ["red-head/plain/", "fan/spike"]),
    ("integrated_gradients", ["integrated_", "gradients"]),
    ("explained: red-head/plain/point/no-crest", ["explained:", "red-head/plain/", "point/no-crest"]),
    ("short", ["short"]),
    ("x" * 20, ["x" * 16, "x" * 4]),
])
def test_wrap_breaks_long_labels_and_keeps_every_character(text: str, lines: list[str]) -> None:
    out = _wrap(text)
    assert out.split("\n") == lines and all(len(line) <= 16 for line in lines)
    assert out.replace("\n", "").replace(" ", "") == text.replace(" ", "")


def _png(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_head_grid_draws_the_image_under_the_maps() -> None:
    image = torch.zeros(3, 16, 16)
    image[1] = 1.0  # a green image: only the overlay lets green through
    maps = torch.zeros(2, 4, 4)
    bare, drawn = _png(head_grid(maps)), _png(head_grid(maps, image=image))
    green = lambda a: ((a[..., 1] > 90) & (a[..., 0] < 40) & (a[..., 2] < 60)).sum()  # noqa: E731
    assert green(bare) == 0 and green(drawn) > 100
