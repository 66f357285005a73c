"""AGCAM (posthoc.md §4): the four oracles, batching, targets, hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.introspect import vit_layout
from traitlens.backbones.trunk import trunk_forward
from traitlens.explain import explain, get_method
from traitlens.explain.agcam import AGCAM


def functional_block(blk: nn.Module, x: torch.Tensor, detach_attention_input: bool):
    """A timm Block by hand from its weights: (output, S, A), with the attention input optionally detached."""
    B, N, D = x.shape
    H = blk.attn.num_heads
    dh = D // H
    t = F.layer_norm(x, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
    if detach_attention_input:
        t = t.detach()
    qkv = F.linear(t, blk.attn.qkv.weight, blk.attn.qkv.bias).reshape(B, N, 3, H, dh).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    s = q @ k.transpose(-2, -1) / dh**0.5
    a = s.softmax(-1)
    o = (a @ v).transpose(1, 2).reshape(B, N, D)
    x = x + F.linear(o, blk.attn.proj.weight, blk.attn.proj.bias)
    h = F.layer_norm(x, (D,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
    h = F.linear(F.gelu(F.linear(h, blk.mlp.fc1.weight, blk.mlp.fc1.bias)), blk.mlp.fc2.weight, blk.mlp.fc2.bias)
    return x + h, s, a


def hand_agcam(model: nn.Module, images: torch.Tensor, classes: torch.Tensor, detach: bool) -> torch.Tensor:
    """Σ_k Σ_h sigmoid(S^k_h[0,n_p:]) ⊙ ReLU(∂y/∂A^k_h[0,n_p:]) from a functional model, [B,P]."""
    n_p = model.num_prefix_tokens
    x = trunk_forward(model, images, 0)
    scores, attns = [], []
    for blk in model.blocks:
        x, s, a = functional_block(blk, x, detach)
        scores.append(s)
        attns.append(a)
    logits = model.head(model.norm(x)[:, 0])
    torch.testing.assert_close(logits, model(images), atol=1e-12, rtol=0)
    y = logits.gather(1, classes[:, None]).sum()
    grads = torch.autograd.grad(y, attns)
    return sum((s[:, :, 0, n_p:].sigmoid() * F.relu(g[:, :, 0, n_p:])).sum(1)
               for s, g in zip(scores, grads, strict=True))


def assert_clean(model: nn.Module, fused: list[bool]) -> None:
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(mod, attr, {}), f"{attr} left on {name or 'model'}"
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert all(p.grad is None for p in model.parameters())


def test_registry_metadata():
    info = get_method("agcam")
    assert (info.signed, info.class_specific, info.needs_grad) == (False, True, True)
    assert (info.default_upsample, info.default_norm) == ("bilinear", "minmax")


def test_oracle1_one_block_by_hand(tiny_vit, tiny_images):
    """Ĝ_h[j] = (W_O,hᵀ w_c)·v_{h,j}, Ŝ_h[j] = (W_Q,h T_0 + b)·(W_K,h T_j + b)/√d_h (final norm Identity, MLP 0)."""
    model = tiny_vit(depth=1, seed=11)
    blk = model.blocks[0]
    with torch.no_grad():
        blk.mlp.fc2.weight.zero_()
        blk.mlp.fc2.bias.zero_()
    model.norm = nn.Identity()
    x = tiny_images(2)
    exp = explain(model, x, "agcam", target="topk:3")
    D, H = 8, 2
    dh = D // H
    with torch.no_grad():
        T = blk.norm1(trunk_forward(model, x, 0))  # [B,N,D]
        W, bias = blk.attn.qkv.weight, blk.attn.qkv.bias
        W_O = blk.attn.proj.weight
        for k in range(3):
            expected = torch.zeros(2, 4, dtype=torch.float64)
            for b in range(2):
                w_c = model.head.weight[exp.targets[b, k]]
                for h in range(H):
                    hs = slice(h * dh, (h + 1) * dh)
                    q0 = W[:D][hs] @ T[b, 0] + bias[:D][hs]
                    keys = T[b] @ W[D:2 * D][hs].T + bias[D:2 * D][hs]  # [N,dh]
                    v = T[b] @ W[2 * D:][hs].T + bias[2 * D:][hs]  # [N,dh]
                    s_hat = (keys @ q0 / dh**0.5)[1:]
                    g_hat = (v @ (W_O[:, hs].T @ w_c))[1:]
                    expected[b] += s_hat.sigmoid() * g_hat.clamp(min=0)
            torch.testing.assert_close(exp.patch_maps[:, k].reshape(2, 4), expected, atol=1e-10, rtol=0)


def test_oracle2_softmax_of_captured_scores(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, seed=12)
    x = tiny_images(2)
    layout = vit_layout(model, (8, 8))
    for query, rows in (("cls", slice(0, 1)), ("mean_patches", slice(1, 5))):
        logits, scores, attn = AGCAM(model, query=query)._forward(x, layout)
        torch.testing.assert_close(logits, model(x))
        for s, a in zip(scores, attn, strict=True):
            assert s.shape == (2, 2, rows.stop - rows.start, 5)  # only the query rows of S are stored
            torch.testing.assert_close(s.softmax(-1), a.detach()[:, :, rows], atol=1e-12, rtol=0)


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_oracle3_detached_graph_two_blocks(tiny_vit, tiny_images, reg_tokens):
    model = tiny_vit(depth=2, seed=13, reg_tokens=reg_tokens)
    x = tiny_images(3)
    for c in range(3):
        classes = torch.full((3,), c)
        ours = explain(model, x, "agcam", target=c).patch_maps[:, 0].reshape(3, 4)
        detached = hand_agcam(model, x, classes, detach=True)
        undetached = hand_agcam(model, x, classes, detach=False)
        torch.testing.assert_close(ours, detached, atol=1e-12, rtol=1e-9)
        assert not torch.allclose(ours, undetached, atol=1e-6, rtol=1e-4)
        flag_off = explain(model, x, "agcam", target=c, detach_attention_input=False).patch_maps[:, 0].reshape(3, 4)
        torch.testing.assert_close(flag_off, undetached, atol=1e-12, rtol=1e-9)


def test_oracle4_nonnegative_and_sum_equals_mean_after_minmax(tiny_vit, tiny_images):
    model = tiny_vit(depth=3, seed=14, img=16)  # 4×4 grid
    x = tiny_images(3, img=16)
    summed = explain(model, x, "agcam", target="topk:3")
    assert (summed.patch_maps >= 0).all() and (summed.head_maps >= 0).all()
    meaned = explain(model, x, "agcam", target="topk:3", head_fusion="mean", layer_fusion="mean")
    torch.testing.assert_close(meaned.patch_maps * (2 * 3), summed.patch_maps)
    torch.testing.assert_close(meaned.maps, summed.maps, atol=1e-12, rtol=1e-9)
    maxed = explain(model, x, "agcam", target="topk:3", head_fusion="max", layer_fusion="max")
    assert torch.isfinite(maxed.patch_maps).all()
    assert (maxed.patch_maps <= summed.patch_maps + 1e-12).all()
    # head_maps: per head, fused over layers; their head sum is the map.
    torch.testing.assert_close(summed.head_maps.sum(2), summed.patch_maps)


def test_batched_multi_target_and_chunks(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, seed=15)
    x = tiny_images(3)
    ref = explain(model, x, "agcam", target="topk:3")  # 'vjp' by default
    expand = explain(model, x, "agcam", target="topk:3", multi_target="expand")
    torch.testing.assert_close(expand.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(expand.head_maps, ref.head_maps, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(expand.logits, ref.logits)
    for b in range(3):
        single = explain(model, x[b:b + 1], "agcam", target="topk:3")
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-12, rtol=1e-9)
    for k in range(3):
        one = explain(model, x, "agcam", target=ref.targets[:, k])
        torch.testing.assert_close(one.patch_maps[:, 0], ref.patch_maps[:, k], atol=1e-12, rtol=1e-9)
    for mode in ("vjp", "expand"):
        chunked = explain(model, x, "agcam", target="topk:3", multi_target=mode, internal_batch_size=2)
        torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
        assert torch.equal(chunked.targets, ref.targets)


def test_target_space_prob(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, seed=16)
    x = tiny_images(2)
    logit = explain(model, x, "agcam", target=1)
    prob = explain(model, x, "agcam", target=1, target_space="prob")
    assert not torch.allclose(logit.patch_maps, prob.patch_maps)
    vjp = explain(model, x, "agcam", target=[[0, 1], [2, 0]], target_space="log_prob")
    exp = explain(model, x, "agcam", target=[[0, 1], [2, 0]], target_space="log_prob", multi_target="expand")
    torch.testing.assert_close(vjp.patch_maps, exp.patch_maps, atol=1e-12, rtol=1e-9)


def test_fixed_targets_follow_their_images_into_chunks(tiny_vit, tiny_images):
    """Different fixed targets per image: every chunk must pick its own images' rows."""
    model = tiny_vit(depth=2, seed=17)
    x = tiny_images(3)
    targets = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    ref = explain(model, x, "agcam", target=targets)
    assert torch.equal(ref.targets, torch.tensor(targets))
    for b in range(3):
        single = explain(model, x[b:b + 1], "agcam", target=[targets[b]])
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-12, rtol=1e-9)
    for mode in ("vjp", "expand"):
        for ibs in (1, 3, 4):
            chunked = explain(model, x, "agcam", target=targets, multi_target=mode, internal_batch_size=ibs)
            torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
            assert torch.equal(chunked.targets, ref.targets)


