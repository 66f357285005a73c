"""GAE / "RP" (posthoc.md §8): the three oracles, the row form of the product, batching, targets, hooks."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.probe import AttentionProbe
from traitlens.backbones.trunk import trunk_forward
from traitlens.explain import explain, get_method
from traitlens.explain.gae import gae_relevance


def captured_attn_and_grads(model: nn.Module, images: torch.Tensor, classes: torch.Tensor):
    """A_b and G_b = ∂y/∂A_b for every block, read independently with the probe and plain autograd."""
    with AttentionProbe(model, blocks="all", capture=("attn",)) as probe:
        logits = model(images)
    attn = [probe.attn[i] for i in range(len(model.blocks))]
    grads = torch.autograd.grad(logits.gather(1, classes[:, None]).sum(), attn)
    return [a.detach() for a in attn], list(grads)


def assert_clean(model: nn.Module, fused: list[bool]) -> None:
    for name, mod in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"):
            assert not getattr(mod, attr, {}), f"{attr} left on {name or 'model'}"
    assert [blk.attn.fused_attn for blk in model.blocks] == fused
    assert all(p.grad is None for p in model.parameters())


def test_registry_metadata():
    info = get_method("gae")
    assert (info.signed, info.class_specific, info.needs_grad) == (False, True, True)
    assert (info.default_upsample, info.default_norm) == ("bilinear", "minmax")
    assert "RP" in info.summary


def test_oracle1_uniform_fixture_formula(uniform_vit, tiny_images):
    """U fixture, 1 block: Ā[q0,j] = mean_h((1/N)·(W_O,hᵀ w_c)·v_{h,j})^+, other rows 0, map = Ā[q0, n_p:]."""
    model = uniform_vit(depth=1)
    blk = model.blocks[0]
    x = tiny_images(2)
    exp = explain(model, x, "gae", target="topk:3")
    D, H, N = 8, 2, 5
    dh = D // H
    with torch.no_grad():
        T = blk.norm1(trunk_forward(model, x, 0))
        W_V, b_V = blk.attn.qkv.weight[2 * D:], blk.attn.qkv.bias[2 * D:]
        W_O = blk.attn.proj.weight
        v = T @ W_V.T + b_V  # [B,N,D]
        for k in range(3):
            w_c = model.head.weight[exp.targets[:, k]]  # [B,D]
            per_head = torch.stack([
                (v[..., h * dh:(h + 1) * dh] @ W_O[:, h * dh:(h + 1) * dh].T.unsqueeze(0) @ w_c[:, :, None])[..., 0]
                for h in range(H)
            ], dim=1) / N  # [B,H,N]: (1/N)·(W_O,hᵀ w_c)·v_{h,j}
            expected = F.relu(per_head).mean(1)[:, 1:]
            torch.testing.assert_close(exp.patch_maps[:, k].reshape(2, 4), expected, atol=1e-10, rtol=0)
    # A = 1/N exactly and every row of G but q0 is zero.
    attn, grads = captured_attn_and_grads(model, x, exp.targets[:, 0])
    torch.testing.assert_close(attn[0], torch.full_like(attn[0], 1 / N), atol=1e-15, rtol=0)
    assert (grads[0][:, :, 1:] == 0).all() and (grads[0][:, :, 0] != 0).any()


@pytest.mark.parametrize("reg_tokens", [0, 2])
def test_oracle2_two_blocks_by_hand(tiny_vit, tiny_images, reg_tokens):
    model = tiny_vit(depth=2, seed=21, reg_tokens=reg_tokens)
    n_p = 1 + reg_tokens
    x = tiny_images(3)
    exp = explain(model, x, "gae", target="topk:2")
    eye = torch.eye(4 + n_p, dtype=torch.float64)
    for k in range(2):
        attn, grads = captured_attn_and_grads(model, x, exp.targets[:, k])
        a1, a2 = (F.relu(g * a).mean(1) for a, g in zip(attn, grads, strict=True))
        R = (eye + a2) @ (eye + a1)
        torch.testing.assert_close(exp.patch_maps[:, k].reshape(3, 4), R[:, 0, n_p:], atol=1e-12, rtol=1e-9)
        assert (a1 != 0).any() and (a2 != 0).any()


def test_oracle3_zero_gradient_gives_zero_map(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, seed=22)
    with torch.no_grad():
        model.head.weight[1].zero_()  # y_1 = b_1 for every input, so G ≡ 0
    exp = explain(model, tiny_images(2), "gae", target=1)
    assert torch.equal(exp.patch_maps, torch.zeros_like(exp.patch_maps))
    assert exp.degenerate.all() and torch.equal(exp.maps, torch.zeros_like(exp.maps))


def test_row_form_equals_matrix_product():
    g = torch.Generator().manual_seed(0)
    L, H, N = 3, 2, 6
    attn = [torch.rand(2, H, N, N, generator=g, dtype=torch.float64) for _ in range(L)]
    grads = [torch.randn(2, H, N, N, generator=g, dtype=torch.float64) for _ in range(L)]
    R = torch.eye(N, dtype=torch.float64).expand(2, N, N)
    for a, gr in zip(attn, grads, strict=True):
        R = R + F.relu(gr * a).mean(1) @ R  # R_b = R_{b−1} + Ā_b·R_{b−1}
    e0 = torch.zeros(N, dtype=torch.float64)
    e0[0] = 1
    torch.testing.assert_close(gae_relevance(attn, grads, e0), R[:, 0])
    e_mean = torch.zeros(N, dtype=torch.float64)
    e_mean[2:] = 1 / 4
    torch.testing.assert_close(gae_relevance(attn, grads, e_mean), R[:, 2:].mean(1))


def test_batched_multi_target_and_chunks(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, seed=23)
    x = tiny_images(3)
    ref = explain(model, x, "gae", target="topk:3")  # 'vjp' by default
    expand = explain(model, x, "gae", target="topk:3", multi_target="expand")
    torch.testing.assert_close(expand.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(expand.logits, ref.logits)
    for b in range(3):
        single = explain(model, x[b:b + 1], "gae", target="topk:3")
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-12, rtol=1e-9)
    for k in range(3):
        one = explain(model, x, "gae", target=ref.targets[:, k])
        torch.testing.assert_close(one.patch_maps[:, 0], ref.patch_maps[:, k], atol=1e-12, rtol=1e-9)
    for mode in ("vjp", "expand"):
        for ibs in (1, 2):
            chunked = explain(model, x, "gae", target="topk:3", multi_target=mode, internal_batch_size=ibs)
            torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
            assert torch.equal(chunked.targets, ref.targets)


def test_mean_patches_query(tiny_vit, tiny_images):
    model = tiny_vit(depth=2, seed=24)
    x = tiny_images(2)
    exp = explain(model, x, "gae", target=0, query="mean_patches")
    attn, grads = captured_attn_and_grads(model, x, exp.targets[:, 0])
    eye = torch.eye(5, dtype=torch.float64)
    a1, a2 = (F.relu(g * a).mean(1) for a, g in zip(attn, grads, strict=True))
    R = (eye + a2) @ (eye + a1)
    torch.testing.assert_close(exp.patch_maps[:, 0].reshape(2, 4), R[:, 1:, 1:].mean(1), atol=1e-12, rtol=1e-9)


def test_fixed_targets_follow_their_images_into_chunks(tiny_vit, tiny_images):
    """Different fixed targets per image: every chunk must pick its own images' rows."""
    model = tiny_vit(depth=2, seed=25)
    x = tiny_images(3)
    targets = [[0, 1, 2], [2, 0, 1], [1, 2, 0]]
    ref = explain(model, x, "gae", target=targets)
    assert torch.equal(ref.targets, torch.tensor(targets))
    for b in range(3):
        single = explain(model, x[b:b + 1], "gae", target=[targets[b]])
        torch.testing.assert_close(single.patch_maps[0], ref.patch_maps[b], atol=1e-12, rtol=1e-9)
    for mode in ("vjp", "expand"):
        for ibs in (1, 3, 4):
            chunked = explain(model, x, "gae", target=targets, multi_target=mode, internal_batch_size=ibs)
            torch.testing.assert_close(chunked.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)
            assert torch.equal(chunked.targets, ref.targets)


