"""TAM, the token ablation map (posthoc.md §10): U-fixture formulas, brute force, chunking, batching, targets."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.explain import TargetSpec, explain, get_method
from traitlens.explain.tam import TokenAblationMap

f64 = torch.float64


def embeddings(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model._pos_embed(model.patch_embed(x))


def value_path(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """U fixture, one block: (M = W_O W_V [D,D], T ↦ LN with norm1's weights)."""
    blk = model.blocks[0]
    D = blk.attn.qkv.in_features
    return blk.attn.proj.weight @ blk.attn.qkv.weight[2 * D:], blk.norm1


def test_registry_metadata():
    info = get_method("tam")
    assert (info.signed, info.class_specific, info.needs_grad) == (True, True, False)
    assert (info.default_upsample, info.default_norm) == ("nearest", "none")


def test_uniform_fixture_logit_formula(uniform_vit, tiny_images):
    """f_c = w_c·(x_0 + W_O(W_V mean_i T_i + b_V) + b_O) + b_c (§0), the basis of the TAM oracle."""
    model = uniform_vit(depth=1)
    x = tiny_images(2)
    blk = model.blocks[0]
    D = 8
    E = embeddings(model, x)
    with torch.no_grad():
        T = F.layer_norm(E, (D,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)
        b_V, W_O, b_O = blk.attn.qkv.bias[2 * D:], blk.attn.proj.weight, blk.attn.proj.bias
        hidden = E[:, 0] + (T.mean(1) @ blk.attn.qkv.weight[2 * D:].T + b_V) @ W_O.T + b_O
        expected = hidden @ model.head.weight.T + model.head.bias
    exp = explain(model, x, "tam")
    torch.testing.assert_close(exp.logits, expected, atol=1e-12, rtol=0)


def test_oracle_uniform_fixture_drop(uniform_vit, tiny_images):
    """TAM_i = w_c·W_O W_V(mean_all T − mean_{j≠n_p+i} T); the shortened attention is uniform over N−1 tokens."""
    model = uniform_vit(depth=1)
    x = tiny_images(2)
    M, _ = value_path(model)
    blk = model.blocks[0]
    exp = explain(model, x, "tam", target="topk:3")
    with torch.no_grad():
        T = F.layer_norm(embeddings(model, x), (8,), blk.norm1.weight, blk.norm1.bias, blk.norm1.eps)  # [B,N,D]
        N = T.shape[1]
        mean_all = T.mean(1)  # [B,D]
        mean_without = (T.sum(1, keepdim=True) - T[:, 1:]) / (N - 1)  # [B,P,D], token 1+i removed
        delta = (mean_all.unsqueeze(1) - mean_without) @ M.T  # [B,P,D]
        for k in range(3):
            w_c = model.head.weight[exp.targets[:, k]]  # [B,D]
            expected = (delta * w_c.unsqueeze(1)).sum(-1)
            torch.testing.assert_close(exp.patch_maps[:, k].reshape(2, 4), expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("ablation", ["zero", "mean_token"])
def test_oracle_uniform_fixture_replacements(uniform_vit, tiny_images, ablation):
    """Replacing token 1+i by e keeps N tokens: TAM_i = w_c·W_O W_V(T_{1+i} − LN(e))/N (LN(0) = norm1.bias)."""
    model = uniform_vit(depth=1)
    x = tiny_images(2)
    M, norm1 = value_path(model)
    E = embeddings(model, x)
    exp = explain(model, x, "tam", target="topk:3", ablation=ablation)
    with torch.no_grad():
        T = norm1(E)
        e = torch.zeros_like(E[:, 0]) if ablation == "zero" else E[:, 1:].mean(1)
        Te = norm1(e)  # [B,D]
        delta = (T[:, 1:] - Te.unsqueeze(1)) @ M.T / T.shape[1]
        for k in range(3):
            w_c = model.head.weight[exp.targets[:, k]]
            torch.testing.assert_close(exp.patch_maps[:, k].reshape(2, 4), (delta * w_c.unsqueeze(1)).sum(-1),
                                       atol=1e-12, rtol=0)
    if ablation == "zero":
        torch.testing.assert_close(norm1(torch.zeros(1, 8, dtype=f64)), norm1.bias.detach()[None])


@pytest.mark.parametrize("kwargs", [{}, {"reg_tokens": 2}, {"class_token": False, "global_pool": "avg"}])
def test_brute_force_on_random_model(tiny_vit, tiny_images, kwargs):
    """TAM_i = y(E) − y(E without token n_p+i), each shortened sequence run through the model by hand."""
    model = tiny_vit(depth=2, **kwargs)
    x = tiny_images(2)
    n_p = model.num_prefix_tokens
    exp = explain(model, x, "tam", target=[[0, 2], [1, 0]])
    E = embeddings(model, x)
    with torch.no_grad():
        full = model.forward_head(model.norm(model.blocks(model.norm_pre(E))))
        torch.testing.assert_close(full, model(x), atol=1e-12, rtol=0)
        for b in range(2):
            for i in range(4):
                keep = [j for j in range(E.shape[1]) if j != n_p + i]
                short = model.forward_head(model.norm(model.blocks(E[b:b + 1, keep])))[0]
                for k, c in enumerate(exp.targets[b].tolist()):
                    torch.testing.assert_close(exp.patch_maps[b, k].flatten()[i], full[b, c] - short[c],
                                               atol=1e-12, rtol=0)


@pytest.mark.parametrize("ablation", ["drop", "zero", "mean_token"])
def test_chunked_equals_unchunked_and_batched_equals_single(tiny_vit, tiny_images, ablation):
    model = tiny_vit(depth=2)
    x = tiny_images(3)
    full = TokenAblationMap(model, ablation=ablation, internal_batch_size=None)
    ref = full.attribute(x, TargetSpec("topk:2", 3, 3))
    for chunk in (1, 3, 5):
        chunked = TokenAblationMap(model, ablation=ablation, internal_batch_size=chunk)
        out = chunked.attribute(x, TargetSpec("topk:2", 3, 3))
        torch.testing.assert_close(out.patch_maps, ref.patch_maps, atol=1e-12, rtol=0)
    for i in range(3):
        single = full.attribute(x[i:i + 1], TargetSpec("topk:2", 1, 3))
        torch.testing.assert_close(single.patch_maps, ref.patch_maps[i:i + 1], atol=1e-12, rtol=0)


@pytest.mark.parametrize("target_space", ["logit", "prob", "log_prob"])
def test_multi_target_equals_per_target(tiny_vit, tiny_images, target_space):
    model = tiny_vit(depth=2)
    x = tiny_images(2)
    exp = explain(model, x, "tam", target="topk:3", target_space=target_space)
    for k in range(3):
        one = explain(model, x, "tam", target=exp.targets[:, k], target_space=target_space)
        torch.testing.assert_close(exp.patch_maps[:, k], one.patch_maps[:, 0], atol=1e-12, rtol=0)


def test_no_grad_no_hooks(tiny_vit, tiny_images):
    model = tiny_vit(depth=2)
    exp = explain(model, tiny_images(2), "tam")
    assert not exp.patch_maps.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_bad_options_raise(tiny_vit):
    with pytest.raises(ValueError, match="ablation"):
        TokenAblationMap(tiny_vit(depth=1), ablation="blur")
    with pytest.raises(ValueError, match="internal_batch_size"):
        TokenAblationMap(tiny_vit(depth=1), internal_batch_size=0)
    with pytest.raises(NotImplementedError, match="Linear"):
        TokenAblationMap(nn.Linear(2, 2))
