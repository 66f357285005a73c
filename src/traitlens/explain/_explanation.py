"""The result type every explainer returns, post-hoc or native (posthoc.md §0 "Outputs")."""

from __future__ import annotations

import json
from collections.abc import Mapping
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

    def save(self, path: str | Path, extra_meta: Mapping[str, Any] | None = None) -> Path:
        """Write every field to `.safetensors` or `.npz` (by suffix), atomically; `load` reads it back.

        Tensors (fields and tensor `extras`) are stored as tensors, everything else (method, signed, target
        names, JSON-able `extras`, `extra_meta`) as JSON metadata, so reading never unpickles. A tensor that is
        the same object as an earlier one (e.g. `extras["raw_pixel_maps"] is maps`) is stored once and comes back
        as one object. JSON values come back as JSON gives them (tuples as lists).

        Args:
            path: the file; its suffix picks the format.
            extra_meta: JSON-able values stored alongside (read them with `read_meta`), e.g. timings.

        Raises:
            TypeError: an `extras` value is neither a tensor nor JSON-able, or `extra_meta` is not JSON-able.
        """
        path = Path(path)
        if path.suffix not in (".safetensors", ".npz"):
            raise ValueError(f"unsupported suffix '{path.suffix}' for {path}; use .npz or .safetensors")
        tensors, doc = _to_parts(self, extra_meta)
        text = json.dumps(doc)
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"method": self.method, "signed": str(self.signed), _META_KEY: text}
            atomic_write(path, lambda p: save_file(tensors, str(p), metadata=meta))
            return path
        np_arrays: dict[str, Any] = {k: v.numpy() for k, v in tensors.items()}
        np_arrays["method"] = np.array(self.method)
        np_arrays["signed"] = np.array(self.signed)
        if self.target_names is not None:
            np_arrays["target_names"] = np.array(self.target_names)
        np_arrays[_META_KEY] = np.array(text)

        def write(p: Path) -> None:
            with open(p, "wb") as fh:
                np.savez_compressed(fh, **np_arrays)

        atomic_write(path, write)
        return path

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> Explanation:
        """Read an explanation written by `save` (either suffix), with its tensors on `device`."""
        tensors, doc = _read_parts(Path(path))
        moved = {k: v.to(device) for k, v in tensors.items()}
        moved.update({name: moved[src] for name, src in doc.get("refs", {}).items()})
        unknown = sorted(k for k in moved if k not in _TENSOR_FIELDS and not k.startswith(_EXTRA))
        if unknown:
            raise ValueError(f"{path}: tensors {unknown} are not fields of an Explanation; not written by save()")
        extras: dict[str, Any] = dict(doc.get("extras", {}))
        extras.update({k[len(_EXTRA):]: v for k, v in moved.items() if k.startswith(_EXTRA)})
        order = doc.get("extras_order", [])
        extras = {**{k: extras[k] for k in order if k in extras}, **extras}
        return cls(maps=moved["maps"], patch_maps=moved["patch_maps"], targets=moved["targets"], method=doc["method"],
                   logits=moved.get("logits"), head_maps=moved.get("head_maps"), degenerate=moved.get("degenerate"),
                   signed=bool(doc["signed"]), target_names=doc.get("target_names"), extras=extras)

    @staticmethod
    def read_meta(path: str | Path) -> dict[str, Any]:
        """The `extra_meta` a file was saved with ({} when none), without reading its tensors."""
        path = Path(path)
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                text = (fh.metadata() or {}).get(_META_KEY)
        else:
            with np.load(path, allow_pickle=False) as z:
                text = str(z[_META_KEY]) if _META_KEY in z.files else None
        return dict(json.loads(text).get("meta", {})) if text else {}


_TENSOR_FIELDS = ("maps", "patch_maps", "targets", "logits", "head_maps", "degenerate")
_EXTRA = "extras."
"""Prefix of the stored names of tensor `extras`."""
_META_KEY = "traitlens.explanation"
"""The metadata entry (safetensors) or array (npz) holding the JSON description."""


def _to_parts(exp: Explanation, extra_meta: Mapping[str, Any] | None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(name → CPU tensor, JSON document) for `save`; repeated tensor objects become `refs` to the first name."""
    tensors: dict[str, torch.Tensor] = {}
    refs: dict[str, str] = {}
    seen: dict[int, str] = {}

    def put(name: str, t: torch.Tensor) -> None:
        if id(t) in seen:
            refs[name] = seen[id(t)]
            return
        seen[id(t)] = name
        # own contiguous copies: safetensors refuses tensors that share memory (views, expands)
        tensors[name] = t.detach().cpu().clone(memory_format=torch.contiguous_format)

    for name in _TENSOR_FIELDS:
        value = getattr(exp, name)
        if value is not None:
            put(name, value)
    values: dict[str, Any] = {}
    for key, value in exp.extras.items():
        if not isinstance(key, str):
            raise TypeError(f"extras key {key!r} is not a string; Explanation.save cannot store it")
        if isinstance(value, torch.Tensor):
            put(_EXTRA + key, value)
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError) as err:
            raise TypeError(f"extras[{key!r}] ({type(value).__name__}) is neither a tensor nor JSON-able; "
                            "Explanation.save cannot store it") from err
        values[key] = value
    meta = dict(extra_meta or {})
    try:
        json.dumps(meta)
    except (TypeError, ValueError) as err:
        raise TypeError(f"extra_meta must be JSON-able: {err}") from err
    doc = {"format": 1, "method": exp.method, "signed": exp.signed, "target_names": exp.target_names,
           "extras": values, "extras_order": list(exp.extras), "refs": refs, "meta": meta}
    return tensors, doc


def _read_parts(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(stored tensors, JSON document) of a saved explanation; files written before the JSON document existed
    give method and signed (and, for .npz, target names) from their plain entries."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        text = meta.get(_META_KEY)
        if text:
            return tensors, json.loads(text)
        if "method" not in meta:
            raise ValueError(f"{path} was not written by Explanation.save (no method in its metadata)")
        return tensors, {"method": meta["method"], "signed": meta.get("signed") == "True"}
    if path.suffix != ".npz":
        raise ValueError(f"unsupported suffix '{path.suffix}' for {path}; use .npz or .safetensors")
    plain = ("method", "signed", "target_names", _META_KEY)
    with np.load(path, allow_pickle=False) as z:
        tensors = {k: torch.from_numpy(z[k].copy()) for k in z.files if k not in plain}
        if _META_KEY in z.files:
            return tensors, json.loads(str(z[_META_KEY]))
        if "method" not in z.files:
            raise ValueError(f"{path} was not written by Explanation.save (no method entry)")
        names = z["target_names"].tolist() if "target_names" in z.files else None
        return tensors, {"method": str(z["method"]), "signed": bool(z["signed"]), "target_names": names}
