"""The resumable cache of `evaluate`: maps and per-batch metric results under `out/cache`, keyed by the model's
weights, the method and its options, and the batch's content, so an interrupted run continues where it stopped
and a changed model or dataset never reuses stale maps.

Layout: `cache/<model fingerprint>/<method>-<options hash>/<first>-<end>-<batch hash>.safetensors` (an
`Explanation.save` file whose metadata holds the explanation seconds) and, beside it,
`metrics/<metric[@source]>-<knobs hash>/<first>-<end>-<batch hash>.pt`. A file that cannot be read is a cache miss:
it is recomputed and rewritten, with a logged warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from traitlens._io import atomic_write
from traitlens.evaluation._data import Batch
from traitlens.explain import Explanation
from traitlens.metrics import MetricResult

__all__ = ["BatchCache", "EvalCache", "batch_key", "model_fingerprint", "options_hash"]

log = logging.getLogger(__name__)


def model_fingerprint(model: nn.Module) -> str:
    """A short hash of the model class and every parameter and buffer (cache key)."""
    h = hashlib.sha1(type(model).__qualname__.encode())
    for name, t in list(model.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        if t.is_floating_point() or t.is_complex():
            t = t.detach().to("cpu", torch.float32)
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def batch_key(batch: Batch) -> str:
    """Hash of a batch's images, labels and masks (cache key)."""
    h = hashlib.sha1()
    for t in (batch.images01, batch.labels, batch.masks, batch.disc_masks, batch.present, batch.present_masks):
        if t is not None:
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


def options_hash(obj: Any) -> str:
    """Short hash of JSON-able options (cache folder names)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:8]


@dataclass(frozen=True)
class BatchCache:
    """The cache files of one (method, batch); `folder` None when nothing is cached."""

    folder: Path | None
    stem: str
    resume: bool

    @property
    def explanation_path(self) -> Path | None:
        return None if self.folder is None else self.folder / f"{self.stem}.safetensors"

    def results_path(self, key: str, knobs: Any) -> Path | None:
        """The file of metric request `key` ("name[@source]") with `knobs`."""
        return None if self.folder is None else self.folder / "metrics" / f"{key}-{options_hash(knobs)}" / \
            f"{self.stem}.pt"

    def load_explanation(self, device: torch.device) -> tuple[Explanation, float] | None:
        """(explanation, seconds it took) when cached and readable, else None (a miss)."""
        path = self.explanation_path
        if path is None or not self.resume or not path.is_file():
            return None
        try:
            return Explanation.load(path, device=device), float(Explanation.read_meta(path)["seconds"])
        except Exception as err:  # a corrupt or foreign file is recomputed, never the end of the method
            log.warning("cannot read cached maps %s (%s: %s); recomputing them", path, type(err).__name__, err)
            return None

    def save_explanation(self, exp: Explanation, seconds: float) -> None:
        path = self.explanation_path
        if path is None:
            return
        try:
            exp.save(path, extra_meta={"seconds": seconds})
        except TypeError as err:  # extras the format cannot hold: the maps are used, just not cached
            log.warning("not caching maps of %s: %s", exp.method, err)

    def load_results(self, key: str, knobs: Any) -> dict[str, MetricResult] | None:
        """The cached outputs of a metric request when cached and readable, else None (a miss)."""
        path = self.results_path(key, knobs)
        if path is None or not self.resume or not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            return {k: MetricResult(**v) for k, v in blob.items()}
        except Exception as err:
            log.warning("cannot read cached metric results %s (%s: %s); recomputing them", path,
                        type(err).__name__, err)
            return None

    def save_results(self, key: str, knobs: Any, results: dict[str, MetricResult]) -> None:
        path = self.results_path(key, knobs)
        if path is not None:
            blob = {k: asdict(v) for k, v in results.items()}
            atomic_write(path, lambda p: torch.save(blob, p))


class EvalCache:
    """The cache folder of one model under `out` (None: no cache)."""

    def __init__(self, out: Path | None, fingerprint: str, resume: bool) -> None:
        self.root = None if out is None else out / "cache" / fingerprint
        self.resume = resume

    def batch(self, method: str, options: Any, indices: Sequence[int], data_key: str) -> BatchCache:
        """The files of `method` (run with `options`, hashed) on the batch of dataset `indices`."""
        folder = None if self.root is None else self.root / f"{method.replace(':', '_')}-{options_hash(options)}"
        return BatchCache(folder, f"{indices[0]:07d}-{indices[-1] + 1:07d}-{data_key}", self.resume)
