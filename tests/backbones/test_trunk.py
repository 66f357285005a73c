"""The read-out-rows last block: CDAM's fast path must equal the full block in value and in gradient."""

from __future__ import annotations

import pytest
import torch
from timm.models.deit import VisionTransformerDistilled

from tests.conftest import make_tiny_vit
from traitlens.backbones import trunk_forward
from traitlens.backbones.trunk import head_forward, readout_rows

VARIANTS = {
    "plain": {},
    "no_qkv_bias": {"qkv_bias": False},
    "layerscale_qknorm": {"init_values": 0.1, "qk_norm": True},
    "registers": {"reg_tokens": 2},
    "no_class_token_avg": {"class_token": False, "global_pool": "avg"},
}


def _model(name: str):
    if name == "distilled":
        torch.manual_seed(0)
        return VisionTransformerDistilled(img_size=8, patch_size=4, embed_dim=8, depth=2, num_heads=2,
                                          num_classes=3).double().eval()
    return make_tiny_vit(depth=2, **VARIANTS[name])


@pytest.mark.parametrize("name", [*VARIANTS, "distilled"])
def test_readout_only_equals_full_block_in_value_and_gradient(name: str) -> None:
    model = _model(name)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    tokens = trunk_forward(model, x, 1)
    fast_in = tokens.clone().requires_grad_()
    full_in = tokens.clone().requires_grad_()
    fast = head_forward(model, fast_in, 1, readout_only=True)
    full = head_forward(model, full_in, 1)
    torch.testing.assert_close(fast, full, atol=1e-12, rtol=0)
    weights = torch.randn_like(full)
    (g_fast,) = torch.autograd.grad((fast * weights).sum(), fast_in)
    (g_full,) = torch.autograd.grad((full * weights).sum(), full_in)
    torch.testing.assert_close(g_fast, g_full, atol=1e-12, rtol=0)
    assert g_full.abs().sum() > 0
    expected_rows = {"distilled": 2, "no_class_token_avg": None}.get(name, 1)
    assert readout_rows(model) == expected_rows
