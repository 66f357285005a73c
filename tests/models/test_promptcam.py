"""Prompt-CAM oracles (models.md §1.10), frozen backbone, head ranking and trait removal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from traitlens.models import PromptCAM, rank_heads, top_fraction_region, trait_removal
from traitlens.models.trait_removal import gaussian_blur, noisy_linear_impute

from . import make_vit, one_thread  # noqa: F401  (autouse fixture)

C = 5


def _net(seed: int = 0, **kwargs) -> PromptCAM:
    backbone_args = kwargs.pop("vit", {})
    torch.manual_seed(seed + 100)
    net = PromptCAM(make_vit(seed, **backbone_args), C, **kwargs).double().eval()
    with torch.no_grad():  # a non-trivial scorer bias and larger prompts make every class distinct
        net.head.bias.fill_(0.3)
        net.class_prompts.mul_(20)
    return net


def _by_hand(net: PromptCAM, x: torch.Tensor, norm: str = "norm") -> torch.Tensor:
    """Deep forward written out from models.md §1.2, scored as head(norm(z)[:, c])."""
    bb = net.backbone
    t = bb.norm_pre(bb.patch_drop(bb._pos_embed(bb.patch_embed(x))))
    prompts = [*net.agnostic_prompts, net.class_prompts]
    for i, blk in enumerate(bb.blocks):
        z = blk(torch.cat([prompts[i].expand(x.shape[0], -1, -1), t], dim=1))
        t = z[:, C:]
    zn = getattr(bb, norm)(z)
    return torch.stack([net.head(zn[:, c]).squeeze(-1) for c in range(C)], 1)


@pytest.mark.parametrize("size", [(16, 16), (12, 20)])
def test_logits_recomputed_by_hand(size) -> None:
    net = _net(vit={"dynamic_img_size": True})
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    out = net.forward_output(x)
    assert torch.allclose(out.logits, _by_hand(net, x), atol=1e-10)
    assert out.maps.shape == (2, C, 4, size[0] // 4, size[1] // 4)
    assert out.logits.std(1).min() > 1e-3  # classes really differ


def test_patch_mean_pooled_vit_scores_with_its_fc_norm() -> None:
    """timm's 'avg' pooling moves the final norm to `fc_norm` (`norm` is Identity): the scorer must use it."""
    net = _net(vit={"global_pool": "avg"})
    assert isinstance(net.backbone.norm, torch.nn.Identity)
    with torch.no_grad():  # a non-trivial affine, so skipping the norm or using another one would show
        net.backbone.fc_norm.weight.uniform_(0.5, 2.0)
        net.backbone.fc_norm.bias.uniform_(-1.0, 1.0)
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    logits = net(x)
    assert torch.allclose(logits, _by_hand(net, x, norm="fc_norm"), atol=1e-10)
    assert not torch.allclose(logits, _by_hand(net, x, norm="norm"), atol=1e-3)


def test_prompt_shapes_and_init_follow_vpt() -> None:
    net = _net()
    assert net.agnostic_prompts.shape == (1, C, 16) and net.class_prompts.shape == (C, 16)
    v = math.sqrt(6 / (3 * 4 * 4 + 16))
    fresh = PromptCAM(make_vit(), C)
    assert fresh.agnostic_prompts.abs().max() <= v and fresh.agnostic_prompts.abs().max() > 0.8 * v


def test_one_step_changes_only_prompts_and_head() -> None:
    net = _net().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(4, 3, 16, 16, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    net.loss(net.forward_output(x), y).backward()
    assert {n for n, p in net.named_parameters() if p.grad is not None} == {
        "agnostic_prompts", "class_prompts", "head.weight", "head.bias"}
    opt.step()
    after = net.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"agnostic_prompts", "class_prompts", "head.weight"}
    # The shared bias shifts every logit equally, which softmax cross-entropy ignores: its gradient is 0.
    assert net.head.bias.grad.abs().item() < 1e-12


def test_train_head_false_freezes_the_scorer() -> None:
    net = PromptCAM(make_vit(), C, train_head=False)
    assert net.trainable_parameter_names() == ["agnostic_prompts", "class_prompts"]


def test_permuting_prompts_permutes_logits_and_maps() -> None:
    net = _net()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = net.forward_output(x)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        net.class_prompts.copy_(net.class_prompts[perm])
        net.agnostic_prompts.copy_(net.agnostic_prompts[:, perm])
    out2 = net.forward_output(x)
    assert torch.allclose(out2.logits, out.logits[:, perm], atol=1e-10)
    assert torch.allclose(out2.maps, out.maps[:, perm], atol=1e-10)


