"""A training run in its own folder: never over an earlier run by accident, selected on validation, tested once.

`check_run_dir` refuses a folder that already holds a run unless asked to replace it (`clear_run_dir`, once the
new run is built) or to resume it.
`train_and_test` fits on the training split, keeps the checkpoint the recipe selects on the validation split, and
scores that checkpoint once on the test split. The run's `metrics.json` then holds, besides the epochs, which images
validated it and the test accuracy:

    {"epochs": [...], "data": {...DataSplits.summary()...}, "selected": {"epoch": 7, "val_acc": 0.81},
     "test": {"images": 5794, "accuracy": 0.79}}

While the run trains, `fit` writes the bare epoch list and each epoch's end wraps it; after a resume, until the first
resumed epoch ends, the file is the bare list.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Sized
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch.nn as nn
from torch.utils.data import Dataset

from traitlens._io import atomic_write
from traitlens.backbones.loading import load_model
from traitlens.data.splits import DataSplits, open_splits
from traitlens.train.augment import crop_resize_size, eval_transform, input_hw
from traitlens.train.trainer import CHECKPOINT_NAME, FitConfig, FitResult, evaluate_accuracy, fit

__all__ = ["RUN_FILES", "RunExistsError", "RunResult", "check_run_dir", "clear_run_dir", "open_run_splits",
           "train_and_test"]

log = logging.getLogger(__name__)

#: What a run leaves in its folder (`fit`), besides `epoch_N/` folders kept by some reference recipes.
RUN_FILES = (CHECKPOINT_NAME, "metrics.json", "metrics.csv", "best")
_EPOCH_DIR = re.compile(r"epoch_\d+")


class RunExistsError(FileExistsError):
    """The output folder already holds a run."""


def _run_files(out: Path) -> list[Path]:
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_FILES if (out / name).exists()]
    return found + sorted(p for p in out.iterdir() if p.is_dir() and _EPOCH_DIR.fullmatch(p.name))


def _is_main_process() -> bool:
    """Rank 0 of a torchrun job (`RANK`), or a single process: the one that deletes and writes files."""
    return int(os.environ.get("RANK", "0")) == 0


def check_run_dir(out: str | Path, *, overwrite: bool = False, resume: bool = False) -> list[Path]:
    """Check that `out` may take a new run, before anything is built; returns the earlier run's files that
    `overwrite` replaces (`clear_run_dir` deletes them once the new run is ready to start).

    Args:
        out: the run folder.
        overwrite: replace a run already there: its checkpoint, metrics, `best/` and `epoch_N/`; any other file
            stays.
        resume: continue the run there (`fit(resume=True)` checks that its settings and data match).

    Raises:
        RunExistsError: `out` holds a run and neither `overwrite` nor `resume` is set.
        ValueError: both `overwrite` and `resume`.
        NotADirectoryError: `out` is a file.
    """
    out = Path(out)
    if overwrite and resume:
        raise ValueError("--overwrite starts the run again and --resume continues it: choose one")
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file, not a folder")
    if resume:
        return []
    existing = _run_files(out)
    if existing and not overwrite:
        raise RunExistsError(f"{out} already holds a run ({', '.join(p.name for p in existing)}); pass --overwrite "
                             "to replace it, --resume to continue it, or another --out")
    return existing


def clear_run_dir(files: list[Path]) -> None:
    """Delete the earlier run's files `check_run_dir` returned (on rank 0 only under torchrun)."""
    if not files or not _is_main_process():
        return
    for path in files:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    log.info("--overwrite: removed the earlier run in %s (%s)", files[0].parent, ", ".join(p.name for p in files))


def open_run_splits(root: str | Path, model: nn.Module, config: FitConfig, val_fraction: float = 0.1,
                    seed: int = 0) -> DataSplits:
    """The splits of `root` (`open_splits`) at the sizes the recipe reads them: the model's input size, or the
    crop's resize size for the training images with `augment_crop` and for validation / test with `eval_crop`
    (so the batches are cropped from that size, not upsampled to it)."""
    crop = input_hw(model)
    resized = crop_resize_size(crop, config.crop_resize)
    train_hw = resized if config.augment_crop else crop
    eval_hw = resized if config.eval_crop else crop
    splits = open_splits(root, train_hw, val_fraction, seed)
    if eval_hw != train_hw:
        other = open_splits(root, eval_hw, val_fraction, seed)  # the same seed: the same validation images
        splits.val, splits.test = other.val, other.test
    return splits


