"""Vanilla CDAM (posthoc.md §1): the hand oracles 1–5, batching, targets, hooks and registry metadata."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.trunk import head_forward, trunk_forward
from traitlens.explain import TargetSpec, explain, get_method
from traitlens.explain.cdam import CDAM


def _T(model, images):
    """T = blocks[-1].norm1(x^(L−1)) computed directly."""
    with torch.no_grad():
        x = trunk_forward(model, images, len(model.blocks) - 1)
        return model.blocks[-1].norm1(x)


def _all_tokens(exp):
    """Token scores [B,K,N]: prefix scores from extras, then the patch map in row-major order."""
    B, K = exp.patch_maps.shape[:2]
    return torch.cat([exp.extras["prefix_scores"], exp.patch_maps.reshape(B, K, -1)], dim=-1)


def _full_graph_scores(model, images, targets, space="logit"):
    """Σ_j T·∂y/∂T over all N tokens with autograd through the whole model (no trunk split)."""
    with AttentionProbe(model, blocks=[-1], capture=("norm1",)) as probe:
        logits = model(images)
    T = probe.norm1[-1]
    if space == "prob":
        logits = logits.softmax(-1)
    y = logits.gather(1, targets.view(-1, 1)).sum()
    (G,) = torch.autograd.grad(y, T)
    return (T * G).sum(-1).detach()


# ---------------------------------------------------------------- oracle 1 and 2: the U fixture

@pytest.mark.parametrize("c", [0, 1, 2])
def test_u_fixture_map_is_value_path_times_one_over_n(uniform_vit, tiny_images, c) -> None:
    model = uniform_vit(depth=1)
    images = tiny_images(2)
    exp = explain(model, images, method="cdam", target=c, exclude_prefix=False)
    blk, D = model.blocks[0], model.embed_dim
    W_V, W_O, w_c = blk.attn.qkv.weight[2 * D:3 * D], blk.attn.proj.weight, model.head.weight[c]
    T = _T(model, images)
    N = T.shape[1]
    expected = (T @ (W_V.T @ W_O.T @ w_c)) / N  # [B,N]
    torch.testing.assert_close(_all_tokens(exp)[:, 0], expected.detach(), atol=1e-10, rtol=0)
    assert exp.patch_maps.shape == (2, 1, 2, 2)
    torch.testing.assert_close(exp.patch_maps.reshape(2, -1), expected[:, 1:].detach(), atol=1e-10, rtol=0)


@pytest.mark.parametrize("c", [0, 2])
def test_u_fixture_completeness_over_all_tokens(uniform_vit, tiny_images, c) -> None:
    model = uniform_vit(depth=1)
    images = tiny_images(3)
    exp = explain(model, images, method="cdam", target=c, exclude_prefix=False)
    blk, D = model.blocks[0], model.embed_dim
    W_V, b_V = blk.attn.qkv.weight[2 * D:3 * D], blk.attn.qkv.bias[2 * D:3 * D]
    W_O, b_O = blk.attn.proj.weight, blk.attn.proj.bias
    w_c, b_c = model.head.weight[c], model.head.bias[c]
    with torch.no_grad():
        x0 = trunk_forward(model, images, 0)[:, 0]  # CLS input
        T = blk.norm1(trunk_forward(model, images, 0))
        value_term = (W_O @ W_V @ T.mean(1).T).T @ w_c
        f_c = model(images)[:, c]
        rest = (x0 + W_O @ b_V + b_O) @ w_c + b_c
    total = _all_tokens(exp)[:, 0].sum(-1)
    torch.testing.assert_close(total, value_term, atol=1e-10, rtol=0)
    torch.testing.assert_close(total, f_c - rest, atol=1e-10, rtol=0)
    torch.testing.assert_close(exp.logits[:, c], f_c)


# ---------------------------------------------------------------- oracle 3: sign flip

def test_negating_head_row_negates_map(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    flipped = copy.deepcopy(model)
    with torch.no_grad():
        flipped.head.weight[1].neg_()
        flipped.head.bias[1].neg_()
    images = tiny_images(2)
    a = explain(model, images, method="cdam", target=1).patch_maps
    b = explain(flipped, images, method="cdam", target=1).patch_maps
    assert a.abs().max() > 1e-6
    torch.testing.assert_close(b, -a, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- oracle 4: batching and targets

def test_batched_equals_single_calls(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(3)
    batched = explain(model, images, method="cdam", target="topk:2")
    for b in range(3):
        single = explain(model, images[b:b + 1], method="cdam", target="topk:2")
        torch.testing.assert_close(single.patch_maps[0], batched.patch_maps[b], atol=1e-12, rtol=0)
        assert torch.equal(single.targets[0], batched.targets[b])


@pytest.mark.parametrize("ibs", [None, 1, 4])
def test_expand_equals_vjp_equals_loop(tiny_vit, tiny_images, ibs) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(3)
    targets = torch.tensor([[0, 2, 1], [1, 1, 0], [2, 0, 1]])
    expand = explain(model, images, method="cdam", target=targets, multi_target="expand", internal_batch_size=ibs)
    vjp = explain(model, images, method="cdam", target=targets, multi_target="vjp")
    loop = torch.stack([explain(model, images, method="cdam", target=targets[:, k]).patch_maps[:, 0]
                        for k in range(3)], dim=1)
    torch.testing.assert_close(expand.patch_maps, loop, atol=1e-12, rtol=0)
    torch.testing.assert_close(vjp.patch_maps, loop, atol=1e-12, rtol=0)
    assert torch.equal(expand.targets, targets) and torch.equal(vjp.targets, targets)


def test_topk_targets_come_from_the_models_logits(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(4)
    exp = explain(model, images, method="cdam", target="topk:3")
    with torch.no_grad():
        logits = model(images)
    torch.testing.assert_close(exp.logits, logits)
    assert torch.equal(exp.targets, logits.topk(3, dim=-1).indices)
    top1 = explain(model, images, method="cdam")
    torch.testing.assert_close(top1.patch_maps[:, 0], exp.patch_maps[:, 0], atol=1e-12, rtol=0)


@pytest.mark.parametrize("space", ["prob", "log_prob"])
def test_target_space_is_the_softmax_chain_rule(tiny_vit, tiny_images, space) -> None:
    """∂p_c = p_c(∂f_c − Σ_j p_j ∂f_j) and ∂log p_c = ∂f_c − Σ_j p_j ∂f_j; S is linear in the gradient."""
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    all_c = torch.arange(3).expand(2, 3)
    S = explain(model, images, method="cdam", target=all_c).patch_maps  # [B,C,g_h,g_w]
    with torch.no_grad():
        p = model(images).softmax(-1)
    mixed = (p.view(2, 3, 1, 1) * S).sum(1, keepdim=True)
    expected = S - mixed
    if space == "prob":
        expected = p.view(2, 3, 1, 1) * expected
    got = explain(model, images, method="cdam", target=all_c, target_space=space).patch_maps
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------- oracle 5: hand-written last block

def _functional_block(blk, x, t):
    """timm Block by hand, T = norm1(x) given: z = x + proj(softmax(q kᵀ/√d_h) v); out = z + fc2(GELU(fc1(LN2(z))))."""
    B, N, D = x.shape
    H = blk.attn.num_heads
    dh = D // H
    qkv = t @ blk.attn.qkv.weight.T + blk.attn.qkv.bias
    q, k, v = (qkv[..., i * D:(i + 1) * D].reshape(B, N, H, dh).transpose(1, 2) for i in range(3))
    a = torch.softmax((q @ k.transpose(-1, -2)) / math.sqrt(dh), dim=-1)
    z = x + (a @ v).transpose(1, 2).reshape(B, N, D) @ blk.attn.proj.weight.T + blk.attn.proj.bias
    u = F.layer_norm(z, (D,), blk.norm2.weight, blk.norm2.bias, blk.norm2.eps)
    h = u @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias
    h = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
    return z + h @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def test_gradient_matches_hand_written_last_block(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    c = torch.tensor([2, 0])
    x = trunk_forward(model, images, 1)
    blk, D = model.blocks[-1], model.embed_dim

    # By hand: T from a functional LayerNorm, then the block, the final norm and the head as functions of T.
    t_hand = F.layer_norm(x, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps).detach().requires_grad_()
    out_hand = _functional_block(blk, x, t_hand)
    cls = F.layer_norm(out_hand[:, 0], (D,), model.norm.weight, model.norm.bias, model.norm.eps)
    logits_hand = cls @ model.head.weight.T + model.head.bias
    (g_hand,) = torch.autograd.grad(logits_hand.gather(1, c.view(-1, 1)).sum(), t_hand)

    # The functional version reproduces timm's block and the model's logits (so the hand graph is the real one).
    with torch.no_grad():
        torch.testing.assert_close(out_hand, blk(x), atol=1e-12, rtol=0)
        torch.testing.assert_close(logits_hand, model(images), atol=1e-12, rtol=0)

    # G from the hook on blocks[-1].norm1 after the trunk split.
    with AttentionProbe(model, blocks=[-1], capture=("norm1",)) as probe:
        logits = head_forward(model, x, 1)
    (g_hook,) = torch.autograd.grad(logits.gather(1, c.view(-1, 1)).sum(), probe.norm1[-1])
    torch.testing.assert_close(probe.norm1[-1].detach(), t_hand.detach(), atol=1e-12, rtol=0)
    torch.testing.assert_close(g_hook, g_hand, atol=1e-12, rtol=0)

    exp = explain(model, images, method="cdam", target=c, exclude_prefix=False)
    torch.testing.assert_close(_all_tokens(exp)[:, 0], (t_hand * g_hand).sum(-1).detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("space", ["logit", "prob"])
def test_trunk_split_equals_full_graph(tiny_vit, tiny_images, space) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(3)
    c = torch.tensor([0, 1, 2])
    exp = explain(model, images, method="cdam", target=c, target_space=space, exclude_prefix=False)
    full = _full_graph_scores(model, images, c, space)
    torch.testing.assert_close(_all_tokens(exp)[:, 0], full, atol=1e-12, rtol=0)


def test_register_tokens_are_excluded_as_prefix(tiny_vit, tiny_images) -> None:
    """DINOv2-reg style: n_p = 1 + 4 registers; the map holds only the P patch tokens, in row-major order."""
    model = tiny_vit(depth=2, reg_tokens=4)
    images = tiny_images(2)
    c = torch.tensor([1, 2])
    exp = explain(model, images, method="cdam", target=c, exclude_prefix=False)
    full = _full_graph_scores(model, images, c)
    assert full.shape[1] == 5 + 4
    assert exp.extras["prefix_scores"].shape == (2, 1, 5)
    torch.testing.assert_close(exp.patch_maps.reshape(2, -1), full[:, 5:], atol=1e-12, rtol=0)
    default = explain(model, images, method="cdam", target=c)
    assert "prefix_scores" not in default.extras
    torch.testing.assert_close(default.patch_maps, exp.patch_maps)


# ---------------------------------------------------------------- outputs, metadata, state

def test_defaults_raw_signed_nearest(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    exp = explain(model, images, method="cdam", target=torch.tensor([0, 1]))
    info = get_method("cdam")
    assert (info.signed, info.class_specific, info.needs_grad, info.concept) == (True, True, True, True)
    assert (info.default_norm, info.default_upsample) == ("none", "nearest")
    assert exp.signed
    expected = exp.patch_maps.repeat_interleave(4, -2).repeat_interleave(4, -1)
    torch.testing.assert_close(exp.maps, expected)
    assert exp.maps.shape == (2, 1, 8, 8)
    assert (exp.patch_maps < 0).any() and (exp.patch_maps > 0).any()


def test_avg_pool_warns_and_runs(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2, global_pool="avg", class_token=False)
    images = tiny_images(2)
    with pytest.warns(UserWarning, match="pools with 'avg'"):
        exp = explain(model, images, method="cdam", target=1, exclude_prefix=False)
    assert exp.extras["prefix_scores"].shape == (2, 1, 0)
    full = _full_graph_scores(model, images, torch.tensor([1, 1]))
    torch.testing.assert_close(exp.patch_maps.reshape(2, -1), full, atol=1e-12, rtol=0)


def _assert_clean(model) -> None:
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks",
                     "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs"):
            assert not getattr(mod, attr, {}), f"{name}.{attr} left behind"
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("fused", [True, False])
def test_no_hooks_left_and_fused_attn_restored(tiny_vit, tiny_images, fused) -> None:
    model = tiny_vit(depth=2)
    for blk in model.blocks:
        blk.attn.fused_attn = fused
    explain(model, tiny_images(2), method="cdam", target="topk:2")
    explain(model, tiny_images(2), method="cdam", target="topk:2", multi_target="vjp")
    _assert_clean(model)
    assert all(blk.attn.fused_attn is fused for blk in model.blocks)


def test_hooks_removed_when_the_call_fails(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    spec = TargetSpec(1, 2, 3)
    with pytest.raises(ValueError, match="target_space"):
        CDAM(model).attribute(tiny_images(2), spec, target_space="nonsense")
    _assert_clean(model)


def test_inference_mode_raises(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(1)
    with torch.inference_mode():
        with pytest.raises(RuntimeError, match="inference_mode"):
            explain(model, images, method="cdam")
        with pytest.raises(RuntimeError, match="inference_mode"):
            CDAM(model).attribute(images, TargetSpec(None, 1, 3))
    _assert_clean(model)


def test_runs_under_no_grad(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    ref = explain(model, images, method="cdam", target=1).patch_maps
    with torch.no_grad():
        got = explain(model, images, method="cdam", target=1).patch_maps
    torch.testing.assert_close(got, ref)


def test_frozen_weights_use_the_leaf_rule(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2)
    images = tiny_images(2)
    ref = explain(model, images, method="cdam", target="topk:2").patch_maps
    model.requires_grad_(False)
    got = explain(model, images, method="cdam", target="topk:2").patch_maps
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_float32_model(tiny_vit, tiny_images) -> None:
    model = tiny_vit(depth=2, dtype=torch.float32)
    images = tiny_images(2, dtype=torch.float32)
    exp = explain(model, images, method="cdam", target="topk:2", multi_target="vjp")
    assert exp.patch_maps.dtype == torch.float32
    ref = explain(model.double(), images.double(), method="cdam", target=exp.targets).patch_maps
    torch.testing.assert_close(exp.patch_maps.double(), ref, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("opts", [{"multi_target": "loop"}, {"internal_batch_size": 0},
                                  {"internal_batch_size": 2.5}, {"unknown": 1}])
def test_bad_options(tiny_vit, opts) -> None:
    with pytest.raises((ValueError, TypeError)):
        CDAM(tiny_vit(depth=1), **opts)
