"""The shared contract (models.md §0): save/load, predict, fit + resume, the "native" method, post-hoc views."""

from __future__ import annotations

import pytest
import torch

import traitlens as tl
from traitlens.backbones import create_preset, load_model, save_model
from traitlens.models import (
    INTR,
    SCOUTER,
    InterpretableModel,
    PromptCAM,
    build_interpretable,
    list_model_kinds,
    recommended_fit_config,
)
from traitlens.train import FitConfig, fit

from . import TensorSet, make_cnn, one_thread  # noqa: F401  (autouse fixture)

NAMES = ["a", "b", "c"]


def _build(kind: str, seed: int = 0) -> InterpretableModel:
    """Tiny models on the 32-px micro preset (random weights, a rebuildable recipe)."""
    torch.manual_seed(seed)
    backbone = create_preset("traitlens-vit-micro", 0)
    if kind == "promptcam":
        return PromptCAM(backbone, 3, class_names=NAMES, prompt_dropout=0.1)
    if kind == "intr":
        return INTR(backbone, 3, hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1, dim_feedforward=32,
                    class_names=NAMES)
    return SCOUTER(backbone, 3, hidden_dim=8, slots_per_class=2, e=-1, lambda_area=0.5, class_names=NAMES)


KINDS = [k.name for k in list_model_kinds()]


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(kind, tmp_path) -> None:
    net = _build(kind).eval()
    save_model(net, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(net) and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    a, b = net.forward_output(x), loaded.forward_output(x)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.maps, b.maps)
    assert loaded.class_names == NAMES
    assert loaded.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert loaded.trainable_parameter_names() == net.trainable_parameter_names()


@pytest.mark.parametrize("kind", KINDS)
def test_fit_resume_matches_straight_run(kind, tmp_path) -> None:
    data = TensorSet(n=12, size=32, classes=3)
    cfg = FitConfig(epochs=2, mode="model", lr=1e-2, batch_size=4, schedule="cosine", label_smoothing=0.0,
                    optimizer="adamw", weight_decay=0.01)
    straight = _build(kind)
    fit(straight, data, None, cfg, out=tmp_path / "straight", progress=False)

    def crash(epoch: int, _metrics: dict) -> None:
        if epoch == 0:
            raise KeyboardInterrupt

    crashed = _build(kind)
    with pytest.raises(KeyboardInterrupt):
        fit(crashed, data, None, cfg, out=tmp_path / "run", progress=False, on_epoch_end=crash)
    resumed = _build(kind, seed=5)  # different init: everything must come from the checkpoint
    fit(resumed, data, None, cfg, out=tmp_path / "run", resume=True, progress=False)
    s, r = straight.state_dict(), resumed.state_dict()
    assert all(torch.equal(s[k], r[k]) for k in s)
    initial = _build(kind).state_dict()
    assert any(not torch.equal(initial[k], s[k]) for k in s)  # training really moved something
    assert (tmp_path / "run" / "best" / "config.json").is_file()


def test_promptcam_fit_leaves_the_backbone_untouched(tmp_path) -> None:
    net = _build("promptcam")
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    data = TensorSet(n=8, size=32, classes=3, as_dicts=True)  # dict items, collated by the trainer
    fit(net, data, data, FitConfig(epochs=1, mode="model", lr=1e-2, batch_size=4), progress=False)
    after = net.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not torch.equal(_build("promptcam").class_prompts, net.class_prompts)


def test_predict_single_image_of_any_size() -> None:
    cnn_net = SCOUTER(make_cnn(), 3, hidden_dim=8, class_names=NAMES)
    p = cnn_net.predict(torch.rand(3, 70, 100))
    assert p.image_size == (70, 100) and p.maps.shape == (3, 3, 4)
    assert p.probs.sum().item() == pytest.approx(1.0) and p.class_name == NAMES[p.class_id]
    assert p.class_id == int(p.logits.argmax()) and torch.allclose(p.probs, p.logits.softmax(-1))
    fixed = _build("promptcam")  # a fixed-size ViT: the image is resized to its 32 px input
    q = fixed.predict(torch.rand(1, 3, 50, 40))
    assert q.image_size == (32, 32) and q.maps.shape == (3, 2, 4, 4)
    assert fixed.training  # predict restores the mode


def test_predict_matches_forward_and_accepts_files(tmp_path) -> None:
    from PIL import Image

    net = _build("intr").eval()
    img = (torch.rand(32, 32, 3) * 255).to(torch.uint8)
    Image.fromarray(img.numpy()).save(tmp_path / "x.png")
    p = net.predict(tmp_path / "x.png")
    x = tl.normalize(net, img.permute(2, 0, 1)[None].float() / 255)
    assert torch.allclose(p.logits, net(x)[0], atol=1e-5)


