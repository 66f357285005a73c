"""`InterpretableModel`: the contract Prompt-CAM, INTR and SCOUTER share (models.md §0).

`forward(x)` returns logits [B,C] (timm's convention), so every post-hoc method, metric and trainer treats an
interpretable model like any classifier. The native maps come from `forward_maps(x)` (or `forward_output(x,
return_maps=...)`), which returns a `ModelOutput`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens.models.backbone import _jsonable, accepts_any_size, backbone_data_config
from traitlens.models.outputs import ModelOutput, Prediction

__all__ = ["InterpretableModel", "LogitsOnly"]

log = logging.getLogger(__name__)


def _to_image_tensor(image: Any) -> torch.Tensor:
    """A path, PIL image or tensor ([3,H,W] or [1,3,H,W], values in [0,1]) → float [3,H,W]."""
    from PIL import Image

    from traitlens.backbones.preprocess import load_image, pil_to_tensor
    from traitlens.data.images import decode_image

    if isinstance(image, (str, Path)):
        return load_image(image)
    if isinstance(image, Image.Image):
        return pil_to_tensor(decode_image(image))  # the one decoder: EXIF orientation, 16-bit greys
    if isinstance(image, torch.Tensor):
        t = image[0] if image.dim() == 4 and image.shape[0] == 1 else image
        if t.dim() != 3:
            raise ValueError(f"predict takes one image [3,H,W] (or [1,3,H,W]); got shape {tuple(image.shape)}")
        return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()
    raise TypeError(f"predict takes a path, a PIL image or a tensor, not {type(image).__name__}")


class InterpretableModel(nn.Module):
    """Base of Prompt-CAM, INTR and SCOUTER: the shared contract of models.md §0.

    - `forward(images)` → logits [B,C], like any timm classifier (no maps are computed);
    - `forward_output(images, return_maps=None)` → `ModelOutput(logits, maps, aux)`; `return_maps=None`
      computes the maps in eval mode only, so training runs without the attention capture;
    - `forward_maps(images)` → `ModelOutput` with the native maps of all C classes, in any mode;
    - `forward_loss(images, labels)` → (loss, logits), what the trainer calls (SCOUTER adds its area term).

    Subclasses set `self.backbone`, `self.num_classes`, call `_init_common` and implement `forward_output`.
    """

    backbone: nn.Module
    num_classes: int
    pretrained_cfg: dict[str, Any]

    #: checkpoint rule of the reference repository (models.md §0): "best_val", "last" or "last+every10".
    reference_selection: str = "last"
    #: key of the builder in `traitlens.backbones.loading` and of `traitlens_config["kind"]`.
    kind: str = ""
    #: what the post-hoc methods may rely on (`traitlens.explain.model_families`, posthoc.md §0 "Model families"):
    #: own class maps ("native") and a forward that returns logits ("logits"); subclasses add what they expose.
    traitlens_families: tuple[str, ...] = ("native", "logits")

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

    # -- forward -------------------------------------------------------------------------------------------------
    def forward_output(self, images: torch.Tensor, return_maps: bool | None = None) -> ModelOutput:
        """Logits, and the native maps when `return_maps` (None: in eval mode only), plus model-specific `aux`."""
        raise NotImplementedError(f"{type(self).__name__} must implement forward_output")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [B,C]; the native maps are not computed (use `forward_maps`)."""
        return self.forward_output(images, return_maps=False).logits

    def forward_maps(self, images: torch.Tensor) -> ModelOutput:
        """One forward with the native maps of all C classes, in any mode (what `explain(method="native")` reads)."""
        return self.forward_output(images, return_maps=True)

    def native_maps(self, images: torch.Tensor) -> ModelOutput:
        """Deprecated name of `forward_maps`."""
        return self.forward_maps(images)

    # -- training ------------------------------------------------------------------------------------------------
    def loss(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        """Plain cross-entropy on the C logits (Prompt-CAM §1.4, INTR §2.2); SCOUTER adds its area term."""
        return F.cross_entropy(output.logits, labels)

    def forward_loss(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(training loss, logits) of one batch: the training forward (no maps in train mode) and `loss`."""
        output = self.forward_output(images)
        return self.loss(output, labels), output.logits

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

    def logits_only(self) -> InterpretableModel:
        """This model: `forward` already returns logits (kept for code written before that contract)."""
        return self

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
            out = self.forward_maps(normalize(self, x[None].to(device)))
        finally:
            self.train(was_training)
        logits = out.logits[0].float().cpu()
        probs = logits.softmax(-1)
        cls = int(probs.argmax())
        names = getattr(self, "class_names", None)
        return Prediction(cls, names[cls] if names else None, probs, logits,
                          None if out.maps is None else out.maps[0].cpu(), (x.shape[-2], x.shape[-1]))


class LogitsOnly(nn.Module):
    """Deprecated: interpretable models' `forward` returns logits; this wrapper only forwards to it."""

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
        return self.net(images)
