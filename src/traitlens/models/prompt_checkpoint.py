"""Prompt-only checkpoints for Prompt-CAM (models.md §1.3): the prompts and the scorer, a few MB, tied to the
backbone they were trained on by a SHA-256 of its weights.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from traitlens.models.promptcam import PromptCAM

__all__ = ["PROMPT_KEYS", "backbone_hash", "load_prompts", "save_prompts"]

PROMPT_KEYS = ("agnostic_prompts", "class_prompts", "head.weight", "head.bias")


def backbone_hash(backbone: nn.Module) -> str:
    """SHA-256 over the backbone's state dict (names, dtypes, shapes and bytes, in sorted key order)."""
    h = hashlib.sha256()
    for name, t in sorted(backbone.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_prompts(net: PromptCAM, path: str | Path) -> Path:
    """Write only the prompts and the scorer (plus the rebuild config and the backbone hash) to a safetensors file.

    A few MB instead of the backbone's full state dict (the reference stores ~86M parameters); `load_prompts`
    re-attaches them to the same backbone and refuses a different one.
    """
    from safetensors.torch import save_file

    from traitlens._io import atomic_write

    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items() if k in PROMPT_KEYS}
    meta = {"traitlens_config": json.dumps(net.traitlens_config), "backbone_sha256": backbone_hash(net.backbone),
            "class_names": json.dumps(getattr(net, "class_names", None))}
    return atomic_write(path, lambda p: save_file(state, str(p), metadata=meta))


def load_prompts(path: str | Path, backbone: str | Path | nn.Module, check_hash: bool = True,
                 **backbone_kwargs: Any) -> PromptCAM:
    """Rebuild a Prompt-CAM from a `save_prompts` file and its backbone (timm name, directory or module).

    Raises:
        ValueError: the backbone's hash differs from the one the prompts were trained on (`check_hash=True`).
    """
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
        state = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open is not a dict)
    config = json.loads(meta["traitlens_config"])
    net = PromptCAM(backbone, config["num_classes"], **config.get("options", {}),
                    class_names=json.loads(meta.get("class_names", "null")), **backbone_kwargs)
    if check_hash and backbone_hash(net.backbone) != meta["backbone_sha256"]:
        raise ValueError(f"{path} was trained on another backbone (hash mismatch); pass the same backbone weights "
                         "or check_hash=False")
    missing = set(PROMPT_KEYS) - set(state)
    if missing:
        raise ValueError(f"{path} lacks {sorted(missing)}")
    net.load_state_dict(state, strict=False)
    return net.eval()
