"""Training: one resumable trainer with atomic checkpoints."""

from traitlens.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from traitlens.train.trainer import FitConfig, FitResult, dataset_fingerprint, evaluate_accuracy, fit, iterate_batches

__all__ = ["CheckpointError", "FitConfig", "FitResult", "dataset_fingerprint", "evaluate_accuracy", "fit",
           "iterate_batches", "load_checkpoint", "save_checkpoint"]
