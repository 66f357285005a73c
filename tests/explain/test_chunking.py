"""The memory knob `internal_batch_size` of the attention-gradient methods: it bounds the rows of one pass, never
changes the maps, and 'auto' picks the rows from the estimated memory of a row (docs/performance.md)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from traitlens.backbones.introspect import vit_layout
from traitlens.explain import _gradients, explain
from traitlens.explain.gae import GAE
from traitlens.explain.lrp import LRPTransformerAttribution

METHODS = ("lrp", "gae", "agcam")


def rows_per_pass(model: nn.Module) -> tuple[list[int], object]:
    """Record the batch size of every patch embedding call (one per forward pass)."""
    seen: list[int] = []
    handle = model.patch_embed.register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    return seen, handle


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("multi_target", ["expand", "vjp"])
def test_one_row_per_pass_equals_one_pass(tiny_vit, tiny_images, method, multi_target):
    model = tiny_vit(depth=3, reg_tokens=1)
    x = tiny_images(3)
    maps = {}
    for ibs in (1, None):
        seen, handle = rows_per_pass(model)
        try:
            exp = explain(model, x, method, target="topk:2", multi_target=multi_target, internal_batch_size=ibs,
                          normalize="none")
        finally:
            handle.remove()
        maps[ibs] = exp
        # a pass holds at least one image: its 2 (image, target) rows for 'expand', the image itself for 'vjp'
        per_image = 2 if multi_target == "expand" else 1
        assert max(seen) == (per_image if ibs == 1 else 3 * per_image)
        assert len(seen) == (3 if ibs == 1 else 1)
    torch.testing.assert_close(maps[1].patch_maps, maps[None].patch_maps, atol=1e-6, rtol=0)
    assert torch.equal(maps[1].targets, maps[None].targets)
    assert float(maps[None].patch_maps.abs().max()) > 0


@pytest.mark.parametrize("method", METHODS)
def test_auto_fits_the_budget(tiny_vit, tiny_images, method, monkeypatch):
    """'auto' = ⌊budget / row bytes⌋ rows (at least 1): a tiny budget gives one row per pass, a large one a single
    pass, and the maps are the same."""
    model = tiny_vit(depth=2)
    x = tiny_images(4)
    out = {}
    for budget, expected in ((1, 1), (2**40, 4)):  # top-1: a row is an image
        monkeypatch.setattr(_gradients, "AUTO_BUDGET_BYTES", budget)
        seen, handle = rows_per_pass(model)
        try:
            out[budget] = explain(model, x, method, normalize="none").patch_maps  # default: 'auto'
        finally:
            handle.remove()
        assert max(seen) == expected
    torch.testing.assert_close(out[1], out[2**40], atol=1e-6, rtol=0)


def test_auto_row_estimate_is_one_row_for_vit_b_at_518_px():
    """ViT-B/14 at 518 px (1374 tokens, 12 heads, 12 blocks; the width does not enter the estimate): more than
    2 GiB per row, so 'auto' runs one image per pass; at 224 px with patch 16 it packs many rows."""
    from timm.models.vision_transformer import VisionTransformer

    big = VisionTransformer(img_size=518, patch_size=14, embed_dim=48, depth=12, num_heads=12, reg_tokens=4,
                            num_classes=200).eval()
    layout = vit_layout(big, (518, 518))
    assert layout.num_tokens == 1 + 4 + 37 * 37
    for explainer in (LRPTransformerAttribution(big), GAE(big)):
        row = explainer._row_bytes(layout, 1)
        assert row == pytest.approx((32 if isinstance(explainer, LRPTransformerAttribution) else 48)
                                    * 12 * 1374**2 * 4 / 1, rel=1e-9)
        assert _gradients._rows_per_pass("auto", row) == 1
    small = vit_layout(VisionTransformer(img_size=224, patch_size=16, embed_dim=48, depth=12, num_heads=12), (224, 224))
    assert _gradients._rows_per_pass("auto", GAE(big)._row_bytes(small, 1)) == 2 * 2**30 // (48 * 12 * 197**2 * 4)


def test_lrp_frozen_parameters_same_maps(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    ref = explain(model, x, "lrp", normalize="none").patch_maps
    for p in model.parameters():
        p.requires_grad_(False)
    torch.testing.assert_close(explain(model, x, "lrp", normalize="none").patch_maps, ref, atol=1e-12, rtol=0)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "big"])
def test_bad_internal_batch_size(tiny_vit, bad):
    with pytest.raises(ValueError, match="internal_batch_size"):
        LRPTransformerAttribution(tiny_vit(depth=1), internal_batch_size=bad)


# ----------------------------------------------------------------------------- the forward-only methods

PLAIN = ("rollout", "raw_attention", "tam")


def block_rows(model: nn.Module) -> tuple[list[int], object]:
    """Record the rows of every call of the first block (one per forward pass, TAM's ablated passes included)."""
    seen: list[int] = []
    handle = model.blocks[0].register_forward_pre_hook(lambda _m, args: seen.append(int(args[0].shape[0])))
    return seen, handle


def plain_passes(method: str, internal_batch_size: int | str | None, B: int, P: int) -> list[int]:
    """Rows of each pass by hand: images for rollout and raw_attention; for TAM the B clean sequences, then the
    B·P ablated ones, each split into passes of at most `internal_batch_size` rows."""
    def split(total: int) -> list[int]:
        size = total if internal_batch_size in (None, "auto") else int(internal_batch_size)
        return [min(size, total - s) for s in range(0, total, size)]

    return split(B) + (split(B * P) if method == "tam" else [])


@pytest.mark.parametrize("method", PLAIN)
def test_plain_methods_chunk_1_equals_chunk_b_equals_auto(tiny_vit, tiny_images, method):
    model = tiny_vit(depth=2, reg_tokens=1)  # P = 4 patches
    x = tiny_images(3)
    out = {}
    for ibs in (1, 3, None, "auto"):  # 'auto' on a tiny model: every row in one pass
        seen, handle = block_rows(model)
        try:
            out[ibs] = explain(model, x, method, target="topk:2", internal_batch_size=ibs, normalize="none")
        finally:
            handle.remove()
        assert seen == plain_passes(method, ibs, 3, 4)
    ref = out[None]
    assert float(ref.patch_maps.abs().amax(dim=(-2, -1)).min()) > 0  # no image has an all-zero map
    for ibs in (1, 3, "auto"):
        torch.testing.assert_close(out[ibs].patch_maps, ref.patch_maps, atol=1e-6, rtol=0)
        torch.testing.assert_close(out[ibs].logits, ref.logits, atol=1e-6, rtol=0)
        assert torch.equal(out[ibs].targets, ref.targets)
        if method == "raw_attention":
            torch.testing.assert_close(out[ibs].head_maps, ref.head_maps, atol=1e-6, rtol=0)


@pytest.mark.parametrize("method", PLAIN)
def test_plain_methods_auto_fits_the_budget(tiny_vit, tiny_images, method, monkeypatch):
    """A budget below one row's estimate gives one row per pass (at least one), with the same maps."""
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    monkeypatch.setattr(_gradients, "AUTO_BUDGET_BYTES", 1)
    seen, handle = block_rows(model)
    try:
        got = explain(model, x, method, normalize="none").patch_maps  # default: 'auto'
    finally:
        handle.remove()
    assert seen == plain_passes(method, 1, 2, 4)
    torch.testing.assert_close(got, explain(model, x, method, normalize="none", internal_batch_size=None).patch_maps,
                               atol=1e-6, rtol=0)


def test_plain_methods_auto_estimates_at_vit_b_518_px():
    """ViT-B/14 with 4 registers at 518 px (N = 1374, H = 12, D = 768; the depth does not enter the estimates):
    a pass holds a handful of images for rollout and raw attention and ~40 ablated sequences for TAM, i.e. about
    2 GiB; at 224 px with patch 16 (N = 197) 150–300."""
    from timm.models.vision_transformer import VisionTransformer

    from traitlens.explain.raw_attention import RawAttention
    from traitlens.explain.rollout import AttentionRollout
    from traitlens.explain.tam import TokenAblationMap

    big = VisionTransformer(img_size=518, patch_size=14, embed_dim=768, depth=1, num_heads=12, reg_tokens=4,
                            num_classes=200).eval()
    N, D, H = 1374, 768, 12
    attn, tokens = H * N * N * 4, 12 * N * D * 4
    layout = vit_layout(big, (518, 518))
    assert layout.num_tokens == N
    rollout_row = AttentionRollout(big)._row_bytes(layout)
    assert rollout_row == 3 * attn + 8 * N * N * 4 + tokens  # ≈ 383 MB
    assert _gradients._rows_per_pass("auto", rollout_row) == 5
    assert _gradients._rows_per_pass("auto", RawAttention(big)._row_bytes(layout)) == 2 * 2**30 // (3 * attn + tokens)
    tam = TokenAblationMap(big)
    assert big.blocks[0].attn.fused_attn  # timm's default: the ablated passes need no [H,N,N] tensor
    assert _gradients._rows_per_pass("auto", tam._row_bytes(layout)) == 42
    small = vit_layout(VisionTransformer(img_size=224, patch_size=16, embed_dim=768, depth=1, num_heads=12), (224, 224))
    assert _gradients._rows_per_pass("auto", tam._row_bytes(small)) == 2 * 2**30 // (12 * 197 * 768 * 4)
    n = 197
    assert _gradients._rows_per_pass("auto", AttentionRollout(big)._row_bytes(small)) == 152 == 2 * 2**30 // (
        (3 * H + 8) * n * n * 4 + 12 * n * D * 4)


