"""LRP transformer attribution (posthoc.md §9): the rules by hand, conservation, the functional block, batching."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from timm.models.deit import VisionTransformerDistilled
from timm.models.vision_transformer import ResPostBlock

from traitlens.backbones.probe import AttentionProbe
from traitlens.explain import TargetSpec, explain, get_method
from traitlens.explain import lrp as lrp_module
from traitlens.explain.lrp import (
    LRPTransformerAttribution,
    _block_forward,
    relprop_add,
    relprop_clone,
    relprop_linear,
    relprop_matmul,
    relprop_scale,
    safe_divide,
)

f64 = torch.float64


def spec(model: nn.Module, images: torch.Tensor, target) -> TargetSpec:
    return TargetSpec(target, images.shape[0], model.num_classes)


def block_inputs(model: nn.Module, images: torch.Tensor) -> dict[int, torch.Tensor]:
    with torch.no_grad(), AttentionProbe(model, blocks="all", capture=("block_input",)) as probe:
        model(images)
    return {i: probe.block_input[i] for i in range(len(model.blocks))}


def assert_clean(model: nn.Module, fused: list[bool]) -> None:
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(mod, attr, {}), f"{attr} left on {name or 'model'}"
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert all(p.grad is None for p in model.parameters())


def z_rule_autograd(fn, inputs: list[torch.Tensor], R: torch.Tensor) -> list[torch.Tensor]:
    """The reference's generic z-rule: R_u = u ⊙ ∂Z/∂u·(R/Z), by autograd (`RelPropSimple.relprop`)."""
    xs = [u.detach().requires_grad_() for u in inputs]
    Z = fn(*xs)
    grads = torch.autograd.grad(Z, xs, safe_divide(R, Z.detach()))
    return [u.detach() * g for u, g in zip(xs, grads, strict=True)]


# --- the rules --------------------------------------------------------------------------------------------------


def test_registry_metadata():
    info = get_method("lrp")
    assert (info.signed, info.class_specific, info.needs_grad) == (False, True, True)
    assert (info.default_upsample, info.default_norm) == ("bilinear", "minmax")


def test_oracle1_linear_rule_by_hand():
    """x = [1,2], w_0 = [1,3], R_out = [1,0] → R_in = [1/7, 6/7]."""
    x = torch.tensor([[1.0, 2.0]], dtype=f64)
    W = torch.tensor([[1.0, 3.0], [-2.0, 0.5]], dtype=f64)
    R = torch.tensor([[1.0, 0.0]], dtype=f64)
    torch.testing.assert_close(relprop_linear(x, W, R), torch.tensor([[1 / 7, 6 / 7]], dtype=f64), atol=1e-15, rtol=0)


def test_linear_rule_counts_only_positive_products():
    """Brute force R_j = Σ_i (x_j w_ij)^+ / Σ_j' (x_j' w_ij')^+ · R_i on signed x and w; the bias is ignored."""
    g = torch.Generator().manual_seed(0)
    x, W, R = (torch.randn(s, generator=g, dtype=f64) for s in [(3, 5), (4, 5), (3, 4)])
    prod = (x[:, None, :] * W[None]).clamp(min=0)  # [B,out,in]
    expected = (prod / prod.sum(-1, keepdim=True) * R[..., None]).sum(1)
    torch.testing.assert_close(relprop_linear(x, W, R), expected, atol=1e-12, rtol=0)


def test_oracle2_conservation_on_positive_chain():
    g = torch.Generator().manual_seed(1)
    Ws = [torch.rand(o, i, generator=g, dtype=f64) for i, o in [(6, 5), (5, 7), (7, 3)]]
    x = torch.rand(2, 6, generator=g, dtype=f64)
    acts = [x]
    for W in Ws:
        acts.append(acts[-1] @ W.T)
    R = torch.zeros(2, 3, dtype=f64)
    R[:, 1] = 1.0
    for W, a in zip(reversed(Ws), reversed(acts[:-1]), strict=True):
        R = relprop_linear(a, W, R)
        torch.testing.assert_close(R.sum(-1), torch.ones(2, dtype=f64), atol=1e-12, rtol=0)
    assert (R >= 0).all()


