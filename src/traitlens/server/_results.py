"""The last explanations the server computed, kept in memory so the page can download them as `.npz`.

A download is the very explanation that was shown (no recomputation: randomised methods such as SmoothGrad would
give other maps), written with `Explanation.save`, so `traitlens.explain.Explanation.load` reads it back. Ids are
random and unguessable; the oldest result is dropped beyond `ServerLimits.max_results`.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from traitlens.explain import Explanation

__all__ = ["ResultStore", "StoredResult"]


@dataclass
class StoredResult:
    """One explanation (on the CPU) with what the file's metadata says about it."""

    explanation: Explanation
    meta: dict[str, Any] = field(default_factory=dict)

    def npz_bytes(self) -> bytes:
        """The explanation as `.npz` bytes (`Explanation.save`'s format, with `meta` as its extra metadata)."""
        with tempfile.TemporaryDirectory(prefix="traitlens-npz-") as tmp:
            path = self.explanation.save(Path(tmp) / "explanation.npz", extra_meta=self.meta)
            return path.read_bytes()


def _storable(exp: Explanation) -> Explanation:
    """`exp` without the extras `Explanation.save` cannot write (neither tensors nor JSON-able)."""
    kept = {}
    for key, value in exp.extras.items():
        if not isinstance(key, str):
            continue
        if isinstance(value, torch.Tensor):
            kept[key] = value
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue
        kept[key] = value
    return dataclasses.replace(exp, extras=kept)


class ResultStore:
    """A bounded, thread-safe id → `StoredResult` map (oldest dropped first)."""

    def __init__(self, max_items: int) -> None:
        self.max_items = max_items
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, explanation: Explanation, meta: dict[str, Any]) -> str:
        """Store a CPU copy of `explanation`; returns its new id."""
        rid = secrets.token_urlsafe(12)
        item = StoredResult(_storable(explanation.cpu()), dict(meta))
        with self._lock:
            self._items[rid] = item
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return rid

    def get(self, rid: str) -> StoredResult | None:
        with self._lock:
            return self._items.get(rid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)
