"""Backbones of the interpretable models: construction, the rebuild recipe stored in `traitlens_config`,
feature-map read-out for timm ViTs and CNNs, stage freezing and stochastic depth (models.md §0).
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN as IMAGENET_MEAN
from timm.data import IMAGENET_DEFAULT_STD as IMAGENET_STD

from traitlens.backbones.introspect import is_vit, vit_layout
from traitlens.backbones.loading import PRESETS, ModelLoadError, create_preset, create_timm, load_model
from traitlens.backbones.protocols import as_vit

__all__ = [
    "DETRResNet50",
    "accepts_any_size",
    "backbone_channels",
    "backbone_data_config",
    "backbone_features",
    "backbone_grid",
    "build_backbone",
    "check_vit_block",
    "freeze_stages",
    "rebuild_backbone",
    "set_drop_path",
]

log = logging.getLogger(__name__)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise ModelLoadError(f"backbone argument {value!r} cannot be stored in config.json; pass JSON-able model_args")


def _spec_of_module(module: nn.Module) -> dict[str, Any] | None:
    """The rebuild recipe of a module: its traitlens config, else timm's architecture name (default args)."""
    spec = getattr(module, "traitlens_config", None)
    if spec:
        return copy.deepcopy(dict(spec))
    if getattr(module, "traitlens_backbone_kind", None) == "detr_r50":
        return {"kind": "detr_r50"}
    arch = (getattr(module, "pretrained_cfg", None) or {}).get("architecture")
    if arch:
        log.warning("backbone %s has no traitlens_config; it will be rebuilt as timm '%s' with default arguments",
                    type(module).__name__, arch)
        return {"kind": "timm", "architecture": arch, "model_args": {}}
    return None


def build_backbone(
    backbone: str | Path | nn.Module | dict[str, Any],
    pretrained: bool = True,
    backbone_args: dict[str, Any] | None = None,
) -> tuple[nn.Module, dict[str, Any] | None, bool]:
    """Build the backbone of an interpretable model, without its classifier.

    Args:
        backbone: a timm name (`"vit_small_patch16_224.dino"`, `"resnet18"`), a `PRESETS` name, a traitlens
            model directory, `"detr_r50"` (INTR's reference backbone, models.md §2.1), an `nn.Module`, or a
            rebuild recipe dict (what `load_model` passes; never fetches weights).
        pretrained: fetch published weights for a timm name (ignored for the other forms).
        backbone_args: extra `timm.create_model` arguments (e.g. `img_size=64`, `dynamic_img_size=True`); for a
            preset or a model directory they change its own (`load_model`).

    Returns:
        (module with `num_classes=0`, JSON-able rebuild recipe or None, whether it came with weights).

    Raises:
        ModelLoadError: unknown name, missing directory, or weights that cannot be fetched.
    """
    args = dict(backbone_args or {})
    with_weights = True
    module: Any  # timm models carry reset_classifier, pretrained_cfg, ... which nn.Module does not type
    spec: dict[str, Any] | None
    if isinstance(backbone, dict):
        module, spec, with_weights = rebuild_backbone(backbone), copy.deepcopy(backbone), False
    elif isinstance(backbone, nn.Module):
        module, spec = backbone, _spec_of_module(backbone)
    elif str(backbone) == "detr_r50":
        module, spec, with_weights = DETRResNet50(), {"kind": "detr_r50"}, False
    elif str(backbone) in PRESETS:
        module = create_preset(str(backbone), 0, model_args=args)
        spec, with_weights = dict(module.traitlens_config), False
    elif Path(backbone).is_dir():
        module = load_model(backbone, **args)
        spec = dict(getattr(module, "traitlens_config", {}) or {})
        if spec.get("kind", "timm") != "timm":
            raise ModelLoadError(f"{backbone} holds a '{spec.get('kind')}' model; a backbone must be a timm model")
    else:
        name = str(backbone)
        module = create_timm(name, pretrained=pretrained, num_classes=0, **args)
        cfg = getattr(module, "pretrained_cfg", {}) or {}
        spec = {"kind": "timm", "architecture": name, "model_args": _jsonable(args),
                "mean": list(cfg.get("mean", IMAGENET_MEAN)), "std": list(cfg.get("std", IMAGENET_STD))}
        with_weights = pretrained
    if hasattr(module, "reset_classifier"):
        module.reset_classifier(0)
    if spec is not None:
        spec["num_classes"] = 0
        cfg = getattr(module, "pretrained_cfg", None) or {}
        if "mean" in cfg and "mean" not in spec:
            spec["mean"], spec["std"] = list(cfg["mean"]), list(cfg["std"])
        spec = _jsonable(spec)
    return module, spec, with_weights


