"""Shared parts of the interpretable-by-design models (models.md §0).

`ModelOutput` (logits + native maps of all C classes from one forward), backbone construction from a
timm name, preset, local traitlens model directory or module, the backbone rebuild recipe stored in
`traitlens_config`, feature-map read-out for timm ViTs and CNNs, the 2-D sine position encoding of
DETR, stage freezing, and the `InterpretableModel` base with `predict`, `native_maps` and `loss`.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.backbones.introspect import is_vit, vit_layout
from traitlens.backbones.loading import PRESETS, ModelLoadError, create_preset, load_model
from traitlens.backbones.loading import _create_timm as create_timm

__all__ = [
    "InterpretableModel",
    "LogitsOnly",
    "ModelOutput",
    "Prediction",
    "backbone_features",
    "backbone_grid",
    "build_backbone",
    "check_vit_block",
    "freeze_stages",
    "rebuild_backbone",
    "set_drop_path",
    "sine_position_encoding",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class ModelOutput:
    """What every interpretable model's `forward` returns (models.md §0).

    Attributes:
        logits: [B,C] class scores.
        maps: native evidence of **all** C classes from the same forward pass: [B,C,R,h,w] for models with
            heads (Prompt-CAM, INTR), [B,C,h,w] otherwise (SCOUTER); None when not requested (training).
        aux: model-specific tensors (e.g. SCOUTER's slot attention for the area loss).
    """

    logits: torch.Tensor
    maps: torch.Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """`predict` on one image: the class, its probabilities and the native maps of every class.

    Attributes:
        class_id: argmax class.
        class_name: its name when the model carries class names.
        probs: [C] softmax probabilities.
        logits: [C] raw scores.
        maps: [C,R,h,w] or [C,h,w] native maps on the model's grid (raw values).
        image_size: (H, W) the model actually saw.
    """

    class_id: int
    class_name: str | None
    probs: torch.Tensor
    logits: torch.Tensor
    maps: torch.Tensor | None
    image_size: tuple[int, int]


# --------------------------------------------------------------------------------------------------------------
# Backbones: construction and the rebuild recipe
# --------------------------------------------------------------------------------------------------------------

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
        backbone_args: extra `timm.create_model` arguments (e.g. `img_size=64`, `dynamic_img_size=True`).

    Returns:
        (module with `num_classes=0`, JSON-able rebuild recipe or None, whether it came with weights).

    Raises:
        ModelLoadError: unknown name, missing directory, or weights that cannot be fetched.
    """
    args = dict(backbone_args or {})
    with_weights = True
    if isinstance(backbone, dict):
        module, spec, with_weights = rebuild_backbone(backbone), copy.deepcopy(backbone), False
    elif isinstance(backbone, nn.Module):
        module, spec = backbone, _spec_of_module(backbone)
    elif str(backbone) == "detr_r50":
        module, spec, with_weights = DETRResNet50(), {"kind": "detr_r50"}, False
    elif str(backbone) in PRESETS:
        module = create_preset(str(backbone), 0)
        spec, with_weights = dict(module.traitlens_config), False
    elif Path(backbone).is_dir():
        module = load_model(backbone)
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
    module = create_timm(spec["architecture"], pretrained=False, num_classes=0, **dict(spec.get("model_args", {})))
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
    if is_vit(backbone):
        return int(getattr(backbone, "embed_dim", backbone.num_features))
    return int(backbone.num_features)


def backbone_features(backbone: nn.Module, images: torch.Tensor, vit_final_norm: bool = False,
                      vit_block: int = -1) -> torch.Tensor:
    """The backbone's feature map as NCHW, grid read at run time (models.md §0, §2.1 step 1, §3.1 step 1).

    timm ViT: the patch tokens after block `vit_block` (-1: the last; prefix tokens dropped), reshaped to the
    model's grid for this input. Blocks after it are not run.
    timm CNN (or DETR-R50): `forward_features`, the last feature map (`vit_block` must stay -1).
    """
    block = check_vit_block(backbone, vit_block)
    if block is not None:
        (feats,) = backbone.forward_intermediates(images, indices=[block], norm=vit_final_norm, output_fmt="NCHW",
                                                  intermediates_only=True, stop_early=True)
        return feats
    feats = backbone.forward_features(images)
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
    blocks = list(vit.blocks)
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
    depth = len(backbone.blocks)
    if not -depth <= vit_block < depth:
        raise ValueError(f"vit_block={vit_block} is outside this ViT's {depth} blocks")
    return vit_block % depth


def backbone_grid(backbone: nn.Module, image_size: tuple[int, int]) -> tuple[int, int]:
    """(h, w) of the backbone's grid for an input size (ViTs only; CNN grids are read from the features)."""
    return vit_layout(backbone, tuple(image_size)).grid


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
        blocks = {f"blocks.{i}." for i in range(min(stages, len(backbone.blocks)))}
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


# --------------------------------------------------------------------------------------------------------------
# Position encoding (DETR's PositionEmbeddingSine), shared by INTR and SCOUTER
# --------------------------------------------------------------------------------------------------------------

def sine_position_encoding(mask: torch.Tensor, dim: int, temperature: float = 10000.0,
                           scale: float = 2 * math.pi) -> torch.Tensor:
    """2-D sine encoding over cumulative sums of the valid cells, normalised to (0, 2π] (models.md §2.1 step 3).

    Args:
        mask: bool [B,h,w], True on **padded** cells (DETR convention).
        dim: d, the output channels; d/2 per axis (y first, then x), must be even.

    Returns:
        [B,d,h,w]. Works for any (h, w); appending padded cells leaves the valid cells' encoding unchanged.
    """
    if dim % 2:
        raise ValueError(f"the sine position encoding needs an even dim, got {dim}")
    feats = dim // 2
    not_mask = (~mask).to(torch.float32)
    y = not_mask.cumsum(1)
    x = not_mask.cumsum(2)
    eps = 1e-6
    y = y / (y[:, -1:, :] + eps) * scale
    x = x / (x[:, :, -1:] + eps) * scale
    dim_t = torch.arange(feats, dtype=torch.float32, device=mask.device)
    dim_t = temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor") / feats)
    pos_x = x[..., None] / dim_t
    pos_y = y[..., None] / dim_t
    pos_x = torch.stack((pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()), dim=4).flatten(3)
    pos_y = torch.stack((pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()), dim=4).flatten(3)
    return torch.cat((pos_y, pos_x), dim=3).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------------------------------------------
# The base class
# --------------------------------------------------------------------------------------------------------------

def _to_image_tensor(image: Any) -> torch.Tensor:
    """A path, PIL image or tensor ([3,H,W] or [1,3,H,W], values in [0,1]) → float [3,H,W]."""
    from PIL import Image

    from traitlens.backbones.preprocess import load_image, pil_to_tensor

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        t = image[0] if image.dim() == 4 and image.shape[0] == 1 else image
        if t.dim() != 3:
            raise ValueError(f"predict takes one image [3,H,W] (or [1,3,H,W]); got shape {tuple(image.shape)}")
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    raise TypeError(f"predict takes a path, a PIL image or a tensor, not {type(image).__name__}")


class InterpretableModel(nn.Module):
    """Base of Prompt-CAM, INTR and SCOUTER: the shared contract of models.md §0.

    Subclasses set `self.backbone`, `self.num_classes`, call `_init_common` and implement `forward`
    (`return_maps=None` computes the maps in eval mode only, so training runs without the capture).
    """

    #: checkpoint rule of the reference repository (models.md §0): "best_val", "last" or "last+every10".
    reference_selection: str = "last"
    #: key of the builder in `traitlens.backbones.loading` and of `traitlens_config["kind"]`.
    kind: str = ""

    def _init_common(self, backbone_spec: dict[str, Any] | None, options: dict[str, Any],
                     class_names: Sequence[str] | None) -> None:
        data = backbone_data_config(self.backbone)
        self.pretrained_cfg = {"mean": data["mean"], "std": data["std"], "input_size": data["input_size"]}
        self.traitlens_config = {"kind": self.kind, "num_classes": self.num_classes, "backbone": backbone_spec,
                                 "options": _jsonable(options), "mean": list(data["mean"]),
                                 "std": list(data["std"])}
        if class_names is not None:
            if len(class_names) != self.num_classes:
                raise ValueError(f"{len(class_names)} class names for {self.num_classes} classes")
            self.class_names = list(class_names)

    # -- training ------------------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """Plain cross-entropy on the C logits (Prompt-CAM §1.4, INTR §2.2); SCOUTER adds its area term."""
        return F.cross_entropy(output.logits, labels)

    def train(self, mode: bool = True) -> InterpretableModel:
        """Like `nn.Module.train`, but BatchNorm layers whose parameters are all frozen stay in eval mode.

        A frozen stage must not update its running statistics either (DETR's FrozenBatchNorm, SCOUTER's freeze).
        """
        super().train(mode)
        if mode:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    ps = list(m.parameters(recurse=False))
                    if ps and not any(p.requires_grad for p in ps):
                        m.eval()
        return self

    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters `fit(..., mode="model")` trains."""
        return [n for n, p in self.named_parameters() if p.requires_grad]

    # -- explanation ---------------------------------------------------------------------------------------------
    def native_maps(self, images: torch.Tensor, **kwargs: Any) -> ModelOutput:
        """One forward with the native maps of all C classes (any mode; used by `explain(method="native")`)."""
        return self.forward(images, return_maps=True, **kwargs)

    def logits_only(self) -> LogitsOnly:
        """A view of this model whose `forward` returns the logits tensor, for post-hoc methods (pixel methods)."""
        return LogitsOnly(self)

    @torch.no_grad()
    def predict(self, image: Any, size: int | tuple[int, int] | None = None) -> Prediction:
        """Classify one image and return the native maps of every class (models.md §0, `Imageomics/INTR#10`).

        Args:
            image: a file path, a PIL image, or a tensor [3,H,W] / [1,3,H,W] with values in [0,1] (uint8 accepted).
            size: (H, W) or side to squash-resize to first. None keeps the image size when the backbone accepts
                any size (a CNN, a `dynamic_img_size` ViT) and resizes to the backbone's input size otherwise.

        Returns:
            A `Prediction` (class id and name, probabilities, logits, maps on the model's grid).

        Example:
            >>> net = traitlens.load_model("runs/promptcam/best")  # doctest: +SKIP
            >>> p = net.predict("bird.jpg"); p.class_name, p.maps.shape  # doctest: +SKIP
        """
        from traitlens.backbones.preprocess import normalize

        x = _to_image_tensor(image)
        if size is None and not accepts_any_size(self.backbone):
            target = tuple(self.pretrained_cfg["input_size"][1:])
            if tuple(x.shape[-2:]) != target:
                log.info("resizing %s to the backbone's fixed input size %s", tuple(x.shape[-2:]), target)
                size = target
        if size is not None:
            hw = (size, size) if isinstance(size, int) else tuple(size)
            x = F.interpolate(x[None], size=hw, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
        device = next(self.parameters()).device
        was_training = self.training
        self.eval()
        try:
            out = self.forward(normalize(self, x[None].to(device)), return_maps=True)
        finally:
            self.train(was_training)
        logits = out.logits[0].float().cpu()
        probs = logits.softmax(-1)
        cls = int(probs.argmax())
        names = getattr(self, "class_names", None)
        return Prediction(cls, names[cls] if names else None, probs, logits,
                          None if out.maps is None else out.maps[0].cpu(), tuple(x.shape[-2:]))


class LogitsOnly(nn.Module):
    """Wrap an `InterpretableModel` so `forward` returns logits [B,C] (for post-hoc methods that expect a tensor)."""

    def __init__(self, net: InterpretableModel) -> None:
        super().__init__()
        self.net = net
        self.training = net.training  # mirror the wrapped model's mode (a new Module starts in training mode)
        self.num_classes = net.num_classes
        self.pretrained_cfg = net.pretrained_cfg
        if getattr(net, "class_names", None):
            self.class_names = net.class_names

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits only; the native maps are not computed."""
        return self.net(images, return_maps=False).logits
