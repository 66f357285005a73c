"""TraitShapes configuration: the trait slots, the parts and the validated generator config."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PART_NAMES", "PRESETS", "SLOTS", "SLOT_PARTS", "TraitShapesConfig"]

PART_NAMES: tuple[str, ...] = ("body", "head", "beak", "wing", "tail", "crest")
"""Part order of ``part_masks``; the owner map stores part ``i`` as ``i + 1`` (0 is background)."""

SLOTS: dict[str, tuple[str, ...]] = {
    "head_colour": ("red", "blue", "yellow"),
    "wing_pattern": ("plain", "stripes", "dots"),
    "tail_shape": ("fan", "fork", "point"),
    "crest": ("none", "spike"),
}
"""Trait slots and their values. Slots left out of a config are fixed at their first value."""

SLOT_PARTS: dict[str, str] = {
    "head_colour": "head",
    "wing_pattern": "wing",
    "tail_shape": "tail",
    "crest": "crest",
}
"""The part that carries each slot: a slot's trait mask is that part's visible mask."""

PRESETS: dict[str, dict[str, tuple[float, float]]] = {
    # Calibrated in datasets.md: a tiny ViT learns "default" in minutes on 2 CPU cores.
    "default": {"scale": (0.6, 0.85), "distractors": (1, 2)},
    "hard": {"scale": (0.45, 0.8), "distractors": (2, 5)},
}
"""Nuisance ranges per preset: critter length as a fraction of the canvas, distractor count."""

_MAX_OVERSAMPLE = 4
_MAX_DISTRACTORS = 16


@dataclass(frozen=True)
class TraitShapesConfig:
    """What to generate; every field is part of the data's identity.

    Args:
        size: image side in pixels, 32-224.
        num_classes: number of classes, at most the number of trait tuples of ``slots``.
        seed: base seed; images are deterministic in ``(seed, split, index)``.
        preset: "default" (learnable in minutes on a CPU) or "hard" (smaller critter, more clutter).
        oversample: render at ``oversample``× and average down (anti-aliasing); 1 is fastest.
        slots: the trait slots that vary between classes, a subset of ``SLOTS``.
        lighting: strength of lighting jitter and pixel noise; 0 turns both off (exact colours).
        rotation: maximum absolute critter rotation in degrees.
        flip: whether critters face left or right at random.
        scale: overrides the preset's critter length range (fraction of the canvas).
        distractors: overrides the preset's distractor count range (inclusive).
    """

    size: int = 64
    num_classes: int = 16
    seed: int = 0
    preset: str = "default"
    oversample: int = 1
    slots: tuple[str, ...] = tuple(SLOTS)
    lighting: float = 1.0
    rotation: float = 30.0
    flip: bool = True
    scale: tuple[float, float] | None = None
    distractors: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not 32 <= self.size <= 224:
            raise ValueError(f"size must be in 32..224, got {self.size}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if not 1 <= self.oversample <= _MAX_OVERSAMPLE:
            raise ValueError(f"oversample must be in 1..{_MAX_OVERSAMPLE}, got {self.oversample}")
        unknown = [s for s in self.slots if s not in SLOTS]
        if unknown or len(set(self.slots)) != len(self.slots) or not self.slots:
            raise ValueError(f"slots must be distinct names from {list(SLOTS)}, got {self.slots}")
        n_max = math.prod(len(SLOTS[s]) for s in self.slots)
        if not 2 <= self.num_classes <= n_max:
            raise ValueError(f"num_classes must be in 2..{n_max} for slots {self.slots}, got {self.num_classes}")
        if self.lighting < 0 or not 0 <= self.rotation <= 180:
            raise ValueError("lighting must be >= 0 and rotation in 0..180 degrees")
        lo, hi = self.scale_range
        if not 0.1 <= lo <= hi <= 1.0:
            raise ValueError(f"scale must satisfy 0.1 <= lo <= hi <= 1, got {(lo, hi)}")
        lo, hi = self.distractor_range
        if not 0 <= lo <= hi <= _MAX_DISTRACTORS:
            raise ValueError(f"distractors must satisfy 0 <= lo <= hi <= {_MAX_DISTRACTORS}, got {(lo, hi)}")

    @property
    def scale_range(self) -> tuple[float, float]:
        """Critter length range as a fraction of the canvas (the override, else the preset's)."""
        lo, hi = self.scale or PRESETS[self.preset]["scale"]
        return float(lo), float(hi)

    @property
    def distractor_range(self) -> tuple[int, int]:
        """Inclusive distractor count range (the override, else the preset's)."""
        lo, hi = self.distractors or PRESETS[self.preset]["distractors"]
        return int(lo), int(hi)
