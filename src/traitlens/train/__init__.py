"""Training: one resumable trainer with atomic checkpoints."""

from traitlens.train.checkpoint import load_checkpoint, save_checkpoint
from traitlens.train.trainer import FitConfig, FitResult, evaluate_accuracy, fit, iterate_batches

__all__ = ["FitConfig", "FitResult", "evaluate_accuracy", "fit", "iterate_batches", "load_checkpoint",
           "save_checkpoint"]
