"""The result type every explainer returns, post-hoc or native (posthoc.md §0 "Outputs")."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens._io import atomic_write

__all__ = ["Attribution", "Explanation"]


@dataclass
class Attribution:
    """Raw output of an explainer before upsampling/normalisation (internal).

    Attributes:
        patch_maps: [B,K,g_h,g_w] raw values (signed where the method is signed).
        targets: [B,K] class ids (−1 for concept targets).
        logits: [B,C] model outputs for the explained images, when the method computed them.
        head_maps: [B,K,R,g_h,g_w] per-head maps where they exist.
        extras: method-specific extras (e.g. IG's convergence delta).
    """

    patch_maps: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor | None = None
    head_maps: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Explanation:
    """Maps that explain a batch of images for K targets each.

    Attributes:
        maps: [B,K,H,W] pixel-resolution maps (upsampled, then normalised per (b,k)).
        patch_maps: [B,K,g_h,g_w] raw token-grid maps, never normalised.
        targets: [B,K] class ids (−1 where the target is a concept).
        method: registry name of the method.
        logits: [B,C] model outputs, when computed.
        head_maps: [B,K,R,g_h,g_w] per-head maps, where the method has them.
        degenerate: [B,K] True where a map was constant and normalised to zeros.
        signed: whether negative values carry meaning (counter-evidence).
        target_names: [B][K] readable target names (class or concept names) when known.
        extras: method-specific values.
    """

    maps: torch.Tensor
    patch_maps: torch.Tensor
    targets: torch.Tensor
    method: str
    logits: torch.Tensor | None = None
    head_maps: torch.Tensor | None = None
    degenerate: torch.Tensor | None = None
    signed: bool = False
    target_names: list[list[str]] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> Explanation:
        """Copy with every tensor moved to `device`."""
        moved = {
            f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), torch.Tensor)
                     else getattr(self, f.name))
            for f in fields(self)
        }
        return Explanation(**moved)

    def cpu(self) -> Explanation:
        """Copy on the CPU."""
        return self.to("cpu")

    def save(self, path: str | Path) -> Path:
        """Write the tensors to `.npz` or `.safetensors` (by suffix), atomically."""
        path = Path(path)
        arrays = {
            f.name: getattr(self, f.name).detach().cpu()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        meta = {"method": self.method, "signed": str(self.signed)}
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            tensors = {k: v.contiguous() for k, v in arrays.items()}
            atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
        elif path.suffix == ".npz":
            np_arrays = {k: v.numpy() for k, v in arrays.items()}
            np_arrays["method"] = np.array(self.method)
            np_arrays["signed"] = np.array(self.signed)
            if self.target_names is not None:
                np_arrays["target_names"] = np.array(self.target_names)

            def write(p: Path) -> None:
                with open(p, "wb") as fh:
                    np.savez_compressed(fh, **np_arrays)

            atomic_write(path, write)
        else:
            raise ValueError(f"unsupported suffix '{path.suffix}' for {path}; use .npz or .safetensors")
        return path
