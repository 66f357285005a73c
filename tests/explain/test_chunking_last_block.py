"""The memory knob `internal_batch_size` of the last-block methods (the CDAM family, both Grad-CAMs) and of
input × gradient: it bounds the rows of every pass (trunk, clean and gradient passes), never changes the maps, and
defaults to 'auto', which sizes the passes from the estimated memory of a row (docs/performance.md)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn as nn

from tests.conftest import make_tiny_native
from traitlens.backbones.introspect import vit_layout
from traitlens.explain import _gradients, explain, get_method
from traitlens.explain._base import last_block_row_bytes, sequence_bytes

LAST_BLOCK = ("cdam", "smooth_cdam", "integrated_cdam", "gradcam_vit", "gradcam")
OPTIONS = {"smooth_cdam": {"n_samples": 3}, "integrated_cdam": {"n_steps": 3}}


@contextmanager
def passes(model: nn.Module) -> Iterator[dict[str, list[int]]]:
    """Rows of every call of the patch embedding (trunk passes) and of the last block's norm1 (every last-block
    pass; the head may run the block functionally, never without its norm1)."""
    seen: dict[str, list[int]] = {"trunk": [], "last": []}
    hooks = [model.patch_embed.register_forward_pre_hook(lambda _m, a: seen["trunk"].append(int(a[0].shape[0]))),
             model.blocks[-1].norm1.register_forward_pre_hook(lambda _m, a: seen["last"].append(int(a[0].shape[0])))]
    try:
        yield seen
    finally:
        for h in hooks:
            h.remove()


def run(model: nn.Module, x: torch.Tensor, method: str, **kw: object):
    """`explain` with fresh seeded noise for Smooth CDAM, so that runs with different chunks draw the same noise."""
    extra = {"generator": torch.Generator().manual_seed(7)} if method == "smooth_cdam" else {}
    return explain(model, x, method, normalize="none", **OPTIONS.get(method, {}), **extra, **kw)


def split(total: int, size: int | None) -> list[int]:
    size = size or total
    return [min(size, total - s) for s in range(0, total, size)]


@pytest.mark.parametrize("method", LAST_BLOCK)
@pytest.mark.parametrize(("target", "multi_target"), [("top1", "expand"), ("topk:2", "expand"), ("topk:2", "vjp")])
def test_rows_per_pass_never_change_the_maps(tiny_vit, tiny_images, method, target, multi_target):
    model, x = tiny_vit(depth=2, reg_tokens=1), tiny_images(3)
    K = 2 if target == "topk:2" else 1
    # Grad-CAM keeps an image's K 'expand' rows in one pass; the CDAM family splits (image, target) pairs.
    per_image = K if method.startswith("gradcam") and multi_target == "expand" else 1
    # One pass per stage: the CDAM family resolves 'expand' targets (and the variants their clean rows) first.
    stages = 1 if method.startswith("gradcam") or (method == "cdam" and (K == 1 or multi_target == "vjp")) else 2
    out = {}
    for ibs in (1, 2, None, "auto"):
        with passes(model) as seen:
            out[ibs] = run(model, x, method, target=target, multi_target=multi_target, internal_batch_size=ibs)
        if isinstance(ibs, int):
            assert seen["trunk"] == split(3, ibs)  # the no-grad trunk runs in chunks of images too
            assert max(seen["last"]) <= max(ibs, per_image)
            assert len(seen["last"]) > stages
        else:  # None, and 'auto' on a tiny model: every stage in one pass
            assert seen["trunk"] == [3]
            assert len(seen["last"]) == stages
    ref = out[None]
    assert float(ref.patch_maps.abs().max()) > 0  # (Grad-CAM's ReLU may zero a whole map of a random tiny ViT)
    for ibs in (1, 2, "auto"):
        torch.testing.assert_close(out[ibs].patch_maps, ref.patch_maps, atol=1e-6, rtol=0)
        torch.testing.assert_close(out[ibs].logits, ref.logits, atol=1e-6, rtol=0)
        assert torch.equal(out[ibs].targets, ref.targets)


@pytest.mark.parametrize("method", [*LAST_BLOCK, "input_x_gradient"])
def test_default_is_auto_and_a_tiny_budget_runs_one_image_per_pass(tiny_vit, tiny_images, method, monkeypatch):
    info = get_method(method)
    assert info.cls(tiny_vit(depth=1)).internal_batch_size == "auto"
    model, x = tiny_vit(depth=2), tiny_images(3)
    one_pass = run(model, x, method, target="topk:2", multi_target="vjp", internal_batch_size=None)
    monkeypatch.setattr(_gradients, "AUTO_BUDGET_BYTES", 1)
    with passes(model) as seen:
        got = run(model, x, method, target="topk:2", multi_target="vjp")  # a 'vjp' row is one image
    assert set(seen["trunk"]) == {1} and set(seen["last"]) == {1}
    torch.testing.assert_close(got.patch_maps, one_pass.patch_maps, atol=1e-6, rtol=0)
    assert torch.equal(got.targets, one_pass.targets)


@pytest.mark.parametrize("multi_target", ["expand", "vjp"])
def test_input_x_gradient_chunks_equal_one_pass(tiny_vit, tiny_images, multi_target):
    model, x = tiny_vit(depth=2), tiny_images(3)
    out = {}
    for ibs in (1, 2, None):
        with passes(model) as seen:
            out[ibs] = explain(model, x, "input_x_gradient", target="topk:2", multi_target=multi_target,
                               internal_batch_size=ibs, normalize="none")
        rows = 3 * 2 if multi_target == "expand" else 3  # 'expand' replicates every image per target
        grad_passes = split(rows, ibs)
        logit_passes = split(3, ibs) if multi_target == "expand" else []  # top-k known before replicating
        assert seen["trunk"] == logit_passes + grad_passes
    for ibs in (1, 2):
        torch.testing.assert_close(out[ibs].patch_maps, out[None].patch_maps, atol=1e-6, rtol=0)
        torch.testing.assert_close(out[ibs].extras["pixel_maps"], out[None].extras["pixel_maps"], atol=1e-6, rtol=0)
        assert torch.equal(out[ibs].targets, out[None].targets)


@pytest.mark.parametrize("method", ["smooth_cdam", "integrated_cdam"])
def test_noise_is_the_same_whatever_the_chunks(tiny_vit, tiny_images, method):
    """The noise is drawn image by image as the passes reach it: a shared generator and per-image generators give
    the same maps for one row per pass as for one pass, and batched equals image by image."""
    model, x = tiny_vit(depth=2), tiny_images(3)
    opts = {"noise_level": 0.2, **OPTIONS[method]}
    for gens in (lambda: torch.Generator().manual_seed(5),
                 lambda: [torch.Generator().manual_seed(10 + b) for b in range(3)]):
        maps = [explain(model, x, method, normalize="none", generator=gens(), internal_batch_size=ibs, **opts)
                for ibs in (1, 4, None)]
        for m in maps[1:]:
            torch.testing.assert_close(m.patch_maps, maps[0].patch_maps, atol=1e-6, rtol=0)
    per_image = torch.cat([explain(model, x[b:b + 1], method, normalize="none", internal_batch_size=1,
                                   generator=[torch.Generator().manual_seed(10 + b)], **opts).patch_maps
                           for b in range(3)])
    torch.testing.assert_close(per_image, maps[0].patch_maps, atol=1e-6, rtol=0)
    noiseless = explain(model, x, method, normalize="none", **{**opts, "noise_level": 0.0})
    assert float((noiseless.patch_maps - maps[0].patch_maps).abs().max()) > 1e-4  # the noise is really there


@pytest.mark.parametrize("method", ["cdam", "gradcam_vit", "smooth_cdam"])
def test_prompted_vit_chunks_equal_one_pass(method):
    net, _ = make_tiny_native("promptcam")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    out = {ibs: run(net, x, method, target="topk:2", internal_batch_size=ibs) for ibs in (1, None)}
    torch.testing.assert_close(out[1].patch_maps, out[None].patch_maps, atol=1e-5, rtol=1e-5)
    assert torch.equal(out[1].targets, out[None].targets)


def test_cnn_gradcam_feature_passes(monkeypatch):
    """Classic Grad-CAM on a CNN: 'auto' runs the no-grad features in passes of `CNN_FEATURE_ROWS` images and the
    head rows from the feature map's size; one image per pass gives the maps of one pass."""
    from traitlens.explain import gradcam

    class Cnn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.fc = nn.Linear(4, 3)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.conv(x))

        def forward_head(self, f: torch.Tensor) -> torch.Tensor:
            return self.fc(f.mean((-2, -1)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.forward_head(self.forward_features(x))

    torch.manual_seed(0)
    net, x = Cnn().double().eval(), torch.randn(5, 3, 8, 8, dtype=torch.float64)
    seen: list[int] = []
    net.conv.register_forward_pre_hook(lambda _m, a: seen.append(int(a[0].shape[0])))
    maps = {}
    for rows, ibs, expected in ((16, "auto", [5]), (2, "auto", [2, 2, 1]), (2, None, [5]), (2, 1, [1] * 5)):
        monkeypatch.setattr(gradcam, "CNN_FEATURE_ROWS", rows)
        seen.clear()
        maps[rows, ibs] = explain(net, x, "gradcam", target="topk:2", normalize="none", internal_batch_size=ibs)
        assert seen == expected
    for key in ((2, "auto"), (2, None), (2, 1)):
        torch.testing.assert_close(maps[key].patch_maps, maps[16, "auto"].patch_maps, atol=1e-9, rtol=0)
    assert float(maps[16, "auto"].patch_maps.max()) > 0


def test_last_block_estimates_at_vit_b():
    """ViT-B/14 + 4 registers at 518 px (N = 1374): a last-block row is 3 attention tensors and 2 × 12·N·D token
    values (≈ 0.4 GB), so 'auto' runs 5 rows per pass, and the no-grad trunk ~42 images (fused attention); at
    224 px with patch 16 (N = 197) 106 rows and ~290 images."""
    from timm.models.vision_transformer import VisionTransformer

    N, D, H = 1374, 768, 12
    big = VisionTransformer(img_size=518, patch_size=14, embed_dim=D, depth=1, num_heads=H, reg_tokens=4,
                            num_classes=200).eval()
    assert vit_layout(big, (518, 518)).num_tokens == N
    row = last_block_row_bytes(big, N, H)
    assert row == 3 * H * N * N * 4 + 2 * 12 * N * D * 4
    assert _gradients._rows_per_pass("auto", row) == 5
    assert _gradients._rows_per_pass("auto", sequence_bytes(big, N, H)) == 42
    n = 197
    assert _gradients._rows_per_pass("auto", last_block_row_bytes(big, n, H)) == 2 * 2**30 // (
        3 * H * n * n * 4 + 24 * n * D * 4) == 106
    big.blocks[0].attn.fused_attn = False  # an unfused block also holds its scores and probabilities
    assert sequence_bytes(big, N, H) == 12 * N * D * 4 + 2 * H * N * N * 4
