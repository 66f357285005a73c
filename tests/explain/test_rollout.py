"""Attention rollout (posthoc.md §6): the step by hand, the spec's oracles, and jacobgil/vit-explain's arithmetic."""

from __future__ import annotations

import pytest
import torch

from traitlens.backbones.probe import AttentionProbe
from traitlens.explain import explain
from traitlens.explain.rollout import PRESETS, AttentionRollout, rollout_step

#: One head, N = 3, rows summing to 0.8, 0.6 and 0.9: a = ½(A + I) has row sums 0.9, 0.8, 0.95.
A = torch.tensor([[0.5, 0.2, 0.1],
                  [0.0, 0.6, 0.0],
                  [0.3, 0.3, 0.3]], dtype=torch.float64)


def test_jacobgil_renorm_divides_entry_ij_by_the_sum_of_row_j() -> None:
    # a = ½(A + I) = [[.75, .1, .05], [0, .8, 0], [.15, .15, .65]]; row sums r = (.9, .8, .95).
    by_hand = torch.tensor([[0.75 / 0.9, 0.1 / 0.8, 0.05 / 0.95],
                            [0.0 / 0.9, 0.8 / 0.8, 0.0 / 0.95],
                            [0.15 / 0.9, 0.15 / 0.8, 0.65 / 0.95]], dtype=torch.float64)
    got = rollout_step(A.view(1, 1, 3, 3), renorm="jacobgil")[0]
    torch.testing.assert_close(got, by_hand, rtol=0, atol=1e-15)
    # The reference expression itself, on its [1,N,N] matrix.
    a = (A.unsqueeze(0) + torch.eye(3, dtype=torch.float64)) / 2
    torch.testing.assert_close(got, (a / a.sum(dim=-1))[0], rtol=0, atol=0)
    # Not the column sums (.9, 1.05, .7), and not the row normalisation.
    assert not torch.allclose(got, (a / a.sum(dim=-2, keepdim=True))[0])
    rows = torch.tensor([[0.75 / 0.9, 0.1 / 0.9, 0.05 / 0.9],
                         [0.0, 1.0, 0.0],
                         [0.15 / 0.95, 0.15 / 0.95, 0.65 / 0.95]], dtype=torch.float64)
    torch.testing.assert_close(rollout_step(A.view(1, 1, 3, 3), renorm="rows")[0], rows, rtol=0, atol=1e-15)


def test_discard_keeps_the_cls_entry_and_the_renorms_agree_without_it() -> None:
    attn = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.2, 0.7, 0.1]], dtype=torch.float64).view(1, 1, 3, 3)
    # The ⌊0.4·9⌋ = 3 smallest are (0,0) = .1, (2,2) = .1 and (2,0) = .2; (0,0) is spared, the other two are zeroed.
    fused = torch.tensor([[0.1, 0.5, 0.4], [0.3, 0.3, 0.4], [0.0, 0.7, 0.0]], dtype=torch.float64)
    a = (fused + torch.eye(3, dtype=torch.float64)) / 2
    torch.testing.assert_close(rollout_step(attn, discard_ratio=0.4, renorm="rows")[0],
                               a / a.sum(-1, keepdim=True), rtol=0, atol=1e-15)
    # Rows of a stochastic A keep summing to 1 without a discard: both renormalisations are the identity.
    torch.testing.assert_close(rollout_step(attn, renorm="jacobgil"), rollout_step(attn, renorm="rows"))


def test_max_fusion_makes_the_renorms_differ_even_without_a_discard() -> None:
    """Max over heads breaks the row sums, so the jacobgil preset's renorm matters at r = 0 too."""
    attn = torch.tensor([[[0.9, 0.1], [0.5, 0.5]], [[0.2, 0.8], [0.6, 0.4]]], dtype=torch.float64).view(1, 2, 2, 2)
    # max fusion [[.9, .8], [.6, .5]]; a = ½(Ā + I) = [[.95, .4], [.3, .75]], row sums 1.35 and 1.05.
    rows = torch.tensor([[0.95 / 1.35, 0.4 / 1.35], [0.3 / 1.05, 0.75 / 1.05]], dtype=torch.float64)
    jacobgil = torch.tensor([[0.95 / 1.35, 0.4 / 1.05], [0.3 / 1.35, 0.75 / 1.05]], dtype=torch.float64)
    torch.testing.assert_close(rollout_step(attn, "max", renorm="rows")[0], rows, rtol=0, atol=1e-15)
    torch.testing.assert_close(rollout_step(attn, "max", renorm="jacobgil")[0], jacobgil, rtol=0, atol=1e-15)
    a = (attn.max(dim=1).values + torch.eye(2, dtype=torch.float64)) / 2
    torch.testing.assert_close(rollout_step(attn, "max", renorm="jacobgil"), a / a.sum(dim=-1), rtol=0, atol=0)