def rebuild_backbone(spec: dict[str, Any] | None) -> nn.Module:
    """Build a backbone from its recipe with random weights (the saved state dict is loaded afterwards).

    Raises:
        ModelLoadError: when there is no recipe (the backbone was a module without `traitlens_config`).
    """
    if not spec:
        raise ModelLoadError(
            "this model was built from a backbone module without a rebuild recipe (no traitlens_config and no "
            "timm architecture); build the backbone with traitlens.load_model or a timm name before saving"
        )
    kind = spec.get("kind", "timm")
    if kind == "detr_r50":
        return DETRResNet50()
    if kind != "timm":
        raise ModelLoadError(f"unknown backbone kind '{kind}' in config.json")
    module: Any = create_timm(spec["architecture"], pretrained=False, num_classes=0,
                              **dict(spec.get("model_args", {})))
    if spec.get("mean") is not None:
        cfg = dict(getattr(module, "pretrained_cfg", {}) or {})
        cfg["mean"], cfg["std"] = tuple(spec["mean"]), tuple(spec["std"])
        module.pretrained_cfg = cfg
    module.traitlens_config = {k: v for k, v in spec.items() if k != "class_names"}
    return module


def backbone_data_config(backbone: nn.Module) -> dict[str, Any]:
    """Mean, std and input size of a backbone; a ViT's input size comes from its patch embedding."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    input_size = cfg.get("input_size", (3, 224, 224))
    if is_vit(backbone):
        img = getattr(backbone.patch_embed, "img_size", None)
        if img is not None:
            input_size = (3, *img) if isinstance(img, (tuple, list)) else (3, img, img)
    return {"mean": tuple(cfg.get("mean", IMAGENET_MEAN)), "std": tuple(cfg.get("std", IMAGENET_STD)),
            "input_size": tuple(int(v) for v in input_size)}


def accepts_any_size(backbone: nn.Module) -> bool:
    """A CNN, or a ViT with `dynamic_img_size`, takes any input size; a fixed ViT takes only its own."""
    if not is_vit(backbone):
        return True
    return bool(getattr(backbone, "dynamic_img_size", False))


class DETRResNet50(nn.Module):
    """INTR's reference backbone (`backbone='detr_r50'`, models.md §2.1): torchvision ResNet-50 with
    FrozenBatchNorm, `layer4` output (stride 32, 2048 channels). Random weights; load DETR weights with
    `INTR.load_detr_checkpoint`. Stem and layer1 are frozen, as in DETR.
    """

    traitlens_backbone_kind = "detr_r50"

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50
        from torchvision.models._utils import IntermediateLayerGetter
        from torchvision.ops.misc import FrozenBatchNorm2d

        net = resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
        for name, p in net.named_parameters():
            if not name.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
        self.body = IntermediateLayerGetter(net, return_layers={"layer4": "0"})
        self.num_features = 2048
        self.pretrained_cfg = {"mean": IMAGENET_MEAN, "std": IMAGENET_STD, "input_size": (3, 800, 800)}

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] → layer4 [B,2048,⌈H/32⌉,⌈W/32⌉]."""
        return self.body(x)["0"]


def backbone_channels(backbone: nn.Module) -> int:
    """Channels C_b of the feature map `backbone_features` returns."""
    model: Any = backbone
    if is_vit(backbone):
        return int(getattr(model, "embed_dim", model.num_features))
    return int(model.num_features)


