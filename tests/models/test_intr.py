"""INTR oracles (models.md §2.7), backbone adapters, DETR query resizing and optimizer groups."""

from __future__ import annotations

import pytest
import torch

from traitlens.models import INTR
from traitlens.models.intr import resize_queries
from traitlens.train import FitConfig

from . import make_cnn, make_vit, one_thread  # noqa: F401  (autouse fixture)

C = 4
TINY = {"hidden_dim": 16, "nheads": 2, "enc_layers": 1, "dec_layers": 2, "dim_feedforward": 32}


def _net(backbone=None, seed: int = 0, **kwargs) -> INTR:
    torch.manual_seed(seed)
    net = INTR(backbone if backbone is not None else make_vit(dtype=torch.float32), C, **{**TINY, **kwargs})
    return net.eval()


def test_query_permutation_permutes_logits_and_maps() -> None:
    net = _net()
    x = torch.randn(2, 3, 16, 16)
    out = net.forward_output(x)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        net.query_embed.weight.copy_(net.query_embed.weight[perm])
    out2 = net.forward_output(x)
    assert torch.allclose(out2.logits, out.logits[:, perm], atol=1e-5)
    assert torch.allclose(out2.maps, out.maps[:, perm], atol=1e-6)
    assert out.logits.std(1).min() > 1e-4


def test_identical_queries_give_identical_logits() -> None:
    net = _net()
    with torch.no_grad():
        net.query_embed.weight[3] = net.query_embed.weight[0]
    out = net.forward_output(torch.randn(2, 3, 16, 16))
    assert torch.allclose(out.logits[:, 3], out.logits[:, 0], atol=1e-6)
    assert torch.allclose(out.maps[:, 3], out.maps[:, 0], atol=1e-6)


def test_padding_invariance_after_the_backbone() -> None:
    net = _net(return_all_layers=True)
    feats = torch.randn(2, 16, 3, 4)
    ref = net.forward_transformer(feats)
    padded = torch.cat([feats, 5 * torch.randn(2, 16, 3, 2)], dim=-1)  # two garbage columns
    padded = torch.cat([padded, 5 * torch.randn(2, 16, 1, 6)], dim=-2)  # and a garbage row
    mask = torch.ones(2, 4, 6, dtype=torch.bool)
    mask[:, :3, :4] = False
    out = net.forward_transformer(padded, mask)
    assert torch.allclose(out.logits, ref.logits, atol=1e-5)
    assert torch.equal(out.maps[..., 3, :], torch.zeros_like(out.maps[..., 3, :]))
    assert torch.equal(out.maps[..., 4:], torch.zeros_like(out.maps[..., 4:]))
    assert torch.allclose(out.maps[..., :3, :4], ref.maps, atol=1e-6)
    assert out.aux["all_layer_maps"].shape == (2, 2, C, 2, 4, 6)


def test_maps_sum_to_one_per_head_and_native_mean() -> None:
    import traitlens as tl

    net = _net()
    x = torch.randn(2, 3, 16, 16)
    out = net.forward_output(x)
    assert out.maps.shape == (2, C, 2, 4, 4)
    assert torch.allclose(out.maps.sum((-2, -1)), torch.ones(2, C, 2), atol=1e-6)
    exp = tl.explain(net, x, method="native", target="topk:2")
    assert torch.allclose(exp.patch_maps, exp.head_maps.mean(2))
    top2 = out.logits.topk(2, -1).indices
    assert torch.equal(exp.targets, top2)
    assert torch.allclose(exp.head_maps[1, 1], out.maps[1, top2[1, 1]])
    one = tl.explain(net, x, method="native", target=1, heads=[1])
    assert torch.allclose(one.patch_maps[:, 0], out.maps[:, 1, 1])


