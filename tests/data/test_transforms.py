"""Transforms move boxes, part points and masks exactly with the pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens.data.transforms import (
    CenterCrop,
    Compose,
    RandomHorizontalFlip,
    RandomResizedCrop,
    Resize,
    ToTensor,
    hflip,
)


def rect_sample(h: int = 60, w: int = 80, box: tuple[int, int, int, int] = (10, 20, 50, 44)) -> dict:
    """A black image with a white rectangle; box, mask and two part points describe it."""
    x0, y0, x1, y1 = box
    image = torch.zeros(3, h, w)
    image[:, y0:y1, x0:x1] = 1.0
    mask = torch.zeros(1, h, w, dtype=torch.bool)
    mask[:, y0:y1, x0:x1] = True
    parts = torch.tensor([[x0 + 2.5, y0 + 2.5, 1.0], [x1 - 3.5, y1 - 3.5, 1.0]])
    return {
        "image": image,
        "mask": mask,
        "part_masks": mask.expand(2, -1, -1).clone(),
        "box": torch.tensor(box, dtype=torch.float32),
        "parts": parts,
        "label": 3,
    }


def assert_annotations_follow(sample: dict, tol: float = 1.5) -> None:
    """The box hugs the white pixels, the mask is the white pixels, part points sit on white."""
    white = sample["image"].mean(0) > 0.5
    rows, cols = torch.nonzero(white, as_tuple=True)
    found = torch.tensor([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=torch.float32)
    assert torch.allclose(sample["box"], found, atol=tol), (sample["box"], found)
    mask = sample["mask"][0]
    assert (mask == white).float().mean() > 0.97
    assert torch.equal(sample["part_masks"][0], mask)
    for x, y, vis in sample["parts"].tolist():
        if vis:
            assert white[int(y), int(x)], (x, y)


def test_flip_twice_is_identity_and_flip_moves_annotations() -> None:
    s = rect_sample()
    once = hflip(s)
    assert_annotations_follow(once)
    assert once["box"].tolist() == [30.0, 20.0, 70.0, 44.0]
    twice = hflip(once)
    for key in ("image", "mask", "part_masks", "box", "parts"):
        assert torch.equal(twice[key], s[key]), key
    assert twice["label"] == 3


def test_random_flip_probability_and_seed() -> None:
    s = rect_sample()
    assert torch.equal(RandomHorizontalFlip(0.0)(s)["image"], s["image"])
    assert torch.equal(RandomHorizontalFlip(1.0)(s)["image"], s["image"].flip(-1))
    t = RandomHorizontalFlip(0.5, seed=0)
    seq = [not torch.equal(t(s)["image"], s["image"]) for _ in range(40)]
    t2 = RandomHorizontalFlip(0.5, seed=0)
    assert seq == [not torch.equal(t2(s)["image"], s["image"]) for _ in range(40)]
    assert 8 < sum(seq) < 32
    with pytest.raises(ValueError):
        RandomHorizontalFlip(1.5)


@pytest.mark.parametrize("size", [(30, 40), (120, 100), 45])
def test_resize_moves_box_mask_and_parts(size) -> None:
    out = Resize(size)(rect_sample())
    expected = (size, round(80 * size / 60)) if isinstance(size, int) else size
    assert tuple(out["image"].shape[-2:]) == expected
    assert out["mask"].dtype == torch.bool and out["mask"].shape[-2:] == out["image"].shape[-2:]
    assert_annotations_follow(out)


def test_center_crop_clips_box_and_hides_parts_outside() -> None:
    s = rect_sample(box=(2, 20, 50, 44))
    out = CenterCrop(40)(s)  # window x 20..60, y 10..50
    assert out["image"].shape[-2:] == (40, 40)
    assert out["box"].tolist() == [0.0, 10.0, 30.0, 34.0]
    assert out["parts"][:, 2].tolist() == [0.0, 1.0]  # the first point (x = 4.5) left the crop
    assert_annotations_follow(out)
    # A crop larger than the image pads with zeros and keeps everything.
    big = CenterCrop((80, 100))(s)
    assert big["image"].shape[-2:] == (80, 100) and big["box"].tolist() == [12.0, 30.0, 60.0, 54.0]
    assert_annotations_follow(big)


def test_center_crop_clips_each_of_several_boxes() -> None:
    s = rect_sample(box=(2, 20, 50, 44))
    s["box"] = torch.tensor([[2.0, 20.0, 50.0, 44.0], [30.0, 0.0, 64.0, 64.0]])
    out = CenterCrop(40)(s)  # window x 20..60, y 10..50
    assert out["box"].tolist() == [[0.0, 10.0, 30.0, 34.0], [10.0, 0.0, 40.0, 40.0]]


def test_random_resized_crop_is_seeded_and_consistent() -> None:
    s = rect_sample()
    a = [RandomResizedCrop(32, scale=(0.3, 1.0), seed=5)(s) for _ in range(2)]
    assert torch.equal(a[0]["image"], a[1]["image"])
    t = RandomResizedCrop((32, 48), scale=(0.3, 1.0), seed=1)
    for _ in range(10):
        out = t(s)
        assert out["image"].shape[-2:] == (32, 48)
        if out["mask"].sum() > 20:  # enough of the rectangle left to locate it
            assert_annotations_follow(out, tol=2.0)


def test_compose_and_to_tensor_from_numpy_and_pil() -> None:
    array = np.zeros((20, 30, 3), np.uint8)
    array[5:15, 10:20] = 255
    mask = np.zeros((1, 20, 30), bool)
    mask[:, 5:15, 10:20] = True
    sample = {"image": Image.fromarray(array), "mask": mask, "box": [10, 5, 20, 15]}
    out = Compose([ToTensor(), Resize((40, 60)), RandomHorizontalFlip(1.0)])(sample)
    assert out["image"].dtype == torch.float32 and out["image"].max() == 1.0
    assert out["box"].tolist() == [20.0, 10.0, 40.0, 30.0]
    assert torch.equal(ToTensor()(out)["image"], out["image"])
    grey = ToTensor()({"image": array[..., 0]})["image"]
    assert grey.shape == (1, 20, 30)