def backbone_features(backbone: nn.Module, images: torch.Tensor, vit_final_norm: bool = False,
                      vit_block: int = -1) -> torch.Tensor:
    """The backbone's feature map as NCHW, grid read at run time (models.md §0, §2.1 step 1, §3.1 step 1).

    timm ViT: the patch tokens after block `vit_block` (-1: the last; prefix tokens dropped), reshaped to the
    model's grid for this input. Blocks after it are not run.
    timm CNN (or DETR-R50): `forward_features`, the last feature map (`vit_block` must stay -1).
    """
    block = check_vit_block(backbone, vit_block)
    model: Any = backbone  # timm's forward_intermediates / forward_features
    if block is not None:
        (feats,) = model.forward_intermediates(images, indices=[block], norm=vit_final_norm, output_fmt="NCHW",
                                                  intermediates_only=True, stop_early=True)
        return feats
    feats = model.forward_features(images)
    if feats.dim() != 4:
        raise TypeError(
            f"{type(backbone).__name__}.forward_features returned shape {tuple(feats.shape)}; a [B,C,h,w] feature "
            "map is needed (a timm CNN or ViT)"
        )
    return feats


def set_drop_path(vit: nn.Module, rate: float) -> None:
    """Set a timm ViT's stochastic depth by timm's rule: block i of L drops its branches with rate·i/(L−1)."""
    from timm.layers import DropPath

    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path must be in [0, 1), got {rate}")
    blocks = list(as_vit(vit).blocks)
    for i, blk in enumerate(blocks):
        p = rate * i / max(len(blocks) - 1, 1)
        for name in ("drop_path1", "drop_path2"):
            setattr(blk, name, DropPath(p) if p > 0 else nn.Identity())


def check_vit_block(backbone: nn.Module, vit_block: int) -> int | None:
    """The non-negative index of ViT block `vit_block` (None for a CNN); a clear error when it does not exist."""
    if not is_vit(backbone):
        if vit_block != -1:
            raise ValueError(f"vit_block={vit_block} applies to ViT backbones; {type(backbone).__name__} is not one")
        return None
    depth = len(as_vit(backbone).blocks)
    if not -depth <= vit_block < depth:
        raise ValueError(f"vit_block={vit_block} is outside this ViT's {depth} blocks")
    return vit_block % depth


def backbone_grid(backbone: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the backbone's grid for an input size (ViTs only; CNN grids are read from the features)."""
    return vit_layout(backbone, (image_size[0], image_size[1])).grid


def freeze_stages(backbone: nn.Module, stages: int) -> list[str]:
    """Freeze the first `stages` stages of a backbone (SCOUTER's `freeze`, models.md §3.4); returns frozen names.

    `stages < 0` freezes everything; 0 nothing. timm CNNs: the stem plus the modules up to
    `feature_info[stages]` (so 2 = stem + layer1 + layer2 on a ResNet). timm ViTs: the patch embedding,
    prefix tokens, position embedding and the first `stages` blocks.
    """
    params = list(backbone.named_parameters())
    if stages == 0:
        return []
    if stages < 0:
        frozen = [n for n, _ in params]
    elif is_vit(backbone):
        blocks = {f"blocks.{i}." for i in range(min(stages, len(as_vit(backbone).blocks)))}
        stem = ("patch_embed.", "cls_token", "reg_token", "pos_embed", "norm_pre.")
        frozen = [n for n, _ in params if n.startswith(stem) or any(n.startswith(b) for b in blocks)]
    else:
        info = getattr(backbone, "feature_info", None)
        if not info:
            raise TypeError(f"{type(backbone).__name__} has no feature_info; pass frozen_stages=0 or -1")
        stage = info[min(stages, len(info) - 1)]["module"]
        last = max((i for i, (n, _) in enumerate(params) if n.startswith(stage + ".")), default=-1)
        frozen = [n for n, _ in params[: last + 1]]
    names = set(frozen)
    for n, p in params:
        if n in names:
            p.requires_grad_(False)
    return frozen

