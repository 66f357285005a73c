"""SCOUTER oracles (models.md §3.7): logit read-out, sign convention, area loss, grids, ε guard, slot maps."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from traitlens.models import SCOUTER, normalize_class_maps
from traitlens.models.scouter import XSlotAttention

from . import make_cnn, make_vit, one_thread  # noqa: F401  (autouse fixture)

N = 3


def _net(e: int = 1, seed: int = 0, backbone=None, **kwargs) -> SCOUTER:
    torch.manual_seed(seed)
    bb = backbone if backbone is not None else make_vit(dtype=torch.float32)
    return SCOUTER(bb, N, e=e, hidden_dim=8, slot_seed=seed, frozen_stages=0, **kwargs).eval()


def test_logit_is_attention_weighted_feature_mass() -> None:
    net = _net()
    out = net.forward_output(torch.randn(2, 3, 16, 16))
    A, V = out.aux["slot_attention"], out.aux["values"]  # [B,S,L], [B,L,d]
    by_hand = (1 / 8) * (A * V.sum(-1)[:, None, :]).sum(-1)
    assert torch.allclose(out.logits, by_hand, atol=1e-6)
    assert torch.equal(out.maps, A.view(2, N, 4, 4))
    assert (V >= 0).all() and ((A > 0) & (A < 1)).all()


def test_negative_sign_exactly_negates_and_area_loss_by_hand() -> None:
    pos, neg = _net(e=1), _net(e=-1)
    neg.load_state_dict(pos.state_dict())
    x = torch.randn(2, 3, 16, 16)
    out_p, out_n = pos.forward_output(x), neg.forward_output(x)
    assert torch.equal(out_n.logits, -out_p.logits)
    assert torch.equal(out_n.maps, out_p.maps)  # the evidence is the same; only its sign convention differs
    hand = torch.tensor([[[0.2, 0.4], [0.6, 0.8]]])  # mean 0.5
    net = _net(lambda_area=3.0, power=2)
    assert net.area_loss(hand).item() == pytest.approx(0.25)
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    from traitlens.models import ModelOutput

    total = net.loss(ModelOutput(logits, None, {"slot_attention": hand}), torch.tensor([0]))
    ce = -F.log_softmax(logits, -1)[0, 0]
    assert total.item() == pytest.approx(ce.item() + 3.0 * 0.25)
    assert _net(power=1).area_loss(hand).item() == pytest.approx(0.5)


def test_grids_are_read_at_run_time() -> None:
    cnn = _net(backbone=make_cnn())
    # the reference crashes here (9×9)
    assert cnn.forward_output(torch.randn(1, 3, 224, 224)).maps.shape == (1, N, 7, 7)
    assert cnn.forward_output(torch.randn(1, 3, 260, 260)).maps.shape == (1, N, 9, 9)
    vit = _net(backbone=make_vit(dtype=torch.float32, dynamic_img_size=True))
    assert vit.forward_output(torch.randn(1, 3, 12, 20)).maps.shape == (1, N, 3, 5)


def test_zero_row_sum_is_guarded_and_slot_init_is_reproducible() -> None:
    net = _net()
    with torch.no_grad():
        for m in net.slot_attention.to_k:
            if isinstance(m, torch.nn.Linear):
                m.weight.zero_()
                m.bias.zero_()  # K = 0 → D = 0 → every row sum is 0
    out = net.forward_output(torch.randn(2, 3, 16, 16))
    assert torch.isfinite(out.logits).all()
    assert torch.allclose(out.aux["slot_attention"], torch.full_like(out.aux["slot_attention"], 0.5))
    a = XSlotAttention(6, 8, generator=torch.Generator().manual_seed(3))
    b = XSlotAttention(6, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.initial_slots, b.initial_slots)
    for seed in range(20):  # negative σ draws never error (std = |σ|)
        XSlotAttention(4, 8, generator=torch.Generator().manual_seed(seed))


def test_renormalisation_by_hand() -> None:
    att = XSlotAttention(2, 4)
    d = torch.tensor([[[1.0, 3.0], [-2.0, 6.0]]])  # row sums 4 and 4, total 8
    assert torch.allclose(att.renormalise(d), d * 8 / 4)
    att.renorm = "abs"
    assert torch.allclose(att.renormalise(d), d * 12 / torch.tensor([[[4.0], [8.0]]]))
    att.renorm = "none"
    assert torch.equal(att.renormalise(d), d)
    att.renorm = "reference"
    z = torch.tensor([[[1.0, -1.0], [2.0, 1.0]]])  # first row sums to 0 → ε
    assert torch.isfinite(att.renormalise(z)).all()


def test_slots_per_class_sum_and_joint_normalisation() -> None:
    net = _net(slots_per_class=2)
    out = net.forward_output(torch.randn(2, 3, 16, 16))
    A = out.aux["slot_attention"].view(2, N, 2, 4, 4)
    assert torch.allclose(out.maps, A[:, :, 0] + A[:, :, 1])
    assert (out.maps < 2).all() and (out.maps > 0).all()
    joint = normalize_class_maps(out.maps, "joint")
    assert torch.allclose(joint.flatten(1).amin(1), torch.zeros(2))
    assert torch.allclose(joint.flatten(1).amax(1), torch.ones(2))
    per = normalize_class_maps(out.maps, "per_class")
    assert torch.allclose(per.flatten(2).amax(2), torch.ones(2, N))
    assert torch.equal(normalize_class_maps(torch.ones(1, 2, 3, 3)), torch.zeros(1, 2, 3, 3))


def test_frozen_stages_default_and_bn_stays_in_eval() -> None:
    net = SCOUTER(make_cnn(), N, hidden_dim=8)  # a module counts as trained: stem + layer1 + layer2 frozen
    frozen = {n.split(".")[1] for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen == {"conv1", "bn1", "layer1", "layer2"}
    net.train()
    assert not net.backbone.layer1[0].bn1.training and net.backbone.layer3[0].bn1.training
    fresh = SCOUTER("resnet10t", N, pretrained=False, hidden_dim=8)
    assert all(p.requires_grad for p in fresh.backbone.parameters())


def test_gradcam_runs_on_the_feature_map() -> None:
    import traitlens as tl

    net = _net(backbone=make_cnn())
    exp = tl.explain(net, torch.randn(2, 3, 64, 64), method="gradcam", target=1)
    assert exp.patch_maps.shape == (2, 1, 2, 2)


def test_least_similar_class_options() -> None:
    from traitlens.models import least_similar_class

    logits = torch.tensor([[0.5, -1.0, 2.0], [0.0, 1.0, -3.0]])
    labels = torch.tensor([2, 2])
    assert least_similar_class(logits, labels).tolist() == [1, 2]
    assert least_similar_class(logits, labels, "label+1").tolist() == [0, 0]
    assert least_similar_class(logits, labels, {2: 1}).tolist() == [1, 1]
