"""Tiny TraitShapes + a random micro ViT, shared by the evaluation tests (built in well under a second)."""

from __future__ import annotations

import pytest
import torch


def make_setup(n: int = 6, num_classes: int = 2, slots: tuple[str, ...] = ("head_colour", "wing_pattern")):
    from traitlens.backbones import create_preset
    from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize

    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", num_classes).eval()
    torch.nn.init.normal_(model.head.weight, std=0.5)  # timm zero-initialises the head
    config = TraitShapesConfig(size=32, num_classes=num_classes, slots=slots)
    data = materialize(TraitShapes(config, "test", n), num_workers=0, progress=False)
    return model, data


@pytest.fixture(scope="module")
def micro_setup():
    """(random micro ViT, 6 TraitShapes test images at 32 px with 2 sibling classes)."""
    return make_setup()


@pytest.fixture(scope="session")
def setup_factory():
    """`make_setup` itself, for tests that need other sizes, class counts or slots."""
    return make_setup
