"""Backbones: load timm / HF / local models, read their token layout, capture attention."""

from traitlens.backbones.introspect import ViTLayout, class_names_of, is_vit, vit_layout
from traitlens.backbones.loading import (
    PRESETS,
    ModelLoadError,
    create_preset,
    load_model,
    save_model,
)
from traitlens.backbones.preprocess import (
    ImageLoadError,
    data_config,
    load_image,
    load_images,
    normalize,
    unnormalize,
)
from traitlens.backbones.probe import AttentionProbe, UnsupportedAttentionError
from traitlens.backbones.trunk import head_forward, split_forward, trunk_forward

__all__ = [
    "PRESETS",
    "AttentionProbe",
    "ImageLoadError",
    "ModelLoadError",
    "UnsupportedAttentionError",
    "ViTLayout",
    "class_names_of",
    "create_preset",
    "data_config",
    "head_forward",
    "is_vit",
    "load_image",
    "load_images",
    "load_model",
    "normalize",
    "save_model",
    "split_forward",
    "trunk_forward",
    "unnormalize",
    "vit_layout",
]