def test_shared_scorer_identical_prompts_give_identical_logits_and_maps() -> None:
    net = _net()
    with torch.no_grad():
        net.class_prompts[3] = net.class_prompts[1]
    out = net.forward_output(torch.randn(2, 3, 16, 16, dtype=torch.float64))
    assert torch.allclose(out.logits[:, 3], out.logits[:, 1], atol=1e-12)
    assert torch.allclose(out.maps[:, 3], out.maps[:, 1], atol=1e-12)
    assert not torch.allclose(out.logits[:, 0], out.logits[:, 1])


def test_attention_rows_sum_to_one_and_patches_renormalise() -> None:
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    out = _net().forward_output(x)
    rows = out.aux["prompt_attention"]  # [B,R,C,C+N]
    assert torch.allclose(rows.sum(-1), torch.ones_like(rows.sum(-1)))
    assert (out.maps.sum((-2, -1)) < 1 - 1e-3).all()  # prompts, CLS and other prompts take a share
    maps = _net(attn_keys="patches").forward_output(x).maps
    assert torch.allclose(maps.sum((-2, -1)), torch.ones(2, C, 4, dtype=torch.float64))
    assert torch.allclose(maps, out.maps / out.maps.sum((-2, -1), keepdim=True))


def test_shallow_and_interpolated_variants() -> None:
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    shallow = _net(variant="shallow")
    assert shallow.agnostic_prompts.shape[0] == 0 and shallow.class_from_block == 0
    assert shallow(x).shape == (1, C)
    bb = make_vit(depth=3)
    mid = PromptCAM(bb, C, variant="interpolated", class_from_block=1, n_agnostic_prompts=2).double().eval()
    assert mid.agnostic_prompts.shape == (1, 2, 16) and mid.variant == "interpolated"
    assert mid.forward_output(x).maps.shape == (1, C, 4, 4, 4)
    with pytest.raises(ValueError, match="class_from_block"):
        PromptCAM(make_vit(), C, variant="interpolated")


def test_blurring_row_c_changes_only_s_c() -> None:
    net = _net()
    x = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    base = net.forward_maps(x).logits
    for blur in ("all", "patches"):
        blurred = net.blurred_logits(x, 2, [0, 3], blur=blur)
        others = [0, 1, 3, 4]
        assert torch.equal(blurred[:, others], base[:, others])
        assert (blurred[:, 2] - base[:, 2]).abs().min() > 0
    assert torch.equal(net.blurred_logits(x, 2, []), base)


def test_ranking_prob_equals_logit_and_matches_full_forward() -> None:
    net = _net()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    target = torch.tensor([1, 4])
    r_prob = rank_heads(net, x, target, k=1, criterion="prob")
    r_logit = rank_heads(net, x, target, k=1, criterion="logit")
    assert torch.equal(r_prob.order, r_logit.order)
    assert r_prob.evaluations == 2 * (4 + 3 + 2)  # Σ_{j=k+1..R} j per image
    assert sorted(r_prob.order[0].tolist()) == [0, 1, 2, 3]
    # The first removed head (last in importance order) is the one whose blur hurts least, by the full forward.
    for b in range(2):
        c = int(target[b])
        scores = torch.stack([net.blurred_logits(x[b : b + 1], c, [r])[0, c] for r in range(4)])
        assert int(r_prob.order[b, -1]) == int(scores.argmax())


def test_ranking_keep_all_heads_and_until_misclassified() -> None:
    net = _net()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    pred = int(net(x).argmax())
    full = rank_heads(net, x, pred, k=4)
    assert full.num_kept.tolist() == [4] and full.evaluations == 4
    paper = rank_heads(net, x, pred, stop="until_misclassified", blur="patches")
    kept = int(paper.num_kept[0])
    blurred_all_removed = net.blurred_logits(x, pred, paper.order[0, kept:].tolist(), blur="patches")
    assert int(blurred_all_removed.argmax()) == pred  # the removed heads alone never flip the prediction


def test_survivor_order_scores_and_the_reference_pairing() -> None:
    """Hand-set blur scores: s_c = −Σ w over the blurred heads (R = 4, k = 2).

    Round 1 blurs head 3 (w 0.5); round 2 scores heads [0, 1, 2] as [−1.5, −3.5, −2.5] and blurs head 0. Own
    last-round scores order the survivors [1 (−3.5), 2 (−2.5)]; the reference pairs the round's list before the
    removal with the survivors after it: 1 → −1.5, 2 → −3.5, so [2, 1]. Kept set and removal order agree.
    """
    net = _net()
    assert net.backbone.blocks[-1].attn.num_heads == 4
    w = torch.tensor([1.0, 3.0, 2.0, 0.5], dtype=torch.float64)
    net.class_row_scores = lambda x, t, blurred, n_p, blur: -(blurred.to(w.dtype) * w).sum(-1)
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    own = rank_heads(net, x, 0, k=2)
    ref = rank_heads(net, x, 0, k=2, survivor_order="reference")
    assert own.order.tolist() == [[1, 2, 0, 3]] and ref.order.tolist() == [[2, 1, 0, 3]]
    assert own.num_kept.tolist() == ref.num_kept.tolist() == [2] and own.removal_scores == ref.removal_scores
    with pytest.raises(ValueError, match="survivor_order"):
        rank_heads(net, x, 0, survivor_order="stale")


