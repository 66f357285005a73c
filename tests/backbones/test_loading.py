"""load_model / save_model: timm names, presets, local directories and files, and their error messages."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from traitlens.backbones import ModelLoadError, create_preset, load_model, save_model


def test_round_trip_directory_keeps_weights_and_class_names(tmp_path) -> None:
    model = create_preset("traitlens-vit-micro", 4, class_names=["a", "b", "c", "d"]).eval()
    x = torch.rand(2, 3, 32, 32)
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert torch.equal(loaded(x), model(x))
    assert loaded.class_names == ["a", "b", "c", "d"]
    assert loaded.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)
    assert not list(tmp_path.glob("m/*.tmp"))


def test_timm_name_with_checkpoint_file(tmp_path) -> None:
    args = {"img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}
    src = load_model("vit_tiny_patch16_224", num_classes=5, pretrained=False, **args)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": src.state_dict()}, tmp_path / "w.pt")
    x = torch.rand(1, 3, 32, 32)
    for name in ("w.safetensors", "w.pt"):
        m = load_model("vit_tiny_patch16_224", num_classes=5, checkpoint=tmp_path / name, **args)
        assert torch.equal(m(x), src(x))


def test_weights_file_with_sidecar_json(tmp_path) -> None:
    model = create_preset("traitlens-vit-micro", 3)
    save_model(model, tmp_path / "d")
    (tmp_path / "d" / "model.safetensors").rename(tmp_path / "net.safetensors")
    (tmp_path / "d" / "config.json").rename(tmp_path / "net.json")
    assert torch.equal(load_model(tmp_path / "net.safetensors").head.weight, model.head.weight)


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(ModelLoadError, match=r"unknown model 'vit_smal_patch16_224'.*vit_small_patch16_224"):
        load_model("vit_smal_patch16_224")


def test_missing_path_and_missing_checkpoint(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(tmp_path / "nope" / "model")
    with pytest.raises(ModelLoadError, match="checkpoint file not found"):
        load_model("traitlens-vit-micro", num_classes=3, checkpoint=tmp_path / "missing.safetensors")


def test_shape_mismatch_names_the_tensor(tmp_path) -> None:
    save_model(create_preset("traitlens-vit-micro", 3), tmp_path / "m3")
    with pytest.raises(ModelLoadError, match=r"shape mismatch for 'head\.(weight|bias)'.*checkpoint \(3"):
        load_model("traitlens-vit-micro", num_classes=5, checkpoint=tmp_path / "m3" / "model.safetensors")


def test_a_saved_classifier_asked_for_another_class_count_gets_a_new_head(tmp_path, caplog) -> None:
    """Issue 16.4: a new classifier from your own 8-class model on a 3-class data set (was "num_classes=8, not 3")."""
    torch.manual_seed(0)
    saved = create_preset("traitlens-vit-micro", 8, class_names=list("abcdefgh")).eval()
    save_model(saved, tmp_path / "m8")
    torch.manual_seed(1)
    with caplog.at_level("INFO", logger="traitlens.backbones.loading"):
        net = load_model(tmp_path / "m8", num_classes=3, class_names=["x", "y", "z"])
    assert "new 3-class head (head)" in caplog.text
    assert net.head.weight.shape == (3, 32) and net.class_names == ["x", "y", "z"]
    trunk = {k: v for k, v in saved.state_dict().items() if not k.startswith("head.")}
    got = net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in trunk.items())  # every trunk tensor kept
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(net.forward_features(x), saved.forward_features(x))
    assert not torch.equal(net.head.weight, saved.head.weight[:3])  # the head is new, not a slice of the old one
    assert json.loads((tmp_path / "m8" / "config.json").read_text())["num_classes"] == 8  # the folder is untouched
    unnamed = load_model(tmp_path / "m8", num_classes=3)
    assert getattr(unnamed, "class_names", None) is None  # the 8 saved names do not fit 3 classes


def test_an_interpretable_model_keeps_its_class_count(tmp_path) -> None:
    from traitlens.models import build_interpretable

    save_model(build_interpretable("promptcam", "traitlens-vit-micro", 3, variant="shallow"), tmp_path / "p3")
    with pytest.raises(ModelLoadError, match=r"'promptcam' model saved with num_classes=3, not 7.*--backbone"):
        load_model(tmp_path / "p3", num_classes=7)


def test_model_args_rebuild_a_saved_vit_at_another_size(tmp_path) -> None:
    """`img_size` for a model folder: the position embedding is resampled (timm's bicubic resampling), the rest kept."""
    from timm.layers import resample_abs_pos_embed

    saved = create_preset("traitlens-vit-micro", 3)
    save_model(saved, tmp_path / "m")
    net = load_model(tmp_path / "m", img_size=48)
    assert net.patch_embed.img_size == (48, 48) and net.pos_embed.shape == (1, 1 + 36, 32)
    assert torch.equal(net.pos_embed, resample_abs_pos_embed(saved.pos_embed, new_size=[6, 6], num_prefix_tokens=1))
    assert torch.equal(net.pos_embed[:, 0], saved.pos_embed[:, 0])  # the class token's embedding is not resampled
    assert torch.equal(net.head.weight, saved.head.weight)
    assert net.traitlens_config["model_args"]["img_size"] == 48  # saved again, it rebuilds at 48 px
    preset = load_model("traitlens-vit-micro", num_classes=2, img_size=16)
    assert preset.patch_embed.img_size == (16, 16) and preset.patch_embed.patch_size == (8, 8)


def test_an_unknown_model_argument_lists_the_valid_ones() -> None:
    with pytest.raises(ModelLoadError, match=r"unexpected keyword argument 'img_sise'.*VisionTransformer takes "
                                             r"img_size, patch_size"):
        load_model("vit_tiny_patch16_224", num_classes=2, pretrained=False, img_sise=32)


def test_corrupt_checkpoint_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"bad\.safetensors"):
        load_model("traitlens-vit-micro", num_classes=3, checkpoint=bad)


def test_pretrained_download_failure_is_one_clear_line(monkeypatch, tmp_path) -> None:
    import timm

    from tests.backbones.hubtools import fake_hub

    fake_hub(monkeypatch, reachable=True, cache=tmp_path / "hub")  # the hub answers, the download fails

    def offline(*_a, **_k):
        raise OSError("We couldn't connect to the hub")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ModelLoadError, match="could not fetch pretrained weights for 'hf-hub:timm/vit_small"):
        load_model("hf-hub:timm/vit_small_patch16_224.dino")


def test_directory_without_config(tmp_path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "stuff.txt").write_text(json.dumps({}))
    with pytest.raises(ModelLoadError, match=r"without config\.json"):
        load_model(tmp_path / "x")
