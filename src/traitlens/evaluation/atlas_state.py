"""The resumable state of `atlas` (docs/atlas.md "Resume"): a run config that a resume must match, and one record
per batch of the pass over the data.

Layout under `out/state/`: `config.json` (what the records depend on: the model's weights, the method and its
options, the selected images, the batch size, ...) and `batches/<first>-<end>-<batch hash>.pt`, one dict of CPU
tensors per batch, written atomically and read back with `torch.load(weights_only=True)`. A resume with another
config is refused (`AtlasResumeError`), never mixed; a record that cannot be read is recomputed, with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset

from traitlens._io import atomic_write, sweep_temp_files

__all__ = ["AtlasResumeError", "AtlasState", "dataset_labels", "select_images", "selection_digest"]

log = logging.getLogger(__name__)

#: Bumped when the record layout changes, so an old state folder is refused instead of misread.
STATE_VERSION = 1


class AtlasResumeError(ValueError):
    """The output folder holds the state of another atlas run (another model, method, data or settings)."""


def dataset_labels(dataset: Dataset) -> list[int]:
    """The label of every item, read cheaply where the dataset exposes them.

    Fast paths: a `labels` tensor or sequence (materialised TraitShapes), `samples` as (path, label) pairs
    (ImageFolder), TraitShapes' generator labels; otherwise every item is read once (CUB decodes its images).
    """
    n = len(cast(Sized, dataset))
    labels = getattr(dataset, "labels", None)
    if isinstance(labels, torch.Tensor) and labels.dim() == 1 and len(labels) == n:
        return [int(v) for v in labels.tolist()]
    samples = getattr(dataset, "samples", None)
    if isinstance(samples, Sequence) and len(samples) == n and all(len(s) == 2 for s in samples[:1]):
        return [int(s[1]) for s in samples]
    from traitlens.data.traitshapes import TraitShapes, sample_label

    if isinstance(dataset, TraitShapes) and dataset.transform is None:
        return [sample_label(dataset.config, i, dataset.split) for i in range(n)]
    log.info("reading the labels of %d items", n)
    out = []
    for i in range(n):
        item = dataset[i]
        if "label" not in item:
            raise ValueError("the atlas needs single-label items with a 'label' (multi-label data is not supported)")
        out.append(int(item["label"]))
    return out


def select_images(labels: Sequence[int], classes: Sequence[int] | None, max_per_class: int | None) -> list[int]:
    """Dataset indices of the atlas in dataset order: the first `max_per_class` images of each chosen class."""
    if max_per_class is not None and max_per_class < 1:
        raise ValueError(f"max_per_class must be at least 1, got {max_per_class}")
    wanted = None if classes is None else set(classes)
    taken: dict[int, int] = {}
    out = []
    for i, c in enumerate(labels):
        if wanted is not None and c not in wanted:
            continue
        if max_per_class is not None and taken.get(c, 0) >= max_per_class:
            continue
        taken[c] = taken.get(c, 0) + 1
        out.append(i)
    return out


def _digest(obj: Any) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=repr).encode()).hexdigest()[:12]


class AtlasState:
    """The state folder of one atlas run (no folder: every record is computed and kept in memory only).

    Args:
        out: the atlas folder (`out/state` holds the state), or None.
        config: what the records depend on (JSON-able); compared with a resumed folder's `config.json`.
        resume: reuse the records of an interrupted run with the same config; False starts over (the old
            state folder is removed).

    Raises:
        AtlasResumeError: `resume` and the folder holds the state of a run with another config.
    """

    def __init__(self, out: Path | None, config: Mapping[str, Any], resume: bool) -> None:
        self.root = None if out is None else out / "state"
        self.config = {"version": STATE_VERSION, **config}
        if self.root is None:
            return
        path = self.root / "config.json"
        if path.is_file() and resume:
            try:
                old = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise AtlasResumeError(f"{path} cannot be read ({err}); pass resume=False (--no-resume) to start "
                                       "over") from err
            new = json.loads(json.dumps(self.config, default=repr))
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise AtlasResumeError(
                    f"{out} holds an atlas of another run (it differs in: {', '.join(diff)}); pass resume=False "
                    "(--no-resume) to start over, or choose another output folder")
            sweep_temp_files(self.root / "batches")
            log.info("resuming the atlas in %s", out)
        elif self.root.is_dir() and not resume:
            shutil.rmtree(self.root)  # our own folder: start over
        text = json.dumps(self.config, sort_keys=True, indent=1, default=repr)
        atomic_write(path, lambda p: p.write_text(text))

    def _path(self, indices: Sequence[int], data_key: str) -> Path | None:
        if self.root is None:
            return None
        return self.root / "batches" / f"{indices[0]:07d}-{indices[-1] + 1:07d}-{data_key}.pt"

    def load(self, indices: Sequence[int], data_key: str) -> dict[str, torch.Tensor] | None:
        """The record of a finished batch, or None (not run yet, or unreadable: recomputed)."""
        path = self._path(indices, data_key)
        if path is None or not path.is_file():
            return None
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # a torn or foreign file is a miss, never a crash
            log.warning("cannot read atlas record %s (%s: %s); recomputing it", path, type(err).__name__, err)
            return None
        if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
            log.warning("atlas record %s is not a dict of tensors; recomputing it", path)
            return None
        return cast(dict[str, torch.Tensor], blob)

    def save(self, indices: Sequence[int], data_key: str, record: Mapping[str, torch.Tensor]) -> None:
        path = self._path(indices, data_key)
        if path is not None:
            blob = {k: v.detach().cpu().contiguous() for k, v in record.items()}
            atomic_write(path, lambda p: torch.save(blob, p))


def selection_digest(indices: Sequence[int], labels: Sequence[int]) -> str:
    """A short hash of the selected images and their labels (part of the resume config)."""
    return _digest([list(indices), [labels[i] for i in indices]])
