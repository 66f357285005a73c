"""What the server does, without the HTTP plumbing: the served models, request checks, and the pooled jobs.

The checks (`Server.explain_request`, `Server.concept_request`, `Server.check_upload`) are cheap and run before a
request takes a pool slot; the jobs (`Server.explain_job`, `Server.concept_job`) decode, compute and render in the
pool. Refusals raise `RequestError` (or `UploadError`) carrying the HTTP status and a message saying what to do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from fastapi import HTTPException
from PIL import Image

from traitlens.backbones.introspect import class_names_of, is_vit
from traitlens.backbones.preprocess import data_config, normalize, pil_to_tensor
from traitlens.explain import (
    Explanation,
    MethodInfo,
    explain,
    get_method,
    list_methods,
    method_refusal,
    parse_target_text,
    upsample_maps,
)
from traitlens.explain import supported_methods as explain_supported_methods
from traitlens.explain.api import num_classes_of
from traitlens.server._images import FORMATS, UploadError, decode_upload, sniff_format
from traitlens.server._limits import ServerLimits
from traitlens.server._pool import BoundedPool, ModelReplicas, PoolBusy, PoolTimeout
from traitlens.server._render import MapScale, display_image, head_layers, map_layers, map_scale, png_data_url
from traitlens.server._results import ResultStore
from traitlens.server._schemas import (
    ContrastOut,
    ExampleOut,
    ExplainOut,
    ModelOut,
    PredictionOut,
    ScaleOut,
    SizeOut,
    TargetOut,
)
from traitlens.server.concepts import ConceptStore, StoredConcept, concept_class
from traitlens.server.examples import ExampleImage, load_examples

__all__ = ["MAX_TEXT", "ExplainRequest", "RequestError", "Served", "Server", "Target", "clean_text", "model_family",
           "supported_methods"]

#: Longest accepted short text field (model, method, target, concept name).
MAX_TEXT = 200
_NO_CONCEPTS = "concept targets are not available in this traitlens version"


class RequestError(Exception):
    """A request the server refuses; `status` is the HTTP status, the message says why and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def model_family(model: nn.Module) -> str:
    """'native' for interpretable-by-design models (they expose `native_maps`), 'vit' for timm ViTs, else 'cnn'."""
    if callable(getattr(model, "native_maps", None)):
        return "native"
    return "vit" if is_vit(model) else "cnn"


def supported_methods(model: nn.Module) -> list[str]:
    """The registered methods that run on `model` (what /api/info offers for it): the library's one rule."""
    return [m.name for m in explain_supported_methods(model)]


def clean_text(text: str | None, what: str) -> str:
    """Strip and bound a short text field; control characters are refused."""
    text = (text or "").strip()
    if len(text) > MAX_TEXT:
        raise RequestError(400, f"{what} is longer than {MAX_TEXT} characters")
    if any(ord(c) < 32 for c in text):
        raise RequestError(400, f"{what} contains control characters")
    return text


@dataclass
class Served:
    """A model loaded at start-up, with one replica per worker."""

    name: str
    model: nn.Module
    replicas: ModelReplicas
    family: str
    num_classes: int | None
    class_names: list[str] | None
    input_size: tuple[int, int]

    def describe(self) -> ModelOut:
        return ModelOut(name=self.name, architecture=type(self.model).__name__, family=self.family,
                        num_classes=self.num_classes,
                        class_names=self.class_names, input_size=list(self.input_size),
                        methods=supported_methods(self.model))


@dataclass
class Target:
    """A parsed target: what to pass to `explain` ("top1", "topk:K", a class id, or a Concept)."""

    value: Any


@dataclass
class ExplainRequest:
    """A checked /api/explain request: the model, the method, the target and the optional 'why not' contrast."""

    served: Served
    info: MethodInfo
    target: Target
    contrast: Target | None


