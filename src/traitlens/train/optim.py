"""Optimizers and learning-rate schedules of `fit`: parameter groups (backbone lr, weight decay on 1-D parameters or
not), one-cycle, cosine per batch or per epoch (timm's CosineLRScheduler), StepLR, constant (docs/recipes.md)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from traitlens.train.trainer import FitConfig

__all__ = ["SCHEDULES", "check_schedule", "make_optimizer", "make_scheduler", "schedule_lr"]

SCHEDULES = ("onecycle", "cosine", "steplr", "constant")


def _param_groups(model: nn.Module, params: list[nn.Parameter], cfg: FitConfig) -> list[dict[str, Any]]:
    """Optimizer groups: weight decay on ≥2-D parameters only (all with `weight_decay_all`), the backbone at
    `backbone_lr` when set; a model's own `param_groups(cfg)` (INTR) takes precedence."""
    if hasattr(model, "param_groups"):  # a model's own recipe, e.g. INTR's lower backbone learning rate
        return cast(Any, model).param_groups(cfg)
    wd_1d = cfg.weight_decay if cfg.weight_decay_all else 0.0
    if cfg.backbone_lr is None:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        return [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": wd_1d}]
    in_backbone = _backbone_parameter_ids(model)
    groups = []
    for backbone in (False, True):
        lr = cfg.backbone_lr if backbone else cfg.lr
        for matrices in (True, False):
            ps = [p for p in params if (id(p) in in_backbone) == backbone and (p.ndim > 1) == matrices]
            if ps:
                groups.append({"params": ps, "lr": lr, "weight_decay": cfg.weight_decay if matrices else wd_1d})
    return groups


def _backbone_parameter_ids(model: nn.Module) -> set[int]:
    """Ids of the parameters `backbone_lr` applies to: an interpretable model's `backbone`, or for a timm classifier
    everything outside `get_classifier()`."""
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        return {id(p) for p in backbone.parameters()}
    if hasattr(model, "get_classifier"):
        head = {id(p) for p in cast(Any, model).get_classifier().parameters()}
        return {id(p) for p in model.parameters() if id(p) not in head}
    raise ValueError(f"backbone_lr needs a model with a `backbone` or a timm classifier; {type(model).__name__} has "
                     "neither")


def make_optimizer(model: nn.Module, params: list[nn.Parameter], cfg: FitConfig) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9) over `_param_groups`."""
    groups = _param_groups(model, params, cfg)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    raise ValueError(f"unknown optimizer '{cfg.optimizer}'; choose adamw or sgd")


def schedule_lr(cfg: FitConfig, base_lr: float, step: int, steps_per_epoch: int) -> float:
    """Learning rate of a group with base rate `base_lr` during optimizer step `step` (0-based) under
    `cfg.schedule` ("cosine", "steplr" or "constant"; "onecycle" is torch's OneCycleLR and not computed here).

    Per batch, cosine: warm-up `lr·(w + (1 − w)·(t+1)/T_w)` for t < T_w = ⌊warmup_epochs·steps⌋ (w = warmup_lr/lr),
    then `min_lr + (lr − min_lr)·(1 + cos(π·(t − T_w)/(T − T_w)))/2`. Per epoch (e = t // steps_per_epoch), cosine
    as timm's CosineLRScheduler (warmup_prefix=False): `warmup_lr + e·(lr − warmup_lr)/warmup_epochs` for
    e < warmup_epochs, then `min_lr + (lr − min_lr)·(1 + cos(π·e/epochs))/2`. StepLR: `lr·gamma^(e // step_size)`.
    """
    return base_lr * _lr_factor(cfg, base_lr, step, steps_per_epoch)


def _lr_factor(cfg: FitConfig, base_lr: float, step: int, steps_per_epoch: int) -> float:
    """`schedule_lr / base_lr`, what LambdaLR multiplies by (computed directly, so the per-batch cosine without
    warmup_lr / min_lr gives the very floats it always did)."""
    epoch = step // max(steps_per_epoch, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "steplr":
        return cfg.gamma ** (epoch // cfg.step_size)
    if cfg.schedule != "cosine":
        raise ValueError(f"schedule_lr computes cosine, steplr and constant, not '{cfg.schedule}'")
    if cfg.schedule_per == "epoch":
        if epoch < cfg.warmup_epochs:
            lr = cfg.warmup_lr + epoch * (base_lr - cfg.warmup_lr) / cfg.warmup_epochs
        else:
            lr = cfg.min_lr + 0.5 * (base_lr - cfg.min_lr) * (1 + math.cos(math.pi * epoch / max(cfg.epochs, 1)))
        return lr / base_lr if base_lr else 1.0
    total = max(cfg.epochs * steps_per_epoch, 1)
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if step < warm:
        ramp = (step + 1) / warm
        w = cfg.warmup_lr / base_lr if base_lr else 0.0
        return ramp if w == 0 else w + (1 - w) * ramp
    cosine = 0.5 * (1 + math.cos(math.pi * (step - warm) / max(total - warm, 1)))
    m = cfg.min_lr / base_lr if base_lr else 0.0
    return cosine if m == 0 else m + (1 - m) * cosine


def check_schedule(cfg: FitConfig) -> None:
    """Raise a ValueError naming a schedule setting that cannot work."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule '{cfg.schedule}'; choose onecycle, cosine, steplr or constant")
    if cfg.schedule_per not in ("batch", "epoch"):
        raise ValueError(f"unknown schedule_per '{cfg.schedule_per}'; choose 'batch' or 'epoch'")
    if cfg.schedule == "onecycle" and cfg.schedule_per != "batch":
        raise ValueError("schedule 'onecycle' steps per batch; use schedule_per='batch'")
    if cfg.schedule == "steplr" and cfg.step_size < 1:
        raise ValueError(f"schedule 'steplr' needs step_size >= 1 epoch, got {cfg.step_size}")
    if cfg.warmup_epochs < 0 or cfg.min_lr < 0 or cfg.warmup_lr < 0:
        raise ValueError("warmup_epochs, warmup_lr and min_lr must be >= 0")


def make_scheduler(opt: torch.optim.Optimizer, cfg: FitConfig,
                   steps_per_epoch: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The scheduler `fit` steps after every batch: OneCycleLR, or a LambdaLR computing `schedule_lr` per group."""
    check_schedule(cfg)
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.schedule == "onecycle":
        max_lr = [g.get("lr", cfg.lr) for g in opt.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=total, pct_start=0.15)

    def factor(base: float) -> Callable[[int], float]:
        return lambda step: _lr_factor(cfg, base, step, steps_per_epoch)

    # One factor per group: min_lr and warmup_lr are absolute rates, so groups with other base rates differ.
    return torch.optim.lr_scheduler.LambdaLR(opt, [factor(float(g["lr"])) for g in opt.param_groups])
