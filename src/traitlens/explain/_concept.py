"""Concepts (posthoc.md §2): a direction in a backbone's latent space, explained with CDAM like a class.

A `Concept` is the mean pre-logit latent of a few example images. `explain(model, x, method="cdam",
target=concept)` then explains y = ⟨l(x), v⟩ (or the cosine similarity) in place of a logit.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F

from traitlens._io import atomic_write
from traitlens.backbones.preprocess import data_config, load_images, normalize
from traitlens.backbones.protocols import TimmClassifier

__all__ = ["SIMILARITIES", "Concept", "ConceptLoadError", "backbone_id", "preprocessing_hash"]

SIMILARITIES = ("dot", "cosine")
_FORMAT = "traitlens.concept"
_VERSION = 1


def backbone_id(model: nn.Module) -> str | None:
    """A readable id of the backbone: the traitlens config's architecture, else timm's `architecture[.tag]`."""
    cfg = getattr(model, "traitlens_config", None) or {}
    if isinstance(cfg, dict) and cfg.get("architecture"):
        return str(cfg["architecture"])
    pcfg = getattr(model, "pretrained_cfg", None) or {}
    arch = pcfg.get("architecture") if isinstance(pcfg, dict) else None
    if not arch:
        return None
    tag = pcfg.get("tag")
    return f"{arch}.{tag}" if tag else str(arch)


def preprocessing_hash(model: nn.Module) -> str:
    """16 hex digits identifying the model's input preprocessing (mean, std, input size)."""
    cfg = data_config(model)
    key = {
        "mean": [round(float(v), 6) for v in cfg["mean"]],
        "std": [round(float(v), 6) for v in cfg["std"]],
        "input_size": [int(v) for v in cfg["input_size"]],
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def latent(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """l(x) = forward_head(forward_features(x), pre_logits=True) ∈ R^{B×D'} (works with num_classes=0)."""
    classifier = cast(TimmClassifier, model)
    return classifier.forward_head(classifier.forward_features(images), pre_logits=True)


@dataclass
class Concept:
    """A concept vector v with the provenance needed to use it safely (posthoc.md §2).

    Attributes:
        name: readable name, shown as the target name of explanations.
        vector: v ∈ R^{D'}, the mean pre-logit latent of the concept images.
        backbone: id of the backbone that produced v (see `backbone_id`), None when unknown.
        preprocessing: hash of the mean/std/input size the images were prepared with, None when unknown.
        n_images: how many images were averaged.
        similarity: "dot" (default; y = ⟨l(x), v⟩, the reference) or "cosine" (y = cos(l(x), v)).

    Example:
        >>> violin = Concept.from_images(model, violin_images, "violin")  # doctest: +SKIP
        >>> exp = explain(model, x, method="cdam", target=violin)  # doctest: +SKIP
    """

    name: str
    vector: torch.Tensor
    backbone: str | None = None
    preprocessing: str | None = None
    n_images: int = 0
    similarity: str = "dot"

    def __post_init__(self) -> None:
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"unknown similarity '{self.similarity}'; choose from {SIMILARITIES}")
        if not isinstance(self.vector, torch.Tensor):
            self.vector = torch.as_tensor(self.vector)
        if self.vector.dim() != 1 or not self.vector.is_floating_point():
            raise ValueError(f"a concept vector must be a 1-D float tensor, got shape {tuple(self.vector.shape)} "
                             f"and dtype {self.vector.dtype}")
        self.vector = self.vector.detach()

    @classmethod
    def from_images(
        cls,
        model: nn.Module,
        images: torch.Tensor | Sequence[str | Path],
        name: str,
        similarity: str = "dot",
        batch_size: int = 32,
    ) -> Concept:
        """v = mean_k l(x_k) over the concept images, under no_grad.

        Args:
            model: the backbone (a timm ViT; `num_classes=0` works). Not switched to eval mode here.
            images: [n,3,H,W] (or [3,H,W]) in the model's input space, or image file paths, which are loaded
                at the model's input size and normalised with its mean/std.
            name: the concept's name.
            similarity: "dot" (default) or "cosine".
            batch_size: images per forward pass.

        Returns:
            The `Concept`, recording the backbone id, the preprocessing hash and n_images.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if not isinstance(images, torch.Tensor):
            if isinstance(images, (str, Path)):
                images = [images]
            param = next(model.parameters(), None)
            images = normalize(model, load_images(list(images), model))
            if param is not None:
                images = images.to(param.device, param.dtype)
        if images.dim() == 3:
            images = images.unsqueeze(0)
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"concept images must be [n,3,H,W] with n ≥ 1, got shape {tuple(images.shape)}")
        if model.training:
            warnings.warn("computing a concept with a model in training mode; call model.eval() first", stacklevel=2)
        with torch.no_grad():
            chunks = images.split(batch_size)
            total = latent(model, chunks[0]).sum(0)
            for chunk in chunks[1:]:
                total = total + latent(model, chunk).sum(0)
        vector = total / images.shape[0]
        return cls(name=name, vector=vector, backbone=backbone_id(model), preprocessing=preprocessing_hash(model),
                   n_images=int(images.shape[0]), similarity=similarity)

    def score(self, latents: torch.Tensor) -> torch.Tensor:
        """y [M] for latents [M,D']: ⟨l, v⟩ ('dot') or cos(l, v) ('cosine'), differentiable in `latents`."""
        if latents.shape[-1] != self.vector.numel():
            raise ValueError(
                f"concept '{self.name}' has a {self.vector.numel()}-dim vector (backbone {self.backbone!r}) but "
                f"the model gives {latents.shape[-1]}-dim latents; recompute the concept with this model"
            )
        v = self.vector.to(device=latents.device, dtype=latents.dtype)
        if self.similarity == "dot":
            return latents @ v
        return F.cosine_similarity(latents, v.unsqueeze(0), dim=-1)

    def check_model(self, model: nn.Module) -> None:
        """Warn when `model` is not the backbone (or preprocessing) this concept was computed with."""
        other = backbone_id(model)
        if self.backbone is not None and other is not None and other != self.backbone:
            warnings.warn(
                f"concept '{self.name}' was computed with backbone '{self.backbone}' but is used with '{other}'; "
                "latent directions do not transfer between backbones",
                stacklevel=3,
            )
        if self.preprocessing is not None and preprocessing_hash(model) != self.preprocessing:
            warnings.warn(
                f"concept '{self.name}' was computed with different preprocessing (mean/std/input size hash "
                f"{self.preprocessing}) than the model's ({preprocessing_hash(model)})",
                stacklevel=3,
            )

    def _meta(self) -> dict[str, Any]:
        return {"format": _FORMAT, "version": _VERSION, "name": self.name, "backbone": self.backbone,
                "preprocessing": self.preprocessing, "n_images": self.n_images, "similarity": self.similarity}

    def save(self, path: str | Path) -> Path:
        """Write to `.safetensors` (vector + JSON metadata) or `.pt`, atomically; returns the path."""
        path = Path(path)
        vector = self.vector.detach().cpu().contiguous()
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            meta = {"traitlens_concept": json.dumps(self._meta())}
            atomic_write(path, lambda p: save_file({"vector": vector}, str(p), metadata=meta))
        elif path.suffix in (".pt", ".pth"):
            atomic_write(path, lambda p: torch.save({"vector": vector, "meta": self._meta()}, p))
        else:
            raise ValueError(f"unsupported suffix '{path.suffix}' for {path}; use .safetensors or .pt")
        return path

    @classmethod
    def load(cls, path: str | Path) -> Concept:
        """Read a concept written by `save`; nothing in the file is executed (no unpickling of objects).

        Raises:
            FileNotFoundError: no such file.
            ConceptLoadError: not a concept file (corrupt, foreign, a pickle of other objects, bad metadata).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"concept file not found: {path}")
        if path.suffix not in (".safetensors", ".pt", ".pth"):
            raise ValueError(f"unsupported suffix '{path.suffix}' for {path}; use .safetensors or .pt")
        try:
            vector, meta = _read_safetensors(path) if path.suffix == ".safetensors" else _read_pt(path)
        except ConceptLoadError:
            raise
        except Exception as err:  # torch / safetensors / JSON say "corrupt" in many ways; all mean the same here
            raise ConceptLoadError(path, _first_line(err)) from err
        if not isinstance(meta, dict) or meta.get("format") != _FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise ConceptLoadError(path, f"metadata format {found!r}, not {_FORMAT!r}")
        if not isinstance(vector, torch.Tensor):
            raise ConceptLoadError(path, f"'vector' is a {type(vector).__name__}, not a tensor")
        try:
            return cls(name=str(meta["name"]), vector=vector, backbone=meta.get("backbone"),
                       preprocessing=meta.get("preprocessing"), n_images=int(meta.get("n_images", 0)),
                       similarity=meta.get("similarity", "dot"))
        except (KeyError, TypeError, ValueError) as err:
            raise ConceptLoadError(path, _first_line(err)) from err


class ConceptLoadError(ValueError):
    """A file given to `Concept.load` is not a concept `Concept.save` wrote; one line naming the file and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path} is not a traitlens concept file ({reason}); expected a .safetensors or .pt file "
                         "written by Concept.save: a 1-D float 'vector' tensor and its metadata")
        self.path = path


def _first_line(err: BaseException) -> str:
    """The gist of a reader's error: its type and first sentence (torch's advice to unpickle is left out)."""
    if isinstance(err, pickle.UnpicklingError):
        return "not a torch file of tensors: corrupt, or it pickles other objects, which are never loaded"
    lines = str(err).strip().splitlines()
    if not lines:
        return "truncated or empty" if isinstance(err, EOFError) else type(err).__name__
    return f"{type(err).__name__}: {lines[0].split('. ')[0][:160]}"


def _read_safetensors(path: Path) -> tuple[Any, Any]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        raw = (fh.metadata() or {}).get("traitlens_concept")
        if raw is None or "vector" not in fh.keys():  # noqa: SIM118 (safe_open has no __contains__)
            raise ConceptLoadError(path, "no 'vector' tensor or no concept metadata")
        vector = fh.get_tensor("vector")
    return vector, json.loads(raw)


def _read_pt(path: Path) -> tuple[Any, Any]:
    # weights_only: tensors and plain containers only; any other pickled object is refused, never built.
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or "vector" not in blob or "meta" not in blob:
        raise ConceptLoadError(path, f"a {type(blob).__name__} without 'vector' and 'meta'")
    return blob["vector"], blob["meta"]