def test_oracle3_add_rule_keeps_relevance_per_sample():
    g = torch.Generator().manual_seed(2)
    a, b, R = (torch.randn(3, 5, 4, generator=g, dtype=f64) for _ in range(3))
    Ra, Rb = relprop_add(a, b, R)
    torch.testing.assert_close((Ra + Rb).sum((1, 2)), R.sum((1, 2)), atol=1e-12, rtol=0)
    # the parts keep the z-rule's proportions |ΣR_a| : |ΣR_b|
    za, zb = z_rule_autograd(torch.add, [a, b], R)
    ratio = za.sum((1, 2)).abs() / (za.sum((1, 2)).abs() + zb.sum((1, 2)).abs())
    torch.testing.assert_close(Ra.sum((1, 2)) / R.sum((1, 2)), ratio, atol=1e-12, rtol=0)
    # per sample, not over the batch: sample 0 alone gives the same parts
    Ra0, Rb0 = relprop_add(a[:1], b[:1], R[:1])
    torch.testing.assert_close(Ra0, Ra[:1], atol=1e-14, rtol=0)
    torch.testing.assert_close(Rb0, Rb[:1], atol=1e-14, rtol=0)


def test_matmul_clone_scale_rules_match_autograd_z_rule():
    g = torch.Generator().manual_seed(3)
    A, V, R = (torch.randn(s, generator=g, dtype=f64) for s in [(2, 2, 5, 5), (2, 2, 5, 4), (2, 2, 5, 4)])
    RA, RV = relprop_matmul(A, V, R)
    eA, eV = z_rule_autograd(torch.matmul, [A, V], R)
    torch.testing.assert_close(RA, eA, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(RV, eV, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(RA.sum((-2, -1)), R.sum((-2, -1)), atol=1e-10, rtol=0)  # z-rule of a bilinear map
    x, R1, R2 = (torch.randn(2, 5, 4, generator=g, dtype=f64) for _ in range(3))
    torch.testing.assert_close(relprop_clone(x, R1, R2), R1 + R2, atol=1e-12, rtol=0)
    gamma = torch.randn(4, generator=g, dtype=f64)
    torch.testing.assert_close(relprop_scale(x, gamma, R1), z_rule_autograd(lambda u: u * gamma, [x], R1)[0],
                               atol=1e-12, rtol=0)


def test_safe_divide_zero_and_tiny_denominators():
    a = torch.tensor([1.0, 1.0, 1.0, 2.0], dtype=f64)
    b = torch.tensor([0.0, 1e-12, -1e-12, 4.0], dtype=f64)
    torch.testing.assert_close(safe_divide(a, b), torch.tensor([0.0, 1e9, -1e9, 0.5], dtype=f64))
    ref = safe_divide(a, b, "reference")  # the reference divides by b + 1e-9
    assert ref[0] == 0 and torch.isclose(ref[3], torch.tensor(2 / (4 + 1e-9), dtype=f64))


@pytest.mark.parametrize("shape", [(4,), (3, 4)])
def test_safe_divide_into_the_denominator_buffer_and_broadcast(shape):
    """`overwrite=True` writes the quotient into b's buffer with the same values, tiny and zero denominators
    included; a denominator broadcast over a larger numerator gives the same values as a full-size one."""
    b = torch.tensor([0.0, 1e-12, -1e-12, 4.0], dtype=f64).expand(*shape).contiguous()
    a = torch.arange(1.0, b.numel() + 1, dtype=f64).reshape(shape)
    expected = a / torch.tensor([1.0, 1e-9, -1e-9, 4.0], dtype=f64)
    expected[..., 0] = 0.0
    got = safe_divide(a, b.clone(), overwrite=True)
    torch.testing.assert_close(got, expected, atol=0, rtol=1e-15)
    buf = b.clone()
    assert safe_divide(a, buf, overwrite=True).data_ptr() == buf.data_ptr()
    torch.testing.assert_close(safe_divide(a, b[..., :1, :] if b.dim() > 1 else b), expected, atol=0, rtol=1e-15)


# --- the functional block and the whole pass --------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [{}, {"init_values": 0.5, "qk_norm": True, "reg_tokens": 2}])
def test_functional_block_equals_timm_block(tiny_vit, tiny_images, kwargs):
    model = tiny_vit(depth=2, **kwargs)
    x = tiny_images(2)
    inputs = block_inputs(model, x)
    with torch.no_grad():
        for i, blk in enumerate(model.blocks):
            acts = _block_forward(blk, inputs[i])
            torch.testing.assert_close(acts.out, blk(inputs[i]), atol=1e-12, rtol=0)
        torch.testing.assert_close(model.forward_head(model.norm(acts.out)), model(x), atol=1e-12, rtol=0)


@pytest.mark.parametrize("kwargs", [{}, {"init_values": 0.5, "reg_tokens": 2}, {"global_pool": "avg"}])
def test_relevance_is_conserved_through_the_whole_model(tiny_vit, tiny_images, kwargs, monkeypatch):
    """Every rule conserves ΣR per sample, except that the αβ rule drops R_i of an output whose positive
    products all vanish (Z_i = 0). So ΣR at block 1's input = 1 − (the relevance those outputs held)."""
    model = tiny_vit(depth=2, **kwargs)
    x = tiny_images(3)
    dropped = []

    def spy(a: torch.Tensor, W: torch.Tensor, R: torch.Tensor, stabilizer: str = "clamp") -> torch.Tensor:
        Z = a.clamp(min=0) @ W.clamp(min=0).T + a.clamp(max=0) @ W.clamp(max=0).T
        dropped.append(torch.where(Z == 0, R, torch.zeros_like(R)).flatten(1).sum(1))
        return relprop_linear(a, W, R, stabilizer)

    monkeypatch.setattr(lrp_module, "relprop_linear", spy)
    classes = torch.tensor([0, 2, 1])
    _, R_in = LRPTransformerAttribution(model).relevance(block_inputs(model, x), classes, stop_at=0, to_input=True)
    assert len(dropped) == 1 + 2 * 4  # head, then fc2, fc1, proj, qkv per block
    expected = 1 - torch.stack(dropped).sum(0)
    torch.testing.assert_close(R_in.sum((1, 2)), expected, atol=1e-12, rtol=0)
    assert (expected > 0.99).all()


def test_initial_relevance_is_the_one_hot_not_the_logit(tiny_vit, tiny_images):
    """Scaling head row c (and b_c) by 3 scales the logit and G, but the αβ relevance from a one-hot is unchanged."""
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    classes = torch.tensor([1, 1])
    r0, _ = LRPTransformerAttribution(model).relevance(block_inputs(model, x), classes)
    with torch.no_grad():
        model.head.weight[1] *= 3
        model.head.bias[1] *= 3
    r1, _ = LRPTransformerAttribution(model).relevance(block_inputs(model, x), classes)
    for b in r0:
        torch.testing.assert_close(r1[b], r0[b], atol=1e-12, rtol=0)


@pytest.mark.parametrize("start_layer", [0, 1, 2])
def test_map_is_the_rollout_of_gradient_weighted_relevance(tiny_vit, tiny_images, start_layer):
    """C = (I+Ā_3)⋯(I+Ā_{s+1}) by hand from independently captured G_b and the relevance pass; map = C[0, 1:]."""
    model = tiny_vit(depth=3)
    x = tiny_images(2)
    classes = torch.tensor([2, 0])
    with AttentionProbe(model, blocks="all", capture=("attn",)) as probe:
        logits = model(x)
    G = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), [probe.attn[i] for i in range(3)])
    R_A, _ = LRPTransformerAttribution(model).relevance(block_inputs(model, x), classes)
    eye = torch.eye(5, dtype=f64)
    Abar = [(G[b] * R_A[b]).clamp(min=0).mean(1) for b in range(3)]
    C = eye
    for b in range(start_layer, 3):
        C = (eye + Abar[b]) @ C
    exp = explain(model, x, "lrp", target=classes, start_layer=start_layer, normalize="none")
    torch.testing.assert_close(exp.patch_maps[:, 0].reshape(2, 4), C[:, 0, 1:], atol=1e-12, rtol=0)


