"""What a resumed run must share with the run that wrote the checkpoint: its settings and its data."""

from __future__ import annotations

import hashlib
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from traitlens.train.checkpoint import CheckpointError

__all__ = ["RESUMABLE_CHANGES", "check_resumable", "dataset_fingerprint"]

#: Settings that may change between a run and its resumption (they do not change what is computed).
RESUMABLE_CHANGES = frozenset({"num_workers"})


def dataset_fingerprint(dataset: Dataset) -> str:
    """SHA-256 over a data set's length, class names and four items (first, last and two between).

    Cheap enough for every `fit` call; a different folder, split or seed gives a different fingerprint.
    """
    n = len(cast(Sized, dataset))
    h = hashlib.sha256(f"{n}|{getattr(dataset, 'classes', None)}".encode())
    for i in sorted({0, n // 3, (2 * n) // 3, n - 1} if n else set()):
        item = dataset[i]
        image, label = (item["image"], item["label"]) if isinstance(item, dict) else (item[0], item[1])
        h.update(torch.as_tensor(image).detach().cpu().contiguous().numpy().tobytes())
        h.update(str(int(label)).encode())
    return h.hexdigest()


def check_resumable(state: dict[str, Any], now: dict[str, Any], fingerprint: dict[str, str | None],
                    path: Path) -> None:
    """Refuse to resume a checkpoint written with other settings (`now`: the run's `FitConfig` as a dict) or data.

    Raises:
        CheckpointError: one line naming every setting and data split that differs.
    """
    saved = state.get("config", {})
    changed = [f"{k} {saved.get(k)!r} -> {now[k]!r}" for k in now
               if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]]
    changed += [f"{name} data differs" for name, fp in fingerprint.items() if state.get("data", {}).get(name) != fp]
    if changed:
        raise CheckpointError(f"{path} was written by another run ({'; '.join(changed)}); resume with the same "
                              "settings and data, or start a new run in another --out folder")