class Server:
    """State and handlers of one app: the served models, the pool, the concepts."""

    def __init__(self, models: Mapping[str, nn.Module], limits: ServerLimits,
                 examples: Sequence[str | Path] = (), amp: bool = False) -> None:
        if not models:
            raise ValueError("create_app needs at least one model")
        self.limits = limits
        self.amp = amp  # for the amp-safe methods only
        self.pool = BoundedPool(limits.workers, limits.queue_size)
        self.concepts = ConceptStore(limits.max_concepts)
        self.results = ResultStore(limits.max_results)
        self.example_folders = list(examples)
        self._examples: list[ExampleImage] | None = None
        self.models: dict[str, Served] = {}
        for name, model in models.items():
            model.eval()
            h, w = (int(v) for v in data_config(model)["input_size"][1:])
            names = class_names_of(model)
            self.models[name] = Served(name, model, ModelReplicas(model, limits.workers), model_family(model),
                                       num_classes_of(model), list(names) if names else None, (h, w))
        self.default_model = next(iter(self.models))

    # -- look-ups (cheap, before any pool slot is taken) -----------------------------------------------------------
    def examples(self) -> list[ExampleImage]:
        """The example images (`server.examples`), read on first use and kept."""
        if self._examples is None:
            self._examples = load_examples(self.example_folders, self.limits.max_upload_bytes)
        return self._examples

    def examples_out(self) -> list[ExampleOut]:
        return [ExampleOut(id=e.id, name=e.name, source=e.source, label=e.label, url=f"/api/examples/{e.id}",
                           width=e.width, height=e.height) for e in self.examples()]

    def example(self, ex_id: str) -> ExampleImage:
        found = next((e for e in self.examples() if e.id == ex_id), None)
        if found is None:
            raise RequestError(404, f"unknown example '{ex_id[:MAX_TEXT]}'; GET /api/examples lists them")
        return found

    @staticmethod
    def concepts_available() -> bool:
        """Whether this traitlens can build concepts (the concept endpoints answer 501 otherwise)."""
        return concept_class() is not None

    def served(self, name: str | None) -> Served:
        name = clean_text(name, "model") or self.default_model
        if name not in self.models:
            raise RequestError(404, f"unknown model '{name}'; this server has: {', '.join(self.models)}")
        return self.models[name]

    @staticmethod
    def method(name: str | None) -> MethodInfo:
        name = clean_text(name, "method") or "cdam"
        try:
            return get_method(name)
        except ValueError as err:
            raise RequestError(400, str(err)) from err

    def target(self, text: str | None, served: Served, info: MethodInfo, *, contrast: bool = False) -> Target:
        """Parse 'top1', 'topk:K', a class index, a class name or 'concept:<id>' for `served`."""
        what = "contrast" if contrast else "target"
        t = clean_text(text, what) or "top1"
        if t.startswith("concept:"):
            return self._concept_target(t.split(":", 1)[1], served, info, what)
        try:
            value = parse_target_text(t, served.class_names)
        except ValueError:
            value = t  # a malformed 'topk:K' or list: refused below with this server's bounds
        if value == "top1":
            return Target("top1")
        if isinstance(value, str) and value.startswith("topk:"):
            if contrast:
                raise RequestError(400, "the contrast must be one class (or concept), not topk")
            k = value.split(":", 1)[1]
            bound = min(self.limits.max_targets, served.num_classes or self.limits.max_targets)
            if not k.isdigit() or not 1 <= int(k) <= bound:
                raise RequestError(400, f"bad {what} '{t}': K must be an integer in 1..{bound}")
            return Target(value)
        if isinstance(value, int):
            n = served.num_classes
            if n is not None and not 0 <= value < n:
                raise RequestError(400, f"class index {value} out of range: model '{served.name}' has {n} classes "
                                        f"(0..{n - 1})")
            return Target(value)
        if isinstance(value, str) and served.class_names and value in served.class_names:
            return Target(served.class_names.index(value))
        known = ", ".join(served.class_names[:20]) + (" ..." if len(served.class_names) > 20 else "") \
            if served.class_names else "none (use class indices)"
        raise RequestError(400, f"unknown class '{t}' for model '{served.name}'; class names: {known}")

    def _concept_target(self, concept_id: str, served: Served, info: MethodInfo, what: str) -> Target:
        self.require_concepts()
        item = self.concepts.get(concept_id)
        if item is None:
            raise RequestError(404, f"unknown concept id '{concept_id}' in {what}; create one with POST /api/concept "
                                    "(concepts live in memory and vanish when the server restarts)")
        if item.model != served.name:
            raise RequestError(400, f"concept '{item.concept.name}' ({concept_id}) was computed with model "
                                    f"'{item.model}', not '{served.name}'")
        if not info.concept:
            capable = ", ".join(m.name for m in list_methods() if m.concept) or "none"
            raise RequestError(400, f"method '{info.name}' does not take concept targets; concept-capable: {capable}")
        return Target(item.concept)

    def require_concepts(self) -> None:
        """Raise 501 when this traitlens cannot build concepts."""
        if not self.concepts_available():
            raise RequestError(501, f"{_NO_CONCEPTS} (traitlens.explain.Concept is missing)")

    def explain_request(self, model: str | None, method: str | None, target: str | None,
                        contrast: str | None) -> ExplainRequest:
        """Check the form fields of /api/explain: model, method, target and contrast."""
        served = self.served(model)
        info = self.method(method)
        refusal = method_refusal(served.model, info.name)
        if refusal is not None:
            raise RequestError(400, refusal)
        tgt = self.target(target, served, info)
        con = None
        if contrast and contrast.strip():
            if not info.class_specific:
                raise RequestError(400, f"method '{info.name}' is not class-specific, so 'why A, not B' "
                                        "shows nothing; pick a class-specific method such as cdam")
            con = self.target(contrast, served, info, contrast=True)
        return ExplainRequest(served, info, tgt, con)

    def concept_request(self, model: str | None, name: str | None, n_images: int) -> tuple[Served, str]:
        """Check the form fields of /api/concept; returns the served model and the concept's name."""
        self.require_concepts()
        served = self.served(model)
        label = clean_text(name, "concept name")
        if not label:
            raise RequestError(400, "a concept needs a name")
        if not 1 <= n_images <= self.limits.max_concept_images:
            raise RequestError(400, f"a concept takes 1..{self.limits.max_concept_images} images, got {n_images}")
        return served, label

    def check_upload(self, data: bytes, label: str) -> None:
        """The cheap checks (size, magic bytes) before the upload takes a pool slot."""
        if not data:
            raise UploadError(400, f"{label}: the uploaded file is empty")
        if len(data) > self.limits.max_upload_bytes:
            raise UploadError(413, f"{label}: upload is larger than the limit of {self.limits.max_upload_bytes} "
                                   "bytes")
        if sniff_format(data) is None:
            raise UploadError(415, f"{label}: not a supported image (judged by its content, not its name or "
                                   f"content type); accepted: {', '.join(FORMATS.values())}")

    def decode(self, data: bytes, label: str) -> Image.Image:
        return decode_upload(data, max_bytes=self.limits.max_upload_bytes, max_pixels=self.limits.max_pixels,
                             label=label)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run a job in the pool, turning every failure into an HTTP error with a message."""
        try:
            return await self.pool.run(fn, *args, timeout=self.limits.timeout_s)
        except PoolBusy as err:
            raise HTTPException(503, str(err), headers={"Retry-After": "1"}) from err
        except PoolTimeout as err:
            raise HTTPException(504, str(err)) from err

    # -- jobs (run in the pool) ---------------------------------------------------------------------------------
    @staticmethod
    def _input(model: nn.Module, images01: torch.Tensor) -> torch.Tensor:
        x = normalize(model, images01)
        param = next(model.parameters(), None)
        return x if param is None else x.to(param.device, param.dtype)

    def explain_job(self, req: ExplainRequest, data: bytes, include_raw: bool) -> ExplainOut:
        """Decode, explain, render; everything CPU-heavy of one /api/explain request.

        The maps are explained unnormalised (`normalize="none"`) and coloured on one scale per request, so the
        top-k maps compare: the same colour is the same value (`_render.map_scale`).
        """
        start = time.perf_counter()
        served, info = req.served, req.info
        image = self.decode(data, "image")
        x01 = pil_to_tensor(image, served.input_size)[None]
        model = served.replicas.acquire()
        try:
            x = self._input(model, x01)
            amp = self.amp and info.amp_tolerance is not None
            exp = explain(model, x, method=info.name, target=req.target.value, normalize="none", amp=amp).cpu()
            logits = exp.logits
            if logits is None:
                with torch.no_grad():
                    logits = model(x).cpu()
            other = None
            if req.contrast is not None:
                other = explain(model, x, method=info.name, target=req.contrast.value, normalize="none",
                                amp=amp).cpu()
        finally:
            served.replicas.release(model)
        probs = logits.detach().float().softmax(-1)[0]
        shown = display_image(image, self.limits.display_size)
        small = display_image(image, self.limits.head_display_size) if exp.head_maps is not None else None
        scale = map_scale(exp.maps[0], exp.signed)
        head_scale = None
        if exp.head_maps is not None:
            head_scale = map_scale(exp.head_maps[0, :, : self.limits.max_heads], exp.signed)
        targets = self._targets_out(exp, probs, shown, small, scale, head_scale, include_raw)
        contrast = None if other is None else self._contrast_out(exp, other, targets[0].name, shown, info,
                                                                 tuple(x.shape[-2:]), include_raw)
        rid = self.results.add(exp, {"model": served.name, "image_size": [image.width, image.height],
                                     "input_size": list(served.input_size), "class_names": served.class_names})
        return ExplainOut(
            model=served.name, method=info.name, signed=exp.signed, input_size=list(served.input_size),
            overlay_size=SizeOut(width=int(shown.shape[1]), height=int(shown.shape[0])),
            image=png_data_url(shown), head_image=None if small is None else png_data_url(small),
            scale=_scale_out(scale), head_scale=None if head_scale is None else _scale_out(head_scale),
            download=f"/api/results/{rid}.npz",
            predictions=_predictions(logits, probs, served.class_names), targets=targets, contrast=contrast,
            map_shape=list(exp.maps.shape), patch_map_shape=list(exp.patch_maps.shape),
            head_maps_shape=None if exp.head_maps is None else list(exp.head_maps.shape),
            amp=exp.extras.get("amp"), seconds=round(time.perf_counter() - start, 4))

    def _targets_out(self, exp: Explanation, probs: torch.Tensor, shown: np.ndarray, small: np.ndarray | None,
                     scale: MapScale, head_scale: MapScale | None, include_raw: bool) -> list[TargetOut]:
        """One `TargetOut` per explained target: heat layer and overlay, per-head maps, raw map."""
        targets = []
        for k in range(exp.maps.shape[1]):
            idx = int(exp.targets[0, k])
            name = exp.target_names[0][k] if exp.target_names else str(idx)
            heads = head_heat = None
            if exp.head_maps is not None and small is not None and head_scale is not None:
                head_heat, heads = head_layers(small, exp.head_maps[0, k, : self.limits.max_heads], head_scale)
            heat, over = map_layers(shown, exp.maps[0, k], scale)
            targets.append(TargetOut(
                index=idx if idx >= 0 else None, name=name, prob=float(probs[idx]) if idx >= 0 else None,
                overlay=over, heat=heat,
                degenerate=bool(exp.degenerate[0, k]) if exp.degenerate is not None else False,
                heads=heads, head_heat=head_heat, raw=exp.patch_maps[0, k].float().tolist() if include_raw else None))
        return targets

    @staticmethod
    def _contrast_out(exp: Explanation, other: Explanation, a_name: str, shown: np.ndarray, info: MethodInfo,
                      size: tuple[int, ...], include_raw: bool) -> ContrastOut:
        """'Why A, not B': the raw map of the first target minus the contrast's, upsampled like the method's."""
        b_name = other.target_names[0][0] if other.target_names else str(int(other.targets[0, 0]))
        if int(exp.targets[0, 0]) >= 0 and int(exp.targets[0, 0]) == int(other.targets[0, 0]):
            raise RequestError(400, f"the contrast class '{b_name}' is the explained class itself; pick another")
        # Raw maps of one method on one image share a scale, so A − B is meaningful (posthoc.md §1).
        diff = (exp.patch_maps[0, 0] - other.patch_maps[0, 0]).float()
        pixel = upsample_maps(diff[None, None], (int(size[0]), int(size[1])), info.default_upsample)[0, 0]
        scale = map_scale(diff, True)
        heat, over = map_layers(shown, pixel, scale)
        return ContrastOut(a=a_name, b=b_name, overlay=over, heat=heat, scale=_scale_out(scale),
                           max_abs=float(diff.abs().max()), raw=diff.tolist() if include_raw else None)

    def concept_job(self, served: Served, datas: list[bytes], name: str) -> StoredConcept:
        """Decode the sample images and compute the concept vector with the served model."""
        cls = concept_class()
        if cls is None:  # checked before; the class could only vanish in between in tests
            raise RequestError(501, _NO_CONCEPTS)
        x01 = torch.stack([pil_to_tensor(self.decode(d, f"image {i + 1}"), served.input_size)
                           for i, d in enumerate(datas)])
        model = served.replicas.acquire()
        try:
            concept = cls.from_images(model, self._input(model, x01), name)
        finally:
            served.replicas.release(model)
        return self.concepts.add(served.name, concept)


def _scale_out(scale: MapScale) -> ScaleOut:
    return ScaleOut(lo=scale.lo, hi=scale.hi, min=scale.vmin, max=scale.vmax, signed=scale.signed)


def _predictions(logits: torch.Tensor, probs: torch.Tensor, names: list[str] | None) -> list[PredictionOut]:
    """The model's top five classes with probability and logit."""
    top = probs.topk(min(5, probs.numel()))
    return [PredictionOut(index=int(i), name=names[int(i)] if names else None, prob=float(p),
                          logit=float(logits[0, int(i)]))
            for p, i in zip(top.values, top.indices, strict=True)]
