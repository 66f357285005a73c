"""The function behind `traitlens evaluate --model M --data DIR --methods ... --metrics ... --out DIR`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch.nn as nn
from torch.utils.data import Dataset

from traitlens.evaluation.evaluate import EvalResults, evaluate
from traitlens.evaluation.lsc import LscRule
from traitlens.explain import AmpUnsafeMethodError, amp_refusal, amp_safe_methods

__all__ = [
    "DEFAULT_METRICS",
    "amp_options",
    "cli_evaluate",
    "open_dataset",
    "parse_lsc",
    "resolve_methods",
    "resolve_metric_names",
]

log = logging.getLogger(__name__)

DEFAULT_METRICS: tuple[str, ...] = ("deletion", "insertion", "pointing_game", "energy_pointing_game", "sparsity",
                                    "gini")
"""Cheap, widely applicable defaults (faithfulness + localisation on object masks/boxes + sparsity)."""


def _split_names(value: str | Sequence[str]) -> list[str]:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [v for item in value for v in _split_names(item)]


def resolve_methods(methods: str | Sequence[str]) -> list[str]:
    """'all' → every ViT method; else a comma-separated string or a list (globs allowed, e.g. 'cdam*')."""
    from traitlens.explain import list_methods

    out: list[str] = []
    for name in _split_names(methods):
        if name == "all":
            found = [m.name for m in list_methods(family="vit") if m.name != "native"]
        elif any(ch in name for ch in "*?["):
            found = [m.name for m in list_methods(name)]
            if not found:
                raise ValueError(f"no method matches '{name}'")
        else:
            found = [name]
        out.extend(f for f in found if f not in out)
    return out


def resolve_metric_names(metrics: str | Sequence[str]) -> list[str]:
    """'default' → `DEFAULT_METRICS`; 'all' → every registered metric; else names (optionally 'name@source')."""
    from traitlens.metrics import list_metrics

    out: list[str] = []
    for name in _split_names(metrics):
        found = (list(DEFAULT_METRICS) if name == "default" else [m.name for m in list_metrics()] if name == "all"
                 else [name])
        out.extend(f for f in found if f not in out)
    return out


def parse_lsc(value: str | Mapping[int, int] | None) -> LscRule | None:
    """The `--lsc` option: a rule name ("min_logit", "traits"), a JSON file holding {true_class: lsc_class}, or
    inline pairs "TRUE:LSC,TRUE:LSC" of class ids. Empty or None means the default rule."""
    if value is None or isinstance(value, Mapping):
        return value
    text = value.strip()
    if not text:
        return None
    if text.endswith(".json"):
        path = Path(text)
        if not path.is_file():
            raise FileNotFoundError(f"lsc mapping file not found: {path}")
        try:
            return {int(k): int(v) for k, v in json.loads(path.read_text()).items()}
        except (json.JSONDecodeError, AttributeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: expected a JSON object {{\"true_class\": lsc_class}} of class ids") from err
    if ":" in text:
        try:
            return {int(a): int(b) for a, b in (pair.split(":") for pair in text.split(",") if pair.strip())}
        except ValueError as err:
            raise ValueError(f"bad lsc mapping {text!r}: expected 'TRUE:LSC,TRUE:LSC' with class ids") from err
    return text


def open_dataset(data: str | Path | Dataset, model: nn.Module, split: str = "test") -> Dataset:
    """A dataset for `model` from a path or spec, resized to the model's input size.

    - `"traitshapes"` or `"traitshapes:N"`: N (default 256) TraitShapes test images for the model's class count and
      input size, with the default generator config (what `traitlens quickstart` trains on);
    - a folder with `images.txt`: the CUB-200-2011 layout (`split` 'train' | 'test' | 'all');
    - any other folder: an ImageFolder tree (`split` is used when such a sub-folder exists).
    """
    if isinstance(data, Dataset):
        return data
    from traitlens.backbones.preprocess import data_config
    from traitlens.data import CUBDataset, ImageFolderDataset, Resize

    _, h, w = data_config(model)["input_size"]
    text = str(data)
    if text == "traitshapes" or text.startswith("traitshapes:"):
        from traitlens.data.traitshapes import TraitShapes, TraitShapesConfig, materialize

        n = int(text.split(":", 1)[1]) if ":" in text else 256
        classes = int(getattr(model, "num_classes", 0))
        config = TraitShapesConfig(size=h, num_classes=classes)
        return materialize(TraitShapes(config, "test", n), num_workers=0, progress=False)
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root} (or pass 'traitshapes[:N]')")
    resize = Resize((h, w))
    if (root / "images.txt").is_file():
        return CUBDataset(root, split=split, transform=resize)
    return ImageFolderDataset(root, split=split if (root / split).is_dir() else None, transform=resize)


def cli_evaluate(
    model: str | Path | nn.Module,
    data: str | Path | Dataset,
    methods: str | Sequence[str] = "cdam",
    metrics: str | Sequence[str] = "default",
    out: str | Path = "runs/evaluate",
    *,
    split: str = "test",
    batch_size: int = 16,
    max_images: int | None = None,
    target: str = "label",
    lsc: str | Mapping[int, int] | None = None,
    device: str = "cpu",
    progress: bool = True,
    resume: bool = True,
    method_options: Mapping[str, Mapping[str, Any]] | None = None,
    metric_options: Mapping[str, Mapping[str, Any]] | None = None,
    amp: bool = False,
) -> EvalResults:
    """Load the model and data, evaluate, and write `out/results.{csv,json,md}`, `per_image.csv` and `plots/`.

    Args:
        model: a timm name, preset, local model folder or file (see `traitlens.load_model`), or a module.
        data: a CUB-layout folder, an ImageFolder tree, "traitshapes[:N]", or a dataset.
        methods: "all", a comma-separated list or a list.
        metrics: "default", "all", a comma-separated list (names or "name@source") or a list.
        out: the output folder (its `cache/` makes re-runs resume).
        target: "label", "top1" or "lsc" (the least similar class, metrics.md §6).
        lsc: with target "lsc": "min_logit" (default), "traits", a JSON mapping file or "TRUE:LSC,..." (see
            `parse_lsc`).
        amp: run every method with `explain(..., amp=True)`; refused before any work when a method is
            amp-unsafe (`AmpUnsafeMethodError`).

    Example:
        traitlens evaluate --model runs/qs/run/best --data traitshapes:128 --methods cdam,rollout,agcam
            --metrics deletion,insertion,pointing_game@trait --out runs/eval
        traitlens evaluate --model runs/qs/run/best --data traitshapes:128 --methods cdam --metrics pointing_game
            --target lsc --lsc traits --out runs/eval-lsc
    """
    if not isinstance(model, nn.Module):
        from traitlens.backbones import load_model

        model = load_model(model)
    model = model.to(device).eval()
    dataset = open_dataset(data, model, split)
    names = resolve_methods(methods)
    metric_names = resolve_metric_names(metrics)
    if amp:
        method_options = amp_options(names, method_options)
    log.info("evaluating %d methods × %d metrics on %d images", len(names), len(metric_names),
             len(cast(Sized, dataset)) if max_images is None else min(len(cast(Sized, dataset)), max_images))
    return evaluate(model, dataset, names, metric_names, out=out, batch_size=batch_size, max_images=max_images,
                    target=target, lsc=parse_lsc(lsc), method_options=method_options, metric_options=metric_options,
                    progress=progress, resume=resume)


def amp_options(methods: Sequence[str], method_options: Mapping[str, Mapping[str, Any]] | None
                ) -> dict[str, dict[str, Any]]:
    """`method_options` with `amp=True` for every method.

    Raises:
        AmpUnsafeMethodError: some methods are amp-unsafe (all of them named in one line).
    """
    unsafe = [m for m in methods if amp_refusal(m) is not None]
    if unsafe:
        raise AmpUnsafeMethodError(f"amp-unsafe methods (half precision breaks their maps): {', '.join(unsafe)}; "
                                   f"drop --amp or keep to: {', '.join(amp_safe_methods())}")
    options = {m: dict(o) for m, o in (method_options or {}).items()}
    for m in methods:
        options.setdefault(m, {})["amp"] = True
    return options
