"""`evaluate` explains all of an image's targets in one call per batch, and for the methods whose registry entry
says `batched_targets` that call is one forward of the network per batch: with K = 5 targets per image (multi-label
canvases with 5 present classes) CDAM, Grad-CAM, TAM and the native maps run the patch embedding once per batch, on
the batch's images, and their trunk passes are those of one target (docs/performance.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from traitlens.backbones import create_preset
from traitlens.evaluation import evaluate
from traitlens.explain import get_method

C, K, SIZE, N_IMAGES, BATCH = 6, 5, 32, 4, 2


class FiveClasses(torch.utils.data.Dataset):
    """Random canvases with classes 0..4 present (class 5 absent) and one mask per present class."""

    def __len__(self) -> int:
        return N_IMAGES

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        labels = torch.zeros(C)
        labels[:K] = 1
        masks = torch.zeros(K, SIZE, SIZE, dtype=torch.bool)
        for c in range(K):
            masks[c, 6 * c:6 * c + 6, :] = True
        return {"image": torch.rand(3, SIZE, SIZE, generator=g), "labels": labels, "mask": masks, "index": i}


class CountingForwards:
    """Counts the passes through a ViT: the rows of every patch-embedding call and of every first-block call."""

    def __init__(self, vit: nn.Module) -> None:
        self.embed: list[int] = []
        self.block0: list[int] = []
        self._handles = [
            vit.patch_embed.register_forward_pre_hook(lambda _m, a: self.embed.append(int(a[0].shape[0]))),
            vit.blocks[0].register_forward_pre_hook(lambda _m, a: self.block0.append(int(a[0].shape[0]))),
        ]

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def run_counted(model: nn.Module, vit: nn.Module, method: str, options: dict | None = None) -> CountingForwards:
    counter = CountingForwards(vit)
    try:
        res = evaluate(model, FiveClasses(), [method], ["pointing_game"], batch_size=BATCH, progress=False, n_boot=0,
                       method_options={method: options or {}})
    finally:
        counter.close()
    pg = res.results[(method, "pointing_game")]
    assert pg.values.shape == (N_IMAGES, K) and not pg.extras["padded"].any()  # every image explained for all K
    assert pg.extras["classes"].tolist() == [list(range(K))] * N_IMAGES
    return counter


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", C).eval()  # 32 px, patch 8: P = 16
    nn.init.normal_(model.head.weight, std=0.5)
    return model


@pytest.mark.parametrize("method", ["cdam", "gradcam", "gradcam_vit"])
def test_one_forward_per_batch_for_all_five_targets(vit, method):
    assert get_method(method).batched_targets
    counted = run_counted(vit, vit, method)
    # pointing_game runs no model: every pass is the explanation's, one per batch on the batch's 2 images
    assert counted.embed == [BATCH] * (N_IMAGES // BATCH)
    assert counted.block0 == [BATCH] * (N_IMAGES // BATCH)


def test_tam_passes_do_not_grow_with_the_targets(vit):
    """TAM: one embedding per batch, then the clean and the P ablated sequences of each image, whatever K."""
    assert get_method("tam").batched_targets
    counted = run_counted(vit, vit, "tam", {"internal_batch_size": None})
    P = 16
    assert counted.embed == [BATCH] * (N_IMAGES // BATCH)
    assert counted.block0 == [BATCH, BATCH * P] * (N_IMAGES // BATCH)


def test_a_per_target_method_widens_its_passes(vit):
    """The counter does see per-target rows: LRP's default 'expand' replicates each image per target."""
    assert not get_method("lrp").batched_targets
    assert run_counted(vit, vit, "lrp").embed == [BATCH * K] * (N_IMAGES // BATCH)


def test_native_maps_one_forward_per_batch():
    from traitlens.models import PromptCAM

    torch.manual_seed(0)
    backbone = create_preset("traitlens-vit-micro", 0)
    net = PromptCAM(backbone, C).eval()
    counted = run_counted(net, backbone, "native")
    assert counted.embed == counted.block0 == [BATCH] * (N_IMAGES // BATCH)
