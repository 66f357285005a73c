"""AttentionProbe: captured values, hook hygiene, model families (posthoc.md §0)."""

from __future__ import annotations

import pytest
import timm
import torch

from traitlens.backbones import AttentionProbe, UnsupportedAttentionError, split_forward, vit_layout

SMALL = {"pretrained": False, "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2,
         "num_classes": 3}


def _family(name: str) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    if name == "vit":
        model, x = timm.create_model("vit_tiny_patch16_224", **SMALL), torch.randn(2, 3, 32, 32)
    elif name == "deit_distilled":
        model, x = timm.create_model("deit_tiny_distilled_patch16_224", **SMALL), torch.randn(2, 3, 32, 32)
    elif name == "registers":
        model, x = timm.create_model("vit_tiny_patch16_224", reg_tokens=4, **SMALL), torch.randn(2, 3, 32, 32)
    else:  # non-square input through dynamic image size
        model = timm.create_model("vit_tiny_patch16_224", dynamic_img_size=True, **SMALL)
        x = torch.randn(2, 3, 32, 48)
    return model.eval(), x


def _no_hooks(model: torch.nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "registers", "non_square"])
def test_attention_equals_softmax_of_captured_scores(family: str) -> None:
    model, x = _family(family)
    layout = vit_layout(model, tuple(x.shape[-2:]))
    with AttentionProbe(model, blocks="all", capture=("attn", "q", "k", "norm1")) as probe:
        logits = model(x)
    assert torch.allclose(logits, model(x), atol=1e-5)  # the probe does not change the output
    for i in range(len(model.blocks)):
        A = probe.attn[i]
        assert A.shape == (2, layout.num_heads, layout.num_tokens, layout.num_tokens)
        assert torch.allclose(A, probe.scores(i).softmax(-1), atol=1e-6)
        # and by hand from the block's own weights applied to the captured norm1 tokens
        attn = model.blocks[i].attn
        T = probe.norm1[i]
        B, N, D = T.shape
        qkv = attn.qkv(T).reshape(B, N, 3, attn.num_heads, D // attn.num_heads).permute(2, 0, 3, 1, 4)
        by_hand = (qkv[0] * attn.scale @ qkv[1].transpose(-2, -1)).softmax(-1)
        assert torch.allclose(A, by_hand, atol=1e-6)
    assert _no_hooks(model)


def test_layout_reads_prefix_tokens_and_grid() -> None:
    assert vit_layout(_family("deit_distilled")[0]).num_prefix_tokens == 2
    assert vit_layout(_family("registers")[0]).num_prefix_tokens == 5
    model, _x = _family("non_square")
    assert vit_layout(model, (32, 48)).grid == (4, 6)


def test_fused_attention_restored_and_only_hooked_blocks_unfused() -> None:
    model, x = _family("vit")
    for blk in model.blocks:
        blk.attn.fused_attn = True
    with AttentionProbe(model, blocks=[-1], capture=("attn",)):
        assert model.blocks[0].attn.fused_attn is True
        assert model.blocks[1].attn.fused_attn is False
        model(x)
    assert all(blk.attn.fused_attn for blk in model.blocks)


def test_hooks_removed_after_exception() -> None:
    model, x = _family("vit")
    model.blocks[0].attn.fused_attn = True
    with pytest.raises(ZeroDivisionError), AttentionProbe(model, blocks="all", capture=("attn", "q", "k", "norm1",
                                                                                     "block_input", "block_output")):
        model(x)
        raise ZeroDivisionError
    assert _no_hooks(model)
    assert model.blocks[0].attn.fused_attn is True


def test_leaf_rule_gives_gradients_on_frozen_model() -> None:
    model, x = _family("vit")
    for p in model.parameters():
        p.requires_grad_(False)
    with AttentionProbe(model, blocks=[0, 1], capture=("attn",)) as probe:
        y = model(x)[:, 1].sum()
        g0, g1 = probe.grad(y, [probe.attn[0], probe.attn[1]])
    assert g0.abs().sum() > 0 and g1.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_block_io_capture_matches_manual_forward() -> None:
    model, x = _family("registers")
    with torch.no_grad(), AttentionProbe(model, blocks=[1], capture=("block_input", "block_output")) as probe:
        model(x)
        assert torch.allclose(model.blocks[1](probe.block_input[1]), probe.block_output[1], atol=1e-6)


def test_detach_attention_input_cuts_the_path_through_earlier_attention() -> None:
    model, x = _family("vit")
    with AttentionProbe(model, blocks="all", capture=("attn",), detach_attention_input=True) as probe:
        y = model(x)[:, 0].sum()
        (g_first,) = probe.grad(y, [probe.attn[0]])
    with AttentionProbe(model, blocks="all", capture=("attn",)) as probe:
        y = model(x)[:, 0].sum()
        (g_full,) = probe.grad(y, [probe.attn[0]])
    assert not torch.allclose(g_first, g_full)


def test_unreadable_attention_class_is_a_clear_error() -> None:
    eva = timm.create_model("eva02_tiny_patch14_224", pretrained=False, img_size=28, depth=1, num_classes=3)
    with pytest.raises(UnsupportedAttentionError, match="EvaAttention"):
        AttentionProbe(eva, capture=("q", "k"))
    AttentionProbe(eva, capture=("attn",))  # probabilities still pass through attn_drop

    class NoDrop(torch.nn.Module):
        pass

    model, _ = _family("vit")
    model.blocks[1].attn = NoDrop()
    with pytest.raises(UnsupportedAttentionError, match="attn_drop"):
        AttentionProbe(model, blocks=[1], capture=("attn",))


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "registers", "non_square"])
@pytest.mark.parametrize("k", [0, 1, 2])
def test_split_forward_equals_model(family: str, k: int) -> None:
    model, x = _family(family)
    out = split_forward(model, x, k)
    assert torch.allclose(out, model(x), atol=1e-5)
    assert out.requires_grad  # the head part always runs with grad


def test_trunk_blocks_get_no_gradient() -> None:
    model, x = _family("vit")
    split_forward(model, x, 1)[:, 0].sum().backward()
    assert all(p.grad is None for p in model.blocks[0].parameters())
    assert all(p.grad is not None for p in model.blocks[1].parameters())
