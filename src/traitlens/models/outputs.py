"""What an interpretable model returns: `ModelOutput` (one forward) and `Prediction` (one image) (models.md §0)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["ModelOutput", "Prediction"]


@dataclass
class ModelOutput:
    """The full output of an interpretable model's `forward_output` (models.md §0).

    Attributes:
        logits: [B,C] class scores.
        maps: native evidence of **all** C classes from the same forward pass: [B,C,R,h,w] for models with
            heads (Prompt-CAM, INTR), [B,C,h,w] otherwise (SCOUTER); None when not requested (training).
        aux: model-specific tensors (e.g. SCOUTER's slot attention for the area loss).
    """

    logits: torch.Tensor
    maps: torch.Tensor | None = None
    aux: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prediction:
    """`predict` on one image: the class, its probabilities and the native maps of every class.

    Attributes:
        class_id: argmax class.
        class_name: its name when the model carries class names.
        probs: [C] softmax probabilities.
        logits: [C] raw scores.
        maps: [C,R,h,w] or [C,h,w] native maps on the model's grid (raw values).
        image_size: (H, W) the model actually saw.
    """

    class_id: int
    class_name: str | None
    probs: torch.Tensor
    logits: torch.Tensor
    maps: torch.Tensor | None
    image_size: tuple[int, int]