def test_native_method_targets_and_errors() -> None:

    net = _build("promptcam").eval()
    x = torch.rand(2, 3, 32, 32)
    exp = tl.explain(net, x, method="native", target=["b", "c"])
    assert exp.targets.tolist() == [[1], [2]] and exp.target_names == [["b"], ["c"]]
    out = net.forward_output(x)
    assert torch.allclose(exp.head_maps[0, 0], out.maps[0, 1]) and exp.maps.shape == (2, 1, 32, 32)
    ranked = tl.explain(net, x, method="native", target=1, top_heads=1)
    assert (ranked.extras["head_weights"].sum(-1) == 1).all()
    sc = _build("scouter").eval()
    e2 = tl.explain(sc, x, method="native", target="topk:3")
    assert e2.head_maps is None and e2.patch_maps.shape == (2, 3, 4, 4)
    with pytest.raises(TypeError, match="interpretable-by-design"):
        tl.explain(create_preset("traitlens-vit-micro", 3).eval(), x, method="native")
    with pytest.raises(ValueError, match="no attention heads"):
        tl.explain(sc, x, method="native", heads=[0])


def test_posthoc_methods_on_interpretable_models() -> None:
    net = _build("promptcam").eval()
    x = torch.rand(2, 3, 32, 32)
    # Pixel methods run on the logits-only view; attention methods on the frozen backbone itself.
    pix = tl.explain(net.logits_only(), x, method="input_x_gradient", target=1, patch_size=8)
    assert pix.patch_maps.shape == (2, 1, 4, 4) and pix.patch_maps.abs().sum() > 0
    for method in ("raw_attention", "rollout"):
        assert tl.explain(net.backbone, x, method=method).patch_maps.shape == (2, 1, 4, 4)


def test_build_interpretable_and_recipes() -> None:
    net = build_interpretable("scouter", "traitlens-vit-micro", 4, class_names=list("wxyz"), e=-1)
    assert isinstance(net, SCOUTER) and net.e == -1 and net.class_names == list("wxyz")
    with pytest.raises(ValueError, match="unknown interpretable model"):
        build_interpretable("protopnet", "traitlens-vit-micro", 4)
    ref = recommended_fit_config("promptcam", "reference")
    assert (ref.optimizer, ref.lr, ref.weight_decay, ref.warmup_epochs) == ("sgd", 5e-3, 1e-3, 20)
    assert recommended_fit_config("intr", "reference").selection == "last"
    assert recommended_fit_config("scouter", "reference", epochs=3).epochs == 3
    assert all(recommended_fit_config(k).mode == "model" for k in KINDS)


def test_vit_block_reads_an_earlier_block_and_survives_save_load(tmp_path) -> None:
    from traitlens.models.backbone import backbone_features

    torch.manual_seed(0)
    backbone = create_preset("traitlens-vit-micro", 0).eval()
    x = torch.rand(2, 3, 32, 32)
    tokens = backbone.patch_embed(x)
    tokens = backbone.norm_pre(backbone._pos_embed(tokens))
    by_hand = backbone.blocks[0](tokens)[:, backbone.num_prefix_tokens:]  # after block 0 of 2, no final norm
    by_hand = by_hand.transpose(1, 2).reshape(2, -1, 4, 4)
    assert torch.allclose(backbone_features(backbone, x, vit_block=-2), by_hand, atol=1e-6)
    assert torch.equal(backbone_features(backbone, x, vit_block=0), backbone_features(backbone, x, vit_block=-2))
    assert not torch.allclose(backbone_features(backbone, x, vit_block=-1), by_hand)

    net = SCOUTER(backbone, 3, hidden_dim=8, vit_block=-2, class_names=NAMES).eval()
    save_model(net, tmp_path / "s")
    loaded = load_model(tmp_path / "s")
    assert loaded.vit_block == -2 and torch.equal(loaded.forward_output(x).maps, net.forward_output(x).maps)


@pytest.mark.parametrize("kind", ["intr", "scouter"])
def test_vit_block_errors_are_named(kind) -> None:
    build = {"intr": lambda bb, **kw: INTR(bb, 3, hidden_dim=16, nheads=2, enc_layers=1, dec_layers=1,
                                           dim_feedforward=32, **kw),
             "scouter": lambda bb, **kw: SCOUTER(bb, 3, hidden_dim=8, **kw)}[kind]
    with pytest.raises(ValueError, match="vit_block=2 is outside this ViT's 2 blocks"):
        build(create_preset("traitlens-vit-micro", 0), vit_block=2)
    with pytest.raises(ValueError, match="vit_block=-2 applies to ViT backbones"):
        build(make_cnn(), vit_block=-2)