def test_frozen_parameters_same_maps(tiny_vit, tiny_images):
    """Frozen weights: the leaf rule makes A differentiable and the maps do not change."""
    model = tiny_vit(depth=2, seed=26)
    x = tiny_images(2)
    ref = explain(model, x, "gae", target="topk:2")
    model.requires_grad_(False)
    for mode in ("vjp", "expand"):
        frozen = explain(model, x, "gae", target="topk:2", multi_target=mode)
        torch.testing.assert_close(frozen.patch_maps, ref.patch_maps, atol=1e-12, rtol=1e-9)


def test_hooks_removed_fused_restored_also_on_error(tiny_vit, tiny_images, monkeypatch):
    model = tiny_vit(depth=2)
    for blk in model.blocks:
        blk.attn.fused_attn = True
    fused = [True, True]
    x = tiny_images(2)
    for mode in ("vjp", "expand"):
        explain(model, x, "gae", target="topk:2", multi_target=mode)
        assert_clean(model, fused)

    def boom(*_args, **_kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(model.blocks[0].mlp, "forward", boom)
    with pytest.raises(RuntimeError, match="boom"):
        explain(model, x, "gae")
    assert_clean(model, fused)


def test_options_validated(tiny_vit, tiny_images):
    model = tiny_vit(depth=1)
    for bad in ({"multi_target": "loop"}, {"internal_batch_size": -1}, {"query": "row0"}):
        with pytest.raises(ValueError):
            explain(model, tiny_images(1), "gae", **bad)