@dataclass
class RunResult:
    """What `train_and_test` produced.

    Attributes:
        fit: `fit`'s result (history, best validation accuracy, folders).
        selected_epoch: the epoch whose weights `best/` holds (1-based); None before any epoch ran.
        val_acc: that epoch's validation accuracy; None without a validation split.
        test_acc: the selected checkpoint's accuracy on the test split, measured once; None without one.
        test_images: the number of test images.
    """

    fit: FitResult
    selected_epoch: int | None
    val_acc: float | None
    test_acc: float | None
    test_images: int

    def summary_line(self) -> str:
        """The last line a training command prints."""
        parts = [f"selected epoch {self.selected_epoch}" if self.selected_epoch else "no epoch trained"]
        if self.val_acc is not None:
            parts.append(f"val accuracy {self.val_acc:.3f}")
        if self.test_acc is not None:
            parts.append(f"test accuracy {self.test_acc:.3f} ({self.test_images} images, scored once)")
        where = f"; model in {self.fit.best_dir}" if self.fit.best_dir is not None else ""
        return ", ".join(parts) + where


def _selected_epoch(best_dir: Path | None) -> int | None:
    """The epoch `fit` recorded in `best/config.json` ("selected": "epoch N")."""
    if best_dir is None or not (best_dir / "config.json").is_file():
        return None
    match = re.fullmatch(r"epoch (\d+)", str(json.loads((best_dir / "config.json").read_text()).get("selected", "")))
    return int(match.group(1)) if match else None


def _write_metrics(out: Path, data: dict[str, Any], extra: dict[str, Any]) -> None:
    """Wrap the epoch list `fit` just wrote into metrics.json with the run's data record (and `extra`)."""
    path = out / "metrics.json"
    history = json.loads(path.read_text()) if path.is_file() else []
    if isinstance(history, dict):
        history = history.get("epochs", [])
    doc = {"epochs": history, "data": data, **extra}
    atomic_write(path, lambda p: p.write_text(json.dumps(doc, indent=2)))


def train_and_test(model: nn.Module, train_set: Dataset, val_set: Dataset | None, test_set: Dataset | None,
                   config: FitConfig, out: str | Path, *, data: dict[str, Any] | None = None, resume: bool = False,
                   progress: bool = True) -> RunResult:
    """Fit `model`, select on `val_set` (the recipe's rule), then score the selected checkpoint on `test_set` once.

    The test images play no part in training or selection: the checkpoint is fixed (`out/best`) before they are
    read, and they are preprocessed as validation is (`eval_transform`). Under torchrun every rank takes part in
    the test pass (it is sharded); rank 0 writes the files.

    Args:
        model: the classifier; left holding the last epoch's weights.
        train_set, val_set, test_set: the splits; `val_set` None keeps the last epoch, `test_set` None skips the test.
        config: the recipe.
        out: the run folder (checked beforehand by `check_run_dir`).
        data: what to record about the data in metrics.json (`DataSplits.summary()`).
        resume: continue from `out/checkpoint.pt`.
        progress: progress bars.
    """
    out = Path(out)
    record = dict(data or {})
    main = _is_main_process()

    def wrap(epoch: int, metrics: dict[str, float]) -> None:
        if main:
            _write_metrics(out, record, {})

    result = fit(model, train_set, val_set, config, out=out, resume=resume, progress=progress, on_epoch_end=wrap)
    selected = _selected_epoch(result.best_dir)
    val_acc = None
    if selected is not None and val_set is not None:
        val_acc = next((row.get("val_acc") for row in result.history if row["epoch"] == selected), None)
    test_acc, n_test = None, 0
    if test_set is not None and result.best_dir is not None:
        n_test = len(cast(Sized, test_set))
        device = next(model.parameters()).device
        chosen = load_model(result.best_dir).to(device)
        test_acc = evaluate_accuracy(chosen, test_set, transform=eval_transform(chosen, config))
        log.info("test accuracy of the selected checkpoint (epoch %s): %.4f on %d images", selected, test_acc,
                 n_test)
    if main:
        _write_metrics(out, record, {
            "selected": {"epoch": selected, "rule": config.selection, "val_acc": val_acc},
            "test": None if test_set is None else {"images": n_test, "accuracy": test_acc},
        })
    return RunResult(result, selected, val_acc, test_acc, n_test)
