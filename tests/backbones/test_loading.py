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
    with pytest.raises(ModelLoadError, match="num_classes=3, not 7"):
        load_model(tmp_path / "m3", num_classes=7)


def test_corrupt_checkpoint_is_named(tmp_path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match=r"bad\.safetensors"):
        load_model("traitlens-vit-micro", num_classes=3, checkpoint=bad)


def test_pretrained_download_failure_is_one_clear_line(monkeypatch) -> None:
    import timm

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