def test_partial_lrp_is_the_last_blocks_positive_relevance(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    classes = torch.tensor([0, 1])
    R_A, _ = LRPTransformerAttribution(model).relevance(block_inputs(model, x), classes)
    exp = explain(model, x, "lrp", target=classes, mode="partial_lrp", normalize="none")
    heads = R_A[1].clamp(min=0)[:, :, 0, 1:]  # [B,H,P]
    torch.testing.assert_close(exp.head_maps[:, 0].reshape(2, 2, 4), heads, atol=1e-12, rtol=0)
    torch.testing.assert_close(exp.patch_maps[:, 0].reshape(2, 4), heads.mean(1), atol=1e-12, rtol=0)


# --- batching, targets, hygiene ---------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["full", "partial_lrp"])
def test_oracle4_batched_equals_per_image(tiny_vit, tiny_images, mode):
    model = tiny_vit(depth=2)
    x = tiny_images(3)
    batched = explain(model, x, "lrp", mode=mode)
    for i in range(3):
        single = explain(model, x[i:i + 1], "lrp", mode=mode)
        torch.testing.assert_close(batched.patch_maps[i:i + 1], single.patch_maps, atol=1e-12, rtol=0)
        assert torch.equal(batched.targets[i:i + 1], single.targets)


@pytest.mark.parametrize("target_space", ["logit", "prob"])
def test_multi_target_expand_equals_vjp_equals_loop(tiny_vit, tiny_images, target_space):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    exp = explain(model, x, "lrp", target="topk:3", target_space=target_space, normalize="none")
    vjp = explain(model, x, "lrp", target="topk:3", target_space=target_space, normalize="none",
                  multi_target="vjp")
    fixed = explain(model, x, "lrp", target=exp.targets, target_space=target_space, normalize="none")
    for other in (vjp, fixed):  # fixed targets replicate the images without a first forward
        torch.testing.assert_close(other.patch_maps, exp.patch_maps, atol=1e-12, rtol=0)
        assert torch.equal(other.targets, exp.targets)
    for k in range(3):
        one = explain(model, x, "lrp", target=exp.targets[:, k], target_space=target_space, normalize="none")
        torch.testing.assert_close(exp.patch_maps[:, k], one.patch_maps[:, 0], atol=1e-12, rtol=0)
    torch.testing.assert_close(exp.logits, model(x).detach(), atol=1e-12, rtol=0)


def test_hooks_removed_and_fused_attention_restored(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    for blk in model.blocks:
        blk.attn.fused_attn = True
    explain(model, tiny_images(2), "lrp", target="topk:2")
    explain(model, tiny_images(2), "lrp", mode="partial_lrp")
    assert_clean(model, [True, True])


def test_stabilizer_reference_is_close_to_clamp(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    a = explain(model, x, "lrp", normalize="none")
    b = explain(model, x, "lrp", normalize="none", stabilizer="reference")
    torch.testing.assert_close(a.patch_maps, b.patch_maps, atol=1e-6, rtol=1e-5)


def test_unsupported_blocks_raise_naming_the_class(tiny_vit):
    model = tiny_vit(depth=1, block_fn=ResPostBlock)
    with pytest.raises(NotImplementedError, match="ResPostBlock"):
        LRPTransformerAttribution(model)
    model = VisionTransformerDistilled(img_size=8, patch_size=4, embed_dim=8, depth=1, num_heads=2, num_classes=3)
    with pytest.raises(NotImplementedError, match="VisionTransformerDistilled"):  # two heads, no rule for them
        LRPTransformerAttribution(model)
    model = tiny_vit(depth=1)
    model.blocks[0].norm1 = nn.BatchNorm1d(8)
    with pytest.raises(NotImplementedError, match="BatchNorm1d"):
        LRPTransformerAttribution(model)


def test_bad_options_raise(tiny_vit):
    model = tiny_vit(depth=2)
    for kwargs in [{"mode": "rollout"}, {"start_layer": 2}, {"multi_target": "loop"}, {"stabilizer": "eps"},
                   {"query": "row"}]:
        with pytest.raises(ValueError):
            LRPTransformerAttribution(model, **kwargs)