def test_backbone_grids_vit_and_cnn() -> None:
    vit = _net(make_vit(dtype=torch.float32, dynamic_img_size=True))
    assert vit.forward_output(torch.randn(1, 3, 12, 20)).maps.shape == (1, C, 2, 3, 5)
    cnn = _net(make_cnn())
    assert cnn.forward_output(torch.randn(1, 3, 96, 160)).maps.shape == (1, C, 2, 3, 5)
    assert cnn.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 2, 2)
    # A pixel padding mask is resized to the grid with nearest.
    mask = torch.zeros(1, 96, 160, dtype=torch.bool)
    mask[:, :, 128:] = True
    assert torch.equal(cnn.forward_output(torch.randn(1, 3, 96, 160), mask=mask).maps[..., -1], torch.zeros(1, C, 2, 3))


def test_tiny_intr_overfits_eight_images() -> None:
    net = _net(enc_layers=1, dec_layers=1, dropout=0.0).train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(100):
        loss = net.loss(net.forward_output(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if (net.eval()(x).argmax(-1) == y).all():
            break
        net.train()
    assert (net.eval()(x).argmax(-1) == y).all()


def test_resize_queries_rule() -> None:
    w = torch.randn(100, 8)
    assert torch.equal(resize_queries(w, 30), w[:30])
    out = resize_queries(w, 250, noise_frac=0.1, generator=torch.Generator().manual_seed(1))
    tiled = torch.cat([w, w, w[:50]])
    noise = torch.randn(150, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out[:100], w)
    assert torch.allclose(out[100:], tiled[100:] + 0.1 * noise)


def test_load_detr_checkpoint_maps_keys_and_resizes_queries(tmp_path) -> None:
    donor = _net(seed=1)
    state = {k: v for k, v in donor.state_dict().items() if not k.startswith(("backbone.", "presence_vector"))}
    state["query_embed.weight"] = torch.randn(100, 16)
    state["class_embed.weight"] = torch.randn(92, 16)
    state["bbox_embed.layers.0.weight"] = torch.randn(16, 16)
    torch.save({"model": state}, tmp_path / "detr.pth")
    net = _net(seed=2)
    loaded = net.load_detr_checkpoint(tmp_path / "detr.pth")
    assert "class_embed.weight" not in loaded and "query_embed.weight" in loaded
    assert torch.equal(net.query_embed.weight, state["query_embed.weight"][:C])
    assert torch.equal(net.transformer.encoder.layers[0].linear1.weight,
                       donor.transformer.encoder.layers[0].linear1.weight)


def test_param_groups_scale_the_backbone_lr() -> None:
    net = _net(backbone_lr_scale=0.2)
    groups = net.param_groups(FitConfig(lr=1e-3, weight_decay=0.1))
    lrs = sorted({g["lr"] for g in groups})
    assert lrs == pytest.approx([2e-4, 1e-3])
    n = sum(len(g["params"]) for g in groups)
    assert n == sum(1 for p in net.parameters() if p.requires_grad)
    assert all(g["weight_decay"] == 0.0 for g in groups if g["params"][0].ndim == 1)


def test_detr_r50_backbone_freezes_stem_and_layer1() -> None:
    net = INTR("detr_r50", 3, **TINY).eval()
    frozen = {n for n, p in net.backbone.named_parameters() if not p.requires_grad}
    assert any(n.startswith("body.layer1") for n in frozen) and any(n.startswith("body.conv1") for n in frozen)
    assert not any(n.startswith("body.layer4") for n in frozen)
    assert net.forward_output(torch.randn(1, 3, 64, 96)).maps.shape == (1, 3, 2, 2, 3)


def test_similar_class_targets_force_the_label_in() -> None:
    from traitlens.models import similar_class_targets

    logits = torch.tensor([[0.1, 0.9, 0.5, 0.7, 0.0], [0.3, 0.2, 0.1, 0.0, 0.4]])
    t = similar_class_targets(logits, torch.tensor([4, 0]), top_q=3)
    assert t.tolist() == [[4, 1, 3], [0, 4, 1]]
    assert similar_class_targets(logits, top_q=2).tolist() == [[1, 3], [4, 0]]