def test_frozen_parameters_same_maps(tiny_vit, tiny_images):
    """Frozen weights: the leaf rule makes A differentiable and the maps do not change."""
    model = tiny_vit(depth=2, seed=18)
    x = tiny_images(2)
    ref = explain(model, x, "agcam", target="topk:2")
    model.requires_grad_(False)
    for mode in ("vjp", "expand"):
        frozen = explain(model, x, "agcam", target="topk:2", multi_target=mode)
        torch.testing.assert_close(frozen.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)


def test_hooks_removed_fused_restored_also_on_error(tiny_vit, tiny_images, monkeypatch):
    model = tiny_vit(depth=2)
    for blk in model.blocks:
        blk.attn.fused_attn = True
    fused = [True, True]
    x = tiny_images(2)
    for mode in ("vjp", "expand"):
        explain(model, x, "agcam", target="topk:2", multi_target=mode)
        assert_clean(model, fused)

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.blocks[1].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, x, "agcam")
    assert_clean(model, fused)


def test_options_validated(tiny_vit, tiny_images):
    model = tiny_vit(depth=1)
    x = tiny_images(1)
    for bad in ({"head_fusion": "min2"}, {"layer_fusion": "prod"}, {"score_act": "tanh"}, {"grad_act": "elu"},
                {"multi_target": "loop"}, {"internal_batch_size": 0}, {"query": "row0"}):
        with pytest.raises(ValueError):
            explain(model, x, "agcam", **bad)
    mean_rows = explain(model, x, "agcam", query="mean_patches")
    assert mean_rows.patch_maps.shape == (1, 1, 2, 2) and (mean_rows.patch_maps >= 0).all()