@pytest.mark.parametrize("method", PLAIN)
@pytest.mark.parametrize("bad", [0, -2, 1.5, False, "many"])
def test_plain_methods_bad_internal_batch_size(tiny_vit, method, bad):
    with pytest.raises(ValueError, match="internal_batch_size"):
        explain(tiny_vit(depth=1), torch.zeros(1, 3, 8, 8, dtype=torch.float64), method, internal_batch_size=bad)


@pytest.mark.parametrize("method", ["smoothgrad", "integrated_gradients"])
def test_pixel_gradient_auto_default_equals_one_pass(tiny_vit, tiny_images, method):
    """SmoothGrad and IG default to 'auto'; the maps equal one pass and a fixed chunk of 3 rows to 1e-6."""
    from traitlens.explain.integrated_gradients import IntegratedGradients
    from traitlens.explain.smoothgrad import SmoothGrad

    model, x = tiny_vit(depth=2), tiny_images(3)
    cls = SmoothGrad if method == "smoothgrad" else IntegratedGradients
    assert cls(model).internal_batch_size == "auto"
    runs = [explain(model, x, method=method, target="topk:2", internal_batch_size=size,
                    **({"generator": torch.Generator().manual_seed(3)} if method == "smoothgrad" else {}))
            for size in ("auto", None, 3)]
    for other in runs[1:]:
        torch.testing.assert_close(other.patch_maps, runs[0].patch_maps, atol=1e-6, rtol=1e-5)


def test_pixel_gradient_row_estimate_at_vit_b_518_px():
    """ViT-B/14 with 4 registers at 518 px, 12 blocks: a row is 12 × (3 attention tensors + the tokens) ≈ 1.3 GB, so
    'auto' runs one row per pass (the former default, 16 rows, needed ~21 GB); a CNN keeps 16 rows."""
    from timm.models.vision_transformer import VisionTransformer

    from traitlens.explain._pixel import FALLBACK_ROWS, gradient_row_bytes

    big = VisionTransformer(img_size=518, patch_size=14, embed_dim=768, depth=12, num_heads=12, reg_tokens=4,
                            num_classes=200).eval()
    N, D, H = 1374, 768, 12
    row = gradient_row_bytes(big, torch.zeros(1, 3, 518, 518))
    assert row == 12 * (3 * H * N * N * 4 + 12 * N * D * 4)
    assert _gradients._rows_per_pass("auto", row) == 1
    cnn = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert _gradients._rows_per_pass("auto", gradient_row_bytes(cnn, torch.zeros(1, 3, 32, 32))) == FALLBACK_ROWS
