"""A rendered TraitShapes sample and the ground-truth masks derived from its part-owner map."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from traitlens.data.traitshapes.classes import _defining_slots, differing_slots
from traitlens.data.traitshapes.config import PART_NAMES, SLOT_PARTS, TraitShapesConfig

__all__ = ["TraitShapesSample", "class_mask", "discriminative_mask"]


@dataclass
class TraitShapesSample:
    """One rendered image with its ground truth (numpy arrays, pixel coordinates).

    Attributes:
        image: uint8 [H, W, 3].
        label: class id.
        traits: value index per slot of the config.
        box: critter box (x0, y0, x1, y1) in continuous pixel coordinates (pixel i spans [i, i+1)).
        owner: uint8 [H, W]; 0 background, ``i + 1`` for ``PART_NAMES[i]``.
        parts: float32 [n_parts, 3] part centroid x, y and visible flag.
        slots: the config's slots, naming the entries of ``traits`` and ``trait_masks``.
    """

    image: np.ndarray
    label: int
    traits: tuple[int, ...]
    box: tuple[float, float, float, float]
    owner: np.ndarray
    parts: np.ndarray
    slots: tuple[str, ...]

    @property
    def part_masks(self) -> np.ndarray:
        """bool [n_parts, H, W]: visible pixels of each part, in ``PART_NAMES`` order."""
        return _part_masks(self.owner)

    @property
    def trait_masks(self) -> np.ndarray:
        """bool [n_slots, H, W]: visible pixels of the part carrying each slot (empty crest if none)."""
        return self.part_masks[_slot_part_index(self.slots)]

    @property
    def foreground(self) -> np.ndarray:
        """bool [H, W]: every critter pixel."""
        return self.owner > 0


def _part_masks(owner: np.ndarray | torch.Tensor) -> Any:
    ids = np.arange(1, len(PART_NAMES) + 1)
    if isinstance(owner, torch.Tensor):
        return owner[None] == torch.as_tensor(ids, dtype=owner.dtype)[:, None, None]
    return owner[None] == ids[:, None, None].astype(owner.dtype)


@lru_cache(maxsize=64)
def _slot_part_index(slots: tuple[str, ...]) -> list[int]:
    return [PART_NAMES.index(SLOT_PARTS[s]) for s in slots]


def _sample_fields(sample: TraitShapesSample | Mapping[str, Any]) -> tuple[Any, int]:
    if isinstance(sample, TraitShapesSample):
        return sample.trait_masks, sample.label
    return sample["trait_masks"], int(sample["label"])


def discriminative_mask(
    sample: TraitShapesSample | Mapping[str, Any], other_class: int, config: TraitShapesConfig
) -> np.ndarray | torch.Tensor:
    """Pixels of ``sample`` that carry the slots where its class differs from ``other_class``.

    This is the headline target of trait metrics (datasets.md, "Scoring"): for a sibling it is
    the one part that tells the two classes apart. A crest-less sample has an empty crest mask.

    Args:
        sample: a ``TraitShapesSample`` or a dataset item dict (``trait_masks``, ``label``).
        other_class: the class to contrast with.
        config: the generating config.

    Returns:
        bool [H, W], numpy for a sample, a tensor for a dict item.
    """
    trait_masks, label = _sample_fields(sample)
    return trait_masks[differing_slots(config, label, other_class)].any(0)


def class_mask(sample: TraitShapesSample | Mapping[str, Any], config: TraitShapesConfig) -> np.ndarray | torch.Tensor:
    """Union of the trait masks of the slots that vary between the config's classes."""
    trait_masks, _ = _sample_fields(sample)
    return trait_masks[_defining_slots(config)].any(0)