@pytest.mark.parametrize(("depth", "expected"), [(1, lambda n: 1 / (2 * n)), (2, lambda n: 3 / (4 * n))])
@pytest.mark.parametrize("renorm", ["rows", "jacobgil"])
def test_uniform_attention_oracle(uniform_vit, tiny_images, depth, expected, renorm) -> None:
    model, x = uniform_vit(depth=depth), tiny_images(2)
    exp = explain(model, x, method="rollout", renorm=renorm, normalize="none")
    n = 5  # 2×2 patches + CLS
    torch.testing.assert_close(exp.patch_maps, torch.full_like(exp.patch_maps, expected(n)), rtol=0, atol=1e-12)


def reference_rollout(attentions: list[torch.Tensor], discard_ratio: float, head_fusion: str) -> torch.Tensor:
    """jacobgil/vit-explain's `rollout` arithmetic for one image ([1,H,N,N] per block), before its max-scaling."""
    n = attentions[0].shape[-1]
    result = torch.eye(n, dtype=attentions[0].dtype)
    for attention in attentions:
        fused = {"mean": lambda t: t.mean(1), "max": lambda t: t.max(1)[0], "min": lambda t: t.min(1)[0]}[head_fusion](
            attention)
        flat = fused.view(fused.shape[0], -1)
        _, indices = flat.topk(int(flat.shape[-1] * discard_ratio), -1, False)
        indices = indices[indices != 0]
        flat[0, indices] = 0
        a = (fused + torch.eye(n, dtype=fused.dtype)) / 2
        a = a / a.sum(dim=-1)
        result = torch.matmul(a, result)
    return result[0, 0, 1:]


@pytest.mark.parametrize("head_fusion", [None, "mean", "min"])
def test_jacobgil_preset_reproduces_the_reference(tiny_vit, tiny_images, head_fusion) -> None:
    model, x = tiny_vit(depth=3, heads=2), tiny_images(2)
    options = {} if head_fusion is None else {"head_fusion": head_fusion}
    exp = explain(model, x, method="rollout", preset="jacobgil", normalize="none", **options)
    expected = []
    for b in range(2):  # the reference takes one image at a time (its discard looks at batch element 0 only)
        with torch.no_grad(), AttentionProbe(model, blocks="all", capture=("attn",)) as probe:
            model(x[b: b + 1])
            attentions = [probe.attn[i].clone() for i in range(3)]
        expected.append(reference_rollout(attentions, 0.9, head_fusion or "max"))  # vit_explain.py's defaults
        torch.testing.assert_close(exp.patch_maps[b, 0].flatten(), expected[b], rtol=0, atol=1e-12)
        assert expected[b].std() > 0
    # The reference scales its mask by its max: normalize="maxabs" on these non-negative maps.
    scaled = explain(model, x[:1], method="rollout", preset="jacobgil", normalize="maxabs", upsample="nearest",
                     **options)
    torch.testing.assert_close(scaled.maps[0, 0, ::4, ::4].flatten(), expected[0] / expected[0].max(),
                               rtol=0, atol=1e-12)
    # The spec's defaults differ from the preset's on this model.
    spec = explain(model, x, method="rollout", normalize="none")
    assert not torch.allclose(spec.patch_maps, exp.patch_maps)


def test_preset_values_and_overrides(tiny_vit) -> None:
    model = tiny_vit()
    r = AttentionRollout(model, preset="jacobgil")
    assert (r.head_fusion, r.discard_ratio, r.renorm) == ("max", 0.9, "jacobgil") == tuple(PRESETS["jacobgil"].values())
    r = AttentionRollout(model, preset="jacobgil", head_fusion="mean", discard_ratio=0.5)
    assert (r.head_fusion, r.discard_ratio, r.renorm) == ("mean", 0.5, "jacobgil")
    r = AttentionRollout(model)
    assert (r.head_fusion, r.discard_ratio, r.renorm) == ("mean", 0.0, "rows")
    with pytest.raises(ValueError, match="unknown preset 'vit-explain'"):
        AttentionRollout(model, preset="vit-explain")
    with pytest.raises(ValueError, match="unknown renorm"):
        AttentionRollout(model, renorm="columns")
