"""Hugging Face `ViTForImageClassification` → an equivalent timm `VisionTransformer` (same weights, same logits).

Converting once lets every method, probe and metric work on HF checkpoints without a second set of hooks.
Needs the `hf` extra (transformers).
"""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from timm.models.vision_transformer import VisionTransformer

from traitlens.backbones.builders import ModelLoadError, attach_config, register_builder
from traitlens.backbones.hub import hub_access

__all__ = ["from_hf_vit", "load_hf_vit"]

# transformers ≥ 5 and 4.x spell the same tensors differently; map both onto timm names.
_LAYER_KEYS = {
    "layernorm_before": "norm1", "layernorm_after": "norm2",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v", "attention.o_proj": "attn.proj",
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2",
    "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2",
}


def _timm_for(config: dict[str, Any]) -> VisionTransformer:
    hidden_act = config.get("hidden_act", "gelu")
    if hidden_act != "gelu":
        raise ModelLoadError(f"HF ViT with hidden_act='{hidden_act}' is not supported (only exact 'gelu')")
    return VisionTransformer(
        img_size=config["image_size"], patch_size=config["patch_size"], in_chans=config.get("num_channels", 3),
        num_classes=config["num_labels"], embed_dim=config["hidden_size"], depth=config["num_hidden_layers"],
        num_heads=config["num_attention_heads"], mlp_ratio=config["intermediate_size"] / config["hidden_size"],
        qkv_bias=config.get("qkv_bias", True), global_pool="token",
        norm_layer=partial(nn.LayerNorm, eps=config.get("layer_norm_eps", 1e-12)),
    )


@register_builder("hf-vit")
def _build(config: dict[str, Any]) -> nn.Module:
    return _timm_for(config["hf_config"])


def _convert_state(hf_state: dict[str, torch.Tensor], depth: int) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    parts: dict[int, dict[str, torch.Tensor]] = {i: {} for i in range(depth)}
    for key, value in hf_state.items():
        key = key.removeprefix("vit.")
        m = re.match(r"(?:encoder\.layer|layers)\.(\d+)\.(.+)\.(weight|bias)$", key)
        if m:
            layer, name, kind = int(m.group(1)), m.group(2), m.group(3)
            if name not in _LAYER_KEYS:
                raise ModelLoadError(f"unexpected HF ViT tensor '{key}'")
            parts[layer][f"{_LAYER_KEYS[name]}.{kind}"] = value
            continue
        simple = {
            "embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
            "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
            "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
            "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias",
            "classifier.weight": "head.weight", "classifier.bias": "head.bias",
        }
        if key in simple:
            out[simple[key]] = value
        elif not key.startswith("pooler") and "mask_token" not in key:
            raise ModelLoadError(f"unexpected HF ViT tensor '{key}'")
    for i, p in parts.items():
        for kind in ("weight", "bias"):
            if f"q.{kind}" in p:
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat([p[f"q.{kind}"], p[f"k.{kind}"], p[f"v.{kind}"]])
        for name, value in p.items():
            if not name.startswith(("q.", "k.", "v.")):
                out[f"blocks.{i}.{name}"] = value
    return out


def from_hf_vit(hf_model: nn.Module, class_names: list[str] | None = None) -> VisionTransformer:
    """Convert a `transformers` `ViTForImageClassification` into a timm ViT with identical logits."""
    if type(hf_model).__name__ != "ViTForImageClassification":
        raise TypeError(f"expected a transformers ViTForImageClassification, got {type(hf_model).__name__}")
    hf_config: Any = hf_model.config
    cfg = hf_config.to_dict()
    cfg["num_labels"] = hf_config.num_labels
    model = _timm_for(cfg)
    state = _convert_state(hf_model.state_dict(), cfg["num_hidden_layers"])
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(f"HF ViT conversion mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    names = class_names
    if names is None and getattr(hf_config, "id2label", None):
        id2label = hf_config.id2label
        names = [id2label[i] for i in range(len(id2label))] if len(id2label) == cfg["num_labels"] else None
    keep = {k: cfg[k] for k in ("image_size", "patch_size", "num_channels", "num_labels", "hidden_size",
                                "num_hidden_layers", "num_attention_heads", "intermediate_size", "qkv_bias",
                                "layer_norm_eps", "hidden_act") if k in cfg}
    # ViTImageProcessor normalises with mean = std = 0.5.
    attach_config(model, {"kind": "hf-vit", "hf_config": keep, "num_classes": cfg["num_labels"],
                          "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "class_names": names})
    return model.eval()


def load_hf_vit(model_id: str) -> VisionTransformer:
    """Fetch `model_id` from the HF hub (or its local cache/folder) and convert it.

    Offline (`HF_HUB_OFFLINE`, or the hub unreachable) a hub id loads from the cache or fails at once
    (`hub_access`), instead of after the hub client's retries.
    """
    try:
        from transformers import ViTForImageClassification
    except ImportError as err:
        raise ModelLoadError("loading 'hf:' models needs the hf extra: pip install 'traitlens[hf]'") from err
    try:
        if Path(model_id).is_dir():
            hf_model = ViTForImageClassification.from_pretrained(model_id)
        else:
            with hub_access(f"the HF model '{model_id}'", hint=", or a folder written by save_pretrained"):
                hf_model = ViTForImageClassification.from_pretrained(model_id)
    except OSError as err:
        raise ModelLoadError(f"could not load HF model '{model_id}': {str(err).splitlines()[0]} "
                             "(offline? pass a local folder saved with save_pretrained)") from err
    return from_hf_vit(hf_model.eval())
