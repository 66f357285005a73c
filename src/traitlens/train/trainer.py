"""One trainer for every traitlens classifier: linear probe, fine-tuning and the interpretable models.

Checkpoints are written atomically every epoch; `resume=True` continues exactly (weights, optimizer,
scheduler, RNG state, epoch). Shuffling uses a generator seeded by (seed, epoch), so a resumed run
visits the same batches as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sized
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from traitlens._io import atomic_write, sweep_temp_files
from traitlens.backbones.loading import save_model
from traitlens.backbones.preprocess import normalize
from traitlens.train.augment import crop_resize_size, eval_transform, flip_and_shift, input_hw, resize_and_crop
from traitlens.train.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from traitlens.train.optim import check_schedule, make_optimizer, make_scheduler
from traitlens.train.precision import autocast_dtype, unfused_attention
from traitlens.train.resume import check_resumable, dataset_fingerprint

__all__ = ["FitConfig", "FitResult", "dataset_fingerprint", "evaluate_accuracy", "fit", "iterate_batches"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
MODES = ("finetune", "linear", "model")


@dataclass
class FitConfig:
    """Training recipe (the per-model and pretrained-backbone recipes: `traitlens.models.recommended_fit_config`,
    docs/recipes.md).

    Attributes:
        epochs: passes over the training set.
        mode: "finetune" (all parameters), "linear" (classifier only, backbone frozen) or "model" (train the
            parameters that already require grad — the interpretable models freeze their own backbone).
        lr, weight_decay: AdamW (or SGD) settings.
        optimizer: "adamw" | "sgd" (momentum 0.9).
        weight_decay_all: also decay 1-D parameters (biases, norms, scalars), as a plain
            `optimizer(params, weight_decay=...)` does in the reference repositories; off: they get no decay.
        backbone_lr: learning rate of the backbone's parameters (an interpretable model's `backbone.*`; for a timm
            classifier everything outside `get_classifier()`), the rest trains at `lr`. None: everything at `lr`
            (INTR's own `param_groups` then scales its backbone by `backbone_lr_scale`).
        schedule: "onecycle" | "cosine" (linear warm-up of `warmup_epochs`, then cosine down to `min_lr`) |
            "steplr" (×`gamma` every `step_size` epochs, torch's StepLR) | "constant".
        schedule_per: "batch" (the lr changes every step) or "epoch" (constant within an epoch; "cosine" then
            follows timm's `CosineLRScheduler` as Prompt-CAM uses it: warm-up from `warmup_lr` to `lr` over
            `warmup_epochs`, then `min_lr + (lr − min_lr)·(1 + cos(π·e/epochs))/2`). "steplr" is per epoch either way.
        warmup_epochs, warmup_lr, min_lr: the cosine schedule's warm-up length, warm-up start and floor.
        step_size, gamma: StepLR's period (epochs) and factor.
        batch_size: images per step (the global batch: a distributed run splits it over the ranks).
        label_smoothing: cross-entropy smoothing.
        grad_clip: max gradient norm (0 disables).
        seed: seeds initial RNG and the per-epoch shuffling.
        augment_flip, augment_shift: per-image random left-right flips and translations by up to `augment_shift`
            pixels, drawn per epoch from the seed (`train.augment`; off by default). Under DDP each rank draws for its
            own shard, so an augmented distributed run is not step-for-step the single-process one.
        augment_crop: resize each training batch to `crop_resize` (`train.augment.crop_resize_size`) and crop a
            random window of the model's input size per image (`Resize → RandomCrop`), before the flips. Build the
            training set at that size to skip the resampling.
        crop_resize: side the shorter image side is resized to before cropping; 0 = input size / 0.875 (224 → 256).
        eval_crop: validation images resized the same way and centre-cropped to the input size (`Resize →
            CenterCrop`, e.g. DINO's linear evaluation); off: they are used as given.
        amp: mixed precision: float16 on a GPU, bfloat16 on a CPU with AMX / AVX512-BF16 (`train.precision`).
        selection: "val" (keep the best validation top-1), "last", or "reference" (the model's
            `reference_selection`: "best_val", "last", or "last+every10" which also keeps every 10th epoch).
    """

    epochs: int = 10
    mode: str = "finetune"
    lr: float = 2e-3
    weight_decay: float = 0.05
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    warmup_epochs: float = 0.0
    batch_size: int = 128
    label_smoothing: float = 0.1
    grad_clip: float = 0.0
    augment_flip: bool = False
    augment_shift: int = 0
    seed: int = 0
    amp: bool = True
    selection: str = "val"
    num_workers: int = 0
    weight_decay_all: bool = False
    backbone_lr: float | None = None
    schedule_per: str = "batch"
    warmup_lr: float = 0.0
    min_lr: float = 0.0
    step_size: int = 0
    gamma: float = 0.1
    augment_crop: bool = False
    crop_resize: int = 0
    eval_crop: bool = False


@dataclass
class FitResult:
    """What `fit` produced: per-epoch history, the best validation accuracy and where files went."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_acc: float | None = None
    out: Path | None = None
    best_dir: Path | None = None


def iterate_batches(
    dataset: Dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None,
    num_workers: int = 0, shard: tuple[int, int] = (0, 1), pin_memory: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images [B,3,H,W] float in [0,1], labels [B]) batches; in page-locked memory with `pin_memory`
    (for a GPU: then `.to(device, non_blocking=True)` overlaps the copy with compute).

    In-memory datasets exposing `images` (uint8 [N,3,H,W] / [N,H,W,3] or float [N,3,H,W]) and `labels`
    tensors, and no transform, are sliced directly: much faster than collating per-item dicts.
    With `shard=(rank, world)` every global batch of `batch_size` is split across the ranks, so a
    distributed run sees the same global batches as one process.
    """
    n = len(cast(Sized, dataset))
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    rank, world = shard
    if world > 1:
        order = torch.cat([order[i:i + batch_size][rank::world] for i in range(0, n, batch_size)])
        batch_size = math.ceil(batch_size / world)
    images = getattr(dataset, "images", None)
    labels = getattr(dataset, "labels", None)
    if (isinstance(images, torch.Tensor) and isinstance(labels, torch.Tensor)
            and getattr(dataset, "transform", None) is None):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = _as_float_images(images[idx]), labels[idx].long()
            yield (batch[0].pin_memory(), batch[1].pin_memory()) if pin_memory else batch
        return
    loader = DataLoader(_Indexed(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers, collate_fn=_collate_image_label, pin_memory=pin_memory)
    yield from loader


def _as_float_images(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()


class _Indexed(Dataset):
    def __init__(self, dataset: Dataset, order: list[int]) -> None:
        self.dataset, self.order = dataset, order

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, i: int) -> Any:
        return self.dataset[self.order[i]]


def _collate_image_label(items: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(items[0], dict):
        return torch.stack([it["image"] for it in items]), torch.as_tensor([int(it["label"]) for it in items])
    return torch.stack([it[0] for it in items]), torch.as_tensor([int(it[1]) for it in items])


class _LossForward(nn.Module):
    """Runs a model's own `forward_loss(images, labels)` as `forward`, so DDP sees the training forward."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return cast(Any, self.model).forward_loss(images, labels)


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, dataset: Dataset, batch_size: int = 256, progress: bool = False,
                      transform: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """Top-1 accuracy of `model` (eval mode) on `dataset`; sharded over ranks when torch.distributed runs.

    `transform` maps each batch of images in [0, 1] on the model's device before normalisation (e.g.
    `eval_transform(model, cfg)`, the recipe's centre crop).
    """
    was_training = model.training
    model.eval()
    device = _device_of(model)
    dist_ = _Dist()
    correct = total = 0
    batches = iterate_batches(dataset, batch_size, shard=(dist_.rank, dist_.world), pin_memory=device.type == "cuda")
    for images, labels in tqdm(batches, total=math.ceil(len(cast(Sized, dataset)) / batch_size), disable=not progress,
                               desc="eval", leave=False):
        images = images.to(device, non_blocking=True)
        if transform is not None:
            images = transform(images)
        logits = model(normalize(model, images))
        correct += int((logits.argmax(-1).cpu() == labels).sum())
        total += labels.numel()
    model.train(was_training)
    all_correct, all_total = dist_.sum([correct, total])
    return all_correct / max(all_total, 1)


class _Dist:
    """Rank, world size and reductions; a single process is world 1."""

    def __init__(self) -> None:
        on = torch.distributed.is_available() and torch.distributed.is_initialized()
        self.rank = torch.distributed.get_rank() if on else 0
        self.world = torch.distributed.get_world_size() if on else 1
        self.is_main = self.rank == 0

    def sum(self, values: list[float]) -> list[float]:
        """Sum numbers over all ranks."""
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return t.tolist()


def _trainable(model: nn.Module, mode: str) -> list[nn.Parameter]:
    if mode not in MODES:
        raise ValueError(f"unknown mode '{mode}'; choose from {MODES}")
    if mode == "linear":
        if not hasattr(model, "get_classifier"):
            raise TypeError(f"{type(model).__name__} has no get_classifier(); linear probing needs a timm model")
        for p in model.parameters():
            p.requires_grad_(False)
        for p in cast(Any, model).get_classifier().parameters():
            p.requires_grad_(True)
    elif mode == "finetune":
        for p in model.parameters():
            p.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("no trainable parameters")
    return params


def fit(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset | None = None,
    config: FitConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch_end: Callable[[int, dict[str, float]], None] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train `model` on `train_set`; checkpoint to `out` each epoch and keep the best model in `out/best`.

    Args:
        model: a timm classifier or a traitlens interpretable model (its `forward_loss(images, labels)`, if
            present, replaces cross-entropy).
        train_set, val_set: datasets yielding dicts with "image" ([3,H,W] in [0,1]) and "label", or in-memory
            sets with `images`/`labels` tensors.
        config: the recipe; keyword `overrides` replace its fields (e.g. `epochs=5`).
        out: run directory (checkpoint.pt, metrics.csv/json, best/); None keeps nothing on disk.
        resume: continue from `out/checkpoint.pt` exactly where it stopped; the checkpoint must come from the same
            settings (`FitConfig`, `num_workers` aside) and the same data, else a `CheckpointError` names what
            differs.
        on_epoch_end: callback(epoch, metrics) after each checkpoint.

    Returns:
        A `FitResult`; `model` is left holding the last epoch's weights, in eval mode.
    """
    cfg = FitConfig(**{**asdict(config or FitConfig()), **overrides})
    dist_ = _Dist()
    if cfg.selection not in ("val", "last", "reference"):
        raise ValueError(f"unknown selection '{cfg.selection}'; choose 'val', 'last' or 'reference'")
    if cfg.augment_shift < 0:
        raise ValueError(f"augment_shift must be >= 0 pixels, got {cfg.augment_shift}")
    if cfg.crop_resize < 0:
        raise ValueError(f"crop_resize must be >= 0 pixels, got {cfg.crop_resize}")
    check_schedule(cfg)
    selection, keep_every = cfg.selection, 0
    if selection == "reference":
        rule = getattr(model, "reference_selection", "best_val")
        selection = "val" if rule == "best_val" else "last"
        keep_every = 10 if rule == "last+every10" else 0
    out_dir = Path(out) if out is not None else None
    device = _device_of(model)
    torch.manual_seed(cfg.seed)
    params = _trainable(model, cfg.mode)
    # A model with its own training loss (the interpretable models' `forward_loss`) runs it; others train on CE.
    own_loss = callable(getattr(model, "forward_loss", None))
    net: nn.Module = _LossForward(model) if own_loss else model
    if dist_.world > 1:
        # DDP averages gradients over ranks; with equal shards of each global batch that is the global mean.
        net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None)
    progress = progress and dist_.is_main
    steps_per_epoch = math.ceil(len(cast(Sized, train_set)) / cfg.batch_size)
    opt = make_optimizer(model, params, cfg)
    sched = make_scheduler(opt, cfg, steps_per_epoch)
    crop = input_hw(model) if cfg.augment_crop else None
    crop_from = crop_resize_size(crop, cfg.crop_resize) if crop is not None else None
    val_transform = eval_transform(model, cfg)
    amp_dtype = autocast_dtype(device) if cfg.amp else None
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    result = FitResult(out=out_dir)
    start_epoch = 0
    fingerprint = {"train": dataset_fingerprint(train_set),
                   "val": None if val_set is None else dataset_fingerprint(val_set)}
    if out_dir is not None and dist_.is_main:
        for folder in (out_dir, out_dir / "best"):
            for stale in sweep_temp_files(folder) if folder.is_dir() else []:
                log.info("removed %s, left by an interrupted write", stale)
    if resume:
        if out_dir is None:
            raise ValueError("resume=True needs the run directory `out`")
        state = load_checkpoint(out_dir / CHECKPOINT_NAME, map_location=device)
        # A setting added after the checkpoint was written ran at its default then.
        saved = {**state, "config": {**asdict(FitConfig()), **state.get("config", {})}}
        check_resumable(saved, asdict(cfg), fingerprint, out_dir / CHECKPOINT_NAME)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"])
        start_epoch = state["epoch"] + 1
        result.history = state["history"]
        result.best_val_acc = state["best_val_acc"]
        if dist_.is_main:  # an epoch logged after the checkpoint was written is trained again, identically
            _write_history(out_dir, result.history)
        log.info("resumed from %s at epoch %d", out_dir / CHECKPOINT_NAME, start_epoch)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        shuffle = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch)
        augment = torch.Generator().manual_seed(cfg.seed * 100_003 + epoch + 50_021)
        t0 = time.perf_counter()
        seen: float = 0
        loss_sum = 0.0
        correct: float = 0
        bar = tqdm(iterate_batches(train_set, cfg.batch_size, shuffle=True, generator=shuffle,
                                   num_workers=cfg.num_workers, shard=(dist_.rank, dist_.world),
                                   pin_memory=device.type == "cuda"),
                   total=steps_per_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress, leave=False)
        for images, labels in bar:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            if crop is not None and crop_from is not None:  # Resize → RandomCrop before the flips, as the references
                images = resize_and_crop(images, crop, crop_from, augment)
            if cfg.augment_flip or cfg.augment_shift:
                images = flip_and_shift(images, augment, cfg.augment_flip, cfg.augment_shift)
            images = normalize(model, images)
            with _autocast(model, device, amp_dtype):
                if own_loss:
                    loss, logits = net(images, labels)
                else:
                    logits = net(images)
                    loss = F.cross_entropy(logits, labels, label_smoothing=cfg.label_smoothing)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}; lower the learning rate")
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.grad_clip > 0:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            scaler.step(opt)
            scaler.update()
            sched.step()
            seen += labels.numel()
            loss_sum += loss.item() * labels.numel()
            correct += int((logits.detach().argmax(-1) == labels).sum())
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        seen, loss_sum, correct = dist_.sum([seen, loss_sum, correct])
        metrics = {"epoch": epoch + 1, "train_loss": loss_sum / max(seen, 1), "train_acc": correct / max(seen, 1),
                   "lr": float(sched.get_last_lr()[0]), "images_per_s": seen / (time.perf_counter() - t0)}
        if val_set is not None:
            metrics["val_acc"] = evaluate_accuracy(model, val_set, batch_size=max(cfg.batch_size, 256),
                                                   transform=val_transform)
        result.history.append(metrics)
        if dist_.is_main:
            log.info("epoch %d: %s", epoch + 1, {k: round(v, 4) for k, v in metrics.items()})
        improved = val_set is not None and (result.best_val_acc is None or metrics["val_acc"] > result.best_val_acc)
        if improved:
            result.best_val_acc = metrics["val_acc"]
        if out_dir is not None and dist_.is_main:
            if (selection == "val" and improved) or selection == "last" or val_set is None:
                result.best_dir = save_model(model, out_dir / "best", extra={"selected": f"epoch {epoch + 1}"})
            if keep_every and (epoch + 1) % keep_every == 0:
                save_model(model, out_dir / f"epoch_{epoch + 1}")
            # metrics.json first: a kill between the two writes then loses nothing (the resumed run retrains the
            # epoch after the checkpoint and rewrites the history exactly).
            _write_history(out_dir, result.history)
            state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                     "scaler": scaler.state_dict(), "rng": capture_rng(), "epoch": epoch,
                     "history": result.history, "best_val_acc": result.best_val_acc, "config": asdict(cfg),
                     "data": fingerprint}
            save_checkpoint(out_dir / CHECKPOINT_NAME, state)
        if dist_.world > 1:
            torch.distributed.barrier()  # no rank runs ahead of the checkpoint it may need to resume from
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
    if out_dir is not None and (out_dir / "best").is_dir():
        result.best_dir = out_dir / "best"
    model.eval()
    return result


def _autocast(model: nn.Module, device: torch.device, amp_dtype: torch.dtype | None) -> contextlib.ExitStack:
    """Autocast to `amp_dtype` (None: off); on a CPU attention runs unfused (its fused bf16 backward is slow)."""
    stack = contextlib.ExitStack()
    if amp_dtype is not None:
        stack.enter_context(torch.autocast(device.type, dtype=amp_dtype))
        if device.type == "cpu":
            stack.enter_context(unfused_attention(model))
    return stack


def _write_history(out_dir: Path, history: list[dict[str, float]]) -> None:
    """metrics.json (and .csv) with the epochs so far: the list, or {"epochs": [...], "data": ...} where
    `traitlens train` wrapped it with its data record (kept; a test score of an earlier run is not, it is
    rewritten once the run is tested)."""
    path = out_dir / "metrics.json"
    try:
        existing = json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        existing = None
    doc: Any = history
    if isinstance(existing, dict) and "epochs" in existing:
        doc = {"epochs": history, **({"data": existing["data"]} if "data" in existing else {})}
    atomic_write(path, lambda p: p.write_text(json.dumps(doc, indent=2)))
    keys = list(dict.fromkeys(k for row in history for k in row))

    def write_csv(p: Path) -> None:
        with open(p, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(history)

    atomic_write(out_dir / "metrics.csv", write_csv)
