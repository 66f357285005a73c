"""Training: one resumable trainer with atomic checkpoints."""

from traitlens.train.augment import eval_transform
from traitlens.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from traitlens.train.optim import schedule_lr
from traitlens.train.parallel import fit_on_cores
from traitlens.train.recipes import classifier_fit_config
from traitlens.train.trainer import (
    FitConfig,
    FitResult,
    dataset_fingerprint,
    evaluate_accuracy,
    fit,
    iterate_batches,
)

__all__ = ["CheckpointError", "FitConfig", "FitResult", "classifier_fit_config", "dataset_fingerprint",
           "eval_transform", "evaluate_accuracy", "fit", "fit_on_cores", "iterate_batches", "load_checkpoint",
           "save_checkpoint", "schedule_lr"]