def test_trait_removal_identity_substrate_and_mass() -> None:
    net = _net()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[:, :8, :8] = True  # the top-left 2×2 patches
    same = trait_removal(net, x, [0, 1], region, substrate=x)
    assert torch.equal(same.delta_score, torch.zeros(2, dtype=torch.float64))
    maps = net.forward_output(x).maps
    expected = maps[[0, 1], [0, 1]][..., :2, :2].sum((-2, -1)) / maps[[0, 1], [0, 1]].sum((-2, -1))
    assert torch.allclose(same.mass_before, expected)
    assert same.region_patches[0].sum() == 4
    blurred = trait_removal(net, x, [0, 1], region, substrate="mean")
    assert blurred.delta_score.abs().min() > 0
    assert blurred.mass_drop.shape == (2, 4)
    patch_region = top_fraction_region(maps[0, 0, 2], 0.25)
    assert patch_region.sum() == 4 and trait_removal(net, x[0], 0, patch_region).region_patches.sum() == 4


def test_substrates_blur_and_road_by_hand() -> None:
    img = torch.ones(1, 3, 20, 20, dtype=torch.float64) * 0.7
    assert torch.allclose(gaussian_blur(img), img)  # a constant image stays constant
    axis = torch.arange(20, dtype=torch.float64)
    u, v = torch.meshgrid(axis, axis, indexing="ij")
    ramp = (0.3 * u - 0.2 * v + 1.0).expand(1, 3, 20, 20).clone()
    hole = torch.zeros(1, 20, 20, dtype=torch.bool)
    hole[:, 6:12, 5:14] = True
    filled = noisy_linear_impute(ramp * ~hole[:, None], hole, noise=0.0, tol=1e-12)
    assert torch.allclose(filled, ramp, atol=1e-9)
    noisy = noisy_linear_impute(ramp, hole, noise=0.01, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy[:, :, ~hole[0]], ramp[:, :, ~hole[0]])  # kept pixels untouched
    assert 0.005 < (noisy - ramp)[:, :, hole[0]].std() < 0.02


def test_frozen_fixed_size_vit_and_errors() -> None:
    with pytest.raises(TypeError, match="VisionTransformer"):
        PromptCAM(torch.nn.Linear(2, 2), C)
    with pytest.raises(ValueError, match="attn_keys"):
        PromptCAM(make_vit(), C, attn_keys="cls")
    net = _net()
    assert all(not p.requires_grad for p in net.backbone.parameters())
    assert F.softmax(net(torch.randn(1, 3, 16, 16, dtype=torch.float64)), -1).sum().item() == pytest.approx(1)


def test_prompt_only_checkpoint_round_trip(tmp_path) -> None:
    from traitlens.models.prompt_checkpoint import load_prompts, save_prompts

    net = _net()
    save_prompts(net, tmp_path / "p.safetensors")
    back = load_prompts(tmp_path / "p.safetensors", make_vit(0))
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    assert torch.equal(back(x), net(x))
    with pytest.raises(ValueError, match="hash mismatch"):
        load_prompts(tmp_path / "p.safetensors", make_vit(1))


def test_drop_path_overrides_the_backbones_stochastic_depth(tmp_path) -> None:
    """None keeps the backbone's stochastic depth, a rate follows timm's rule rate·i/(L−1); saved with the model."""
    from traitlens.backbones import load_model, save_model

    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    kept = _net(vit={"drop_path_rate": 0.5, "depth": 3}).train()
    torch.manual_seed(0)
    first = kept(x)
    assert not torch.allclose(first, kept(x))  # the backbone's own drop-path is active in training
    off = _net(vit={"drop_path_rate": 0.5, "depth": 3}, drop_path=0.0).train()
    assert torch.equal(off(x), off(x))
    assert torch.allclose(off(x), off.eval()(x), atol=1e-12)
    ruled = _net(vit={"depth": 3}, drop_path=0.2)
    assert [getattr(b.drop_path1, "drop_prob", 0.0) for b in ruled.backbone.blocks] == pytest.approx([0, 0.1, 0.2])
    save_model(off, tmp_path / "m")
    back = load_model(tmp_path / "m")
    assert back.traitlens_config["backbone"]["model_args"]["drop_path_rate"] == 0.5  # rebuilt, then overridden
    assert all(isinstance(b.drop_path1, torch.nn.Identity) for b in back.backbone.blocks)
    with pytest.raises(ValueError, match="drop_path"):
        _net(drop_path=1.5)
