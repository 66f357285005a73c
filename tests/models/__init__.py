"""Tests of the interpretable models (models.md). Shared tiny builders live here (no extra conftest)."""

from __future__ import annotations

import pytest
import timm
import torch

SMALL_VIT = {"img_size": 16, "patch_size": 4, "embed_dim": 16, "depth": 2, "num_heads": 4}


def make_vit(seed: int = 0, dtype: torch.dtype = torch.float64, **overrides) -> torch.nn.Module:
    """A tiny random timm ViT (4×4 grid, 4 heads), float64 for bit-level oracles; no classifier."""
    torch.manual_seed(seed)
    args = {**SMALL_VIT, **overrides}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, **args)
    model.traitlens_config = {"kind": "timm", "architecture": "vit_tiny_patch16_224", "model_args": args,
                              "num_classes": 0, "mean": [0.5] * 3, "std": [0.5] * 3}
    model.pretrained_cfg = {**model.pretrained_cfg, "mean": (0.5,) * 3, "std": (0.5,) * 3}
    return model.to(dtype).eval()


def make_cnn(seed: int = 0) -> torch.nn.Module:
    """A small random timm ResNet (stride 32) for the CNN adapters."""
    torch.manual_seed(seed)
    return timm.create_model("resnet10t", pretrained=False, num_classes=0).eval()


class TensorSet(torch.utils.data.Dataset):
    """In-memory dataset with `images` (float [N,3,H,W] in [0,1]) and `labels` tensors: the trainer's fast path."""

    def __init__(self, n: int = 16, size: int = 16, classes: int = 3, seed: int = 0, as_dicts: bool = False) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, size, size, generator=g)
        self.labels = torch.arange(n) % classes
        self.as_dicts = as_dicts
        if as_dicts:  # hide the attributes so the trainer collates dict items instead
            self._images, self._labels = self.images, self.labels
            del self.images, self.labels

    def __len__(self) -> int:
        return len(self._labels if self.as_dicts else self.labels)

    def __getitem__(self, i: int) -> dict:
        images = self._images if self.as_dicts else self.images
        labels = self._labels if self.as_dicts else self.labels
        return {"image": images[i], "label": int(labels[i])}


@pytest.fixture(autouse=True)
def one_thread():
    """Run these tiny-tensor tests on one intra-op thread (restored afterwards).

    With the session's 2 threads, a shared, oversubscribed machine makes tiny backward passes ~100× slower
    (thread hand-off dominates); one thread is also faster on an idle machine at these sizes.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
