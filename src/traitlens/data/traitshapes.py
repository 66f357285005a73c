"""TraitShapes: a fine-grained synthetic image set whose class-defining pixels are known.

Each image shows one "critter" (body, head, beak, wing, tail, optional crest) on a cluttered
background. A class is a tuple of trait values over trait slots (head colour, wing pattern,
tail shape, crest), so every explanation can be scored against the pixels that really decide
the class. See ``shared/spec/datasets.md`` ("TraitShapes").

Rendering is pure numpy: a per-pixel *owner* map records which part drew each visible pixel,
and every mask is derived from it, so masks are exactly the visible pixels of each part.
All randomness of one image comes from a generator seeded by ``(seed, split, index)`` and is
drawn in a fixed order that does not depend on the class, so two classes rendered with the
same index differ only inside their differing trait parts.

Example:
    >>> cfg = TraitShapesConfig(size=64, num_classes=8)
    >>> s = render(cfg, 0)
    >>> s.image.shape, s.trait_masks.shape
    ((64, 64, 3), (4, 64, 64))
"""

from __future__ import annotations

import colorsys
import itertools
import json
import logging
import math
import multiprocessing
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

logger = logging.getLogger(__name__)

__all__ = [
    "PART_NAMES",
    "PRESETS",
    "SLOTS",
    "SLOT_PARTS",
    "InMemoryDataset",
    "TraitShapes",
    "TraitShapesConfig",
    "TraitShapesSample",
    "class_mask",
    "class_names",
    "class_traits",
    "colour_histogram_baseline",
    "differing_slots",
    "discriminative_mask",
    "export_cub",
    "materialize",
    "render",
    "sample_label",
    "sibling_pairs",
]

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

_VALUE_LABELS: dict[str, dict[str, str]] = {
    "head_colour": {"red": "red-head", "blue": "blue-head", "yellow": "yellow-head"},
    "crest": {"none": "no-crest", "spike": "spike"},
}

# Colours (RGB in [0, 1]). Trait colours are saturated and bright; the nuisance body colour is
# muted and mid-dark, the background pastel and light, so traits stand out from both.
_HEAD_RGB = {"red": (0.92, 0.1, 0.08), "blue": (0.1, 0.3, 0.95), "yellow": (0.98, 0.86, 0.08)}
_BEAK_RGB = (0.96, 0.55, 0.12)
_TAIL_DARKEN = 0.45
# Distractor kinds: colour blob, stripe patch, dot patch, dark spike.
_DISTRACTOR_P = (0.4, 0.2, 0.2, 0.2)

# Critter geometry in body units: body half-length 1, facing +x, y pointing down.
_BODY = (0.0, 0.0, 1.0, 0.62)  # ellipse cx, cy, a, b
_WING = (-0.12, -0.06, 0.78, 0.48)  # holds ~5 dots or ~4 stripe periods
_HEAD = (0.98, -0.5, 0.48)  # circle cx, cy, r
_BEAK = ((1.3, -0.68), (1.3, -0.3), (1.85, -0.48))
# The three tails have about the same visible area (1.7-1.9 unit², near the body's 1.9), so tail shape cannot be read
# from colour histograms: only the outline tells fan, fork and point apart. They are 1.3× the first design (scaled
# about the root; datasets.md's calibration also used "a tail 1.3× larger"): at 1× the tiny ViT still confused fork
# and point at the end of the quickstart's budget.
_TAIL_ROOT = (-0.75, 0.0)
_TAIL_SCALE = 1.3


def _scaled_tail(points: tuple[tuple[float, float], ...]) -> tuple[tuple[float, float], ...]:
    return tuple((_TAIL_ROOT[0] + (x - _TAIL_ROOT[0]) * _TAIL_SCALE, y * _TAIL_SCALE) for x, y in points)


_TAIL_FAN = (1.15 * _TAIL_SCALE, math.radians(45))  # radius, half opening angle, pointing -x
_TAIL_FORK = _scaled_tail(((-0.75, 0.0), (-2.1, -1.05), (-2.1, 1.05)))
_TAIL_NOTCH = _scaled_tail(((-1.25, 0.0), (-2.4, -0.6), (-2.4, 0.6)))  # deep, so the two prongs read at 64 px
_TAIL_POINT = _scaled_tail(((-0.6, -0.76), (-0.6, 0.76), (-2.3, 0.0)))
_CREST_SPIKES = (  # two wide, tall spikes rooted inside the head (the head covers their bases)
    ((0.5, -0.62), (1.02, -0.88), (0.42, -1.72)),
    ((0.9, -0.88), (1.44, -0.62), (1.32, -1.72)),
)
_PATTERN_PERIOD = 0.42  # wing stripe period in body units
# Dots sit on a wider lattice with ~2 px gaps at 64 px: dots that nearly touch (46% cover) rendered as a dark
# grid that the tiny ViT mistook for stripes or plain (half of the quickstart's errors).
_DOT_PERIOD = 0.5
_DOT_RADIUS = 0.15  # ~28% cover
_TEXTURE_GRID = 5
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


# ----------------------------------------------------------------------------- classes


@lru_cache(maxsize=64)
def _class_traits_cached(slots: tuple[str, ...], num_classes: int) -> tuple[tuple[int, ...], ...]:
    radices = [len(SLOTS[s]) for s in slots]
    candidates = list(itertools.product(*(range(r) for r in radices)))
    chosen = [candidates.pop(0)]
    usage = [np.zeros(r, dtype=np.int64) for r in radices]
    for j, v in enumerate(chosen[0]):
        usage[j][v] += 1
    while len(chosen) < num_classes:
        # Stay connected (every class gets a sibling), cover unused trait values first so every
        # slot varies, then maximise sibling edges, then prefer rarely used values (balance).
        def key(t: tuple[int, ...]) -> tuple[bool, int, int, int]:
            edges = sum(sum(a != b for a, b in zip(t, c, strict=True)) == 1 for c in chosen)
            new_values = sum(int(usage[j][v] == 0) for j, v in enumerate(t))
            return edges > 0, new_values, edges, -sum(int(usage[j][v]) for j, v in enumerate(t))

        best = max(candidates, key=key)
        candidates.remove(best)
        chosen.append(best)
        for j, v in enumerate(best):
            usage[j][v] += 1
    return tuple(chosen)


def class_traits(config: TraitShapesConfig) -> list[tuple[int, ...]]:
    """The trait tuple (value index per slot of ``config.slots``) of every class.

    Chosen greedily and deterministically: each new class is a sibling (differs in exactly one
    slot) of a chosen one, unused values come first so every slot varies when the class count
    allows, then the choice maximises sibling pairs.
    """
    return list(_class_traits_cached(config.slots, config.num_classes))


def class_names(config: TraitShapesConfig) -> list[str]:
    """Human-readable class names such as ``"red-head/stripes/fan/spike"``."""
    names = []
    for traits in class_traits(config):
        words = []
        for slot, v in zip(config.slots, traits, strict=True):
            value = SLOTS[slot][v]
            words.append(_VALUE_LABELS.get(slot, {}).get(value, value))
        names.append("/".join(words))
    return names


def differing_slots(config: TraitShapesConfig, class_a: int, class_b: int) -> list[int]:
    """Indices (into ``config.slots``) of the slots where two classes differ."""
    traits = class_traits(config)
    return [j for j, (a, b) in enumerate(zip(traits[class_a], traits[class_b], strict=True)) if a != b]


def sibling_pairs(config: TraitShapesConfig) -> list[tuple[int, int, int]]:
    """All class pairs ``(a, b, slot)`` with ``a < b`` that differ in exactly the one slot ``slot``."""
    pairs = []
    for a, b in itertools.combinations(range(config.num_classes), 2):
        diff = differing_slots(config, a, b)
        if len(diff) == 1:
            pairs.append((a, b, diff[0]))
    return pairs


def _defining_slots(config: TraitShapesConfig) -> list[int]:
    traits = np.asarray(class_traits(config))
    return [j for j in range(len(config.slots)) if len(np.unique(traits[:, j])) > 1]


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


def sample_label(config: TraitShapesConfig, index: int, split: str = "train") -> int:
    """The class of an index: a fresh permutation of all classes per block of ``num_classes``.

    Every block of ``num_classes`` consecutive indices holds each class once (balanced) while
    the order inside a block is seeded, so the label is not a simple function of the index.
    """
    block, pos = divmod(index, config.num_classes)
    rng = np.random.default_rng([config.seed, _split_code(split), block, 0x1AB])
    return int(rng.permutation(config.num_classes)[pos])


def _split_code(split: str) -> int:
    return zlib.crc32(split.encode())


# ----------------------------------------------------------------------------- geometry


def _ellipse_points(cx: float, cy: float, a: float, b: float, n: int = 64) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.stack([cx + a * np.cos(t), cy + b * np.sin(t)], 1)


def _envelope() -> np.ndarray:
    """Outline points of every part and every trait value, in body units.

    Placement uses this class-independent envelope so the position of a critter never depends
    on its class (siblings rendered with one seed overlap exactly) and it always fits the canvas.
    """
    r, half = _TAIL_FAN
    t = np.linspace(np.pi - half, np.pi + half, 32)
    fan = np.concatenate([[_TAIL_ROOT], np.stack([_TAIL_ROOT[0] + r * np.cos(t), r * np.sin(t)], 1)])
    pts = [
        _ellipse_points(*_BODY),
        _ellipse_points(*_WING),
        _ellipse_points(_HEAD[0], _HEAD[1], _HEAD[2], _HEAD[2]),
        np.asarray(_BEAK),
        fan,
        np.asarray(_TAIL_FORK),
        np.asarray(_TAIL_POINT),
        *[np.asarray(s) for s in _CREST_SPIKES],
    ]
    return np.concatenate(pts).astype(np.float64)


_ENVELOPE = _envelope()
_ENVELOPE_LENGTH = float(np.ptp(_ENVELOPE[:, 0]))


@lru_cache(maxsize=16)
def _grid(n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Sample-centre coordinates (in output pixels) of an n×n image rendered at k× resolution."""
    c = (np.arange(n * k, dtype=np.float32) + 0.5) / k
    return np.broadcast_to(c[None, :], (n * k, n * k)), np.broadcast_to(c[:, None], (n * k, n * k))


@lru_cache(maxsize=16)
def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Row-stochastic matrix doing linear interpolation from n_in to n_out samples."""
    pos = (np.arange(n_out) + 0.5) / n_out * (n_in - 1)
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


def _ellipse(u: np.ndarray, v: np.ndarray, cx: float, cy: float, a: float, b: float) -> np.ndarray:
    return ((u - cx) / a) ** 2 + ((v - cy) / b) ** 2 <= 1.0


def _polygon(u: np.ndarray, v: np.ndarray, pts: Sequence[tuple[float, float]]) -> np.ndarray:
    """Inside test for a convex polygon given in either orientation."""
    p = np.asarray(pts, dtype=np.float64)
    q = np.roll(p, -1, axis=0)
    area = float(np.sum(p[:, 0] * q[:, 1] - q[:, 0] * p[:, 1]))
    sign = 1.0 if area >= 0 else -1.0
    inside = np.ones(u.shape, dtype=bool)
    for (x1, y1), (x2, y2) in zip(p, q, strict=True):
        inside &= sign * ((x2 - x1) * (v - y1) - (y2 - y1) * (u - x1)) >= 0
    return inside


def _to_local(
    x: np.ndarray, y: np.ndarray, cx: float, cy: float, angle: float, unit: float, flip: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates -> shape-local coordinates (rotation ``angle``, ``unit`` px per unit)."""
    c, s = math.cos(angle), math.sin(angle)
    dx, dy = x - cx, y - cy
    return flip * (c * dx + s * dy) / unit, (-s * dx + c * dy) / unit


def _tail(u: np.ndarray, v: np.ndarray, shape: str) -> np.ndarray:
    if shape == "fan":
        r, half = _TAIL_FAN
        du, dv = u - _TAIL_ROOT[0], v - _TAIL_ROOT[1]
        return (du * du + dv * dv <= r * r) & (-du >= np.abs(dv) / math.tan(half))
    if shape == "fork":
        return _polygon(u, v, _TAIL_FORK) & ~_polygon(u, v, _TAIL_NOTCH)
    return _polygon(u, v, _TAIL_POINT)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _pattern(u: np.ndarray, v: np.ndarray, kind: str, angle: float, phase: np.ndarray) -> np.ndarray:
    """Stripes or a dot lattice in local units (used for wings and distractor patches)."""
    c, s = math.cos(angle), math.sin(angle)
    if kind == "stripes":
        return ((c * u + s * v) / _PATTERN_PERIOD + phase[0]) % 1.0 < 0.5
    a = (c * u + s * v) / _DOT_PERIOD + phase[0]
    b = (-s * u + c * v) / _DOT_PERIOD + phase[1]
    return ((a % 1.0) - 0.5) ** 2 + ((b % 1.0) - 0.5) ** 2 <= (_DOT_RADIUS / _DOT_PERIOD) ** 2


# ----------------------------------------------------------------------------- rendering


def render(config: TraitShapesConfig, index: int, split: str = "train", label: int | None = None) -> TraitShapesSample:
    """Render one image, deterministically from ``(config.seed, split, index)``.

    Args:
        config: what to generate.
        index: image index (any non-negative int; each renders alone).
        split: split name; different splits give different images.
        label: force this class while keeping every nuisance draw of ``index`` (for sibling tests
            and counterfactuals); default is ``sample_label(config, index, split)``.

    Returns:
        The image with its label, traits, box, owner map and part points.
    """
    if index < 0:
        raise IndexError(f"index must be >= 0, got {index}")
    if label is None:
        label = sample_label(config, index, split)
    if not 0 <= label < config.num_classes:
        raise ValueError(f"label must be in 0..{config.num_classes - 1}, got {label}")
    traits_all = dict.fromkeys(SLOTS, 0)
    traits = class_traits(config)[label]
    traits_all.update(zip(config.slots, traits, strict=True))
    values = {slot: SLOTS[slot][v] for slot, v in traits_all.items()}

    n, k = config.size, config.oversample
    rng = np.random.default_rng([config.seed, _split_code(split), index])
    # Every draw below happens in the same order and amount whatever the class is.
    lo, hi = config.scale_range
    length = n * rng.uniform(lo, hi)
    angle = math.radians(config.rotation) * rng.uniform(-1.0, 1.0)
    flip = -1.0 if (config.flip and rng.random() < 0.5) else 1.0
    pos = rng.random(2)
    body_rgb = _hsv(rng.random(), rng.uniform(0.2, 0.5), rng.uniform(0.42, 0.62))
    bg_rgb = _hsv(rng.random(), rng.uniform(0.05, 0.3), rng.uniform(0.72, 0.92))
    texture = rng.normal(0.0, 0.06, (_TEXTURE_GRID, _TEXTURE_GRID, 3)).astype(np.float32)
    d_lo, d_hi = config.distractor_range
    n_distract = int(rng.integers(d_lo, d_hi + 1))
    d_kind = rng.choice(len(_DISTRACTOR_P), _MAX_DISTRACTORS, p=_DISTRACTOR_P)
    d_centre = rng.random((_MAX_DISTRACTORS, 2))
    d_size = rng.uniform(0.07, 0.15, (_MAX_DISTRACTORS, 2))
    d_angle = rng.uniform(0, np.pi, _MAX_DISTRACTORS)
    d_colour = rng.integers(0, len(_HEAD_RGB), _MAX_DISTRACTORS)
    d_phase = rng.random((_MAX_DISTRACTORS, 2))
    # Light wing and dark pattern/crest colours vary in hue: the trait is the pattern or shape.
    wing_rgb = _hsv(rng.random(), rng.uniform(0.0, 0.2), rng.uniform(0.85, 0.97))
    dark_rgb = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.04, 0.2))
    crest_rgb = _hsv(rng.random(), rng.uniform(0.0, 0.6), rng.uniform(0.04, 0.2))
    wing_angle = rng.uniform(-0.3, 0.3)
    wing_phase = rng.random(2)
    gain = 1.0 + config.lighting * rng.uniform(-0.2, 0.12)
    slope = config.lighting * rng.uniform(-0.3, 0.3)
    light_dir = rng.uniform(0, 2 * np.pi)
    cast = 1.0 + config.lighting * rng.uniform(-0.05, 0.05, 3)
    noise = rng.standard_normal((n, n, 3), dtype=np.float32)

    # Placement: fit the rotated class-independent envelope inside the canvas with 1 px margin.
    c, s = math.cos(angle), math.sin(angle)
    ex, ey = _ENVELOPE[:, 0] * flip, _ENVELOPE[:, 1]
    rx, ry = c * ex - s * ey, s * ex + c * ey
    unit = length / _ENVELOPE_LENGTH
    unit = min(unit, (n - 2.0) / np.ptp(rx), (n - 2.0) / np.ptp(ry))
    cx = 1.0 - unit * rx.min() + pos[0] * (n - 2.0 - unit * np.ptp(rx))
    cy = 1.0 - unit * ry.min() + pos[1] * (n - 2.0 - unit * np.ptp(ry))

    x, y = _grid(n, k)
    # Background: pastel texture, then distractors in the trait palette (they become background).
    interp = _interp_matrix(n * k, _TEXTURE_GRID)
    img = np.ascontiguousarray((interp @ texture.transpose(2, 0, 1) @ interp.T).transpose(1, 2, 0)) + bg_rgb
    head_palette = list(_HEAD_RGB.values())
    for i in range(n_distract):
        du, dv = _to_local(x, y, d_centre[i, 0] * n, d_centre[i, 1] * n, d_angle[i], 1.0)
        a_px, b_px = d_size[i] * n
        kind = d_kind[i]
        if kind == 0:  # colour blob
            img[_ellipse(du, dv, 0, 0, a_px, b_px)] = head_palette[d_colour[i]]
        elif kind in (1, 2):  # stripe or dot patch, like a wing
            patch = _ellipse(du, dv, 0, 0, 1.3 * a_px, b_px)
            img[patch] = wing_rgb
            pat = _pattern(du / unit, dv / unit, "stripes" if kind == 1 else "dots", 0.0, d_phase[i])
            img[patch & pat] = dark_rgb
        else:  # dark spike, like a crest or tail
            img[_polygon(du, dv, ((-a_px, b_px), (a_px, b_px), (0.2 * a_px, -2.0 * b_px)))] = crest_rgb

    # Critter: paint the owner map back to front; a later part owns the pixels it covers.
    u, v = _to_local(x, y, cx, cy, angle, unit, flip)
    owner = np.zeros(u.shape, dtype=np.uint8)
    ids = {name: i + 1 for i, name in enumerate(PART_NAMES)}
    owner[_tail(u, v, values["tail_shape"])] = ids["tail"]
    owner[_ellipse(u, v, *_BODY)] = ids["body"]
    owner[_ellipse(u, v, *_WING)] = ids["wing"]
    if values["crest"] == "spike":
        owner[_polygon(u, v, _CREST_SPIKES[0]) | _polygon(u, v, _CREST_SPIKES[1])] = ids["crest"]
    owner[_ellipse(u, v, _HEAD[0], _HEAD[1], _HEAD[2], _HEAD[2])] = ids["head"]
    owner[_polygon(u, v, _BEAK)] = ids["beak"]

    # Colour each owned pixel with its part's colour, so masks and colours agree exactly.
    img[owner == ids["body"]] = body_rgb
    img[owner == ids["tail"]] = body_rgb * _TAIL_DARKEN
    img[owner == ids["head"]] = _HEAD_RGB[values["head_colour"]]
    img[owner == ids["beak"]] = _BEAK_RGB
    img[owner == ids["crest"]] = crest_rgb
    wing = owner == ids["wing"]
    img[wing] = wing_rgb
    if values["wing_pattern"] != "plain":
        img[wing & _pattern(u, v, values["wing_pattern"], wing_angle, wing_phase)] = dark_rgb

    if k > 1:
        img = img.reshape(n, k, n, k, 3).mean((1, 3))
        owner = _majority(owner, n, k)

    # Lighting: global gain with a linear gradient and a small colour cast, then pixel noise.
    gx, gy = _grid(n, 1)
    ramp = ((gx - n / 2) * math.cos(light_dir) + (gy - n / 2) * math.sin(light_dir)) / n
    img = img * (gain + slope * ramp)[..., None] * cast.astype(np.float32)
    img += (0.02 * config.lighting) * noise
    image = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return TraitShapesSample(
        image=image,
        label=int(label),
        traits=tuple(int(t) for t in traits),
        box=_box(owner),
        owner=owner,
        parts=_part_points(owner),
        slots=config.slots,
    )


def _majority(owner: np.ndarray, n: int, k: int) -> np.ndarray:
    """Downsample an owner map by majority vote over each k×k block (ties: lower id)."""
    blocks = owner.reshape(n, k, n, k).transpose(0, 2, 1, 3).reshape(n, n, k * k)
    counts = np.stack([(blocks == i).sum(-1) for i in range(len(PART_NAMES) + 1)], 0)
    return counts.argmax(0).astype(np.uint8)


def _box(owner: np.ndarray) -> tuple[float, float, float, float]:
    rows, cols = np.flatnonzero(owner.any(1)), np.flatnonzero(owner.any(0))
    if rows.size == 0:
        return (0.0, 0.0, 0.0, 0.0)
    return (float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))


def _part_points(owner: np.ndarray) -> np.ndarray:
    """Centroid (x, y, in continuous pixels) and visible flag of every part; invisible -> 0, 0, 0."""
    n_lab = len(PART_NAMES) + 1
    gx, gy = _grid(owner.shape[0], 1)
    flat = owner.ravel()
    count = np.bincount(flat, minlength=n_lab)[1:].astype(np.float64)
    sx = np.bincount(flat, weights=gx.ravel(), minlength=n_lab)[1:]
    sy = np.bincount(flat, weights=gy.ravel(), minlength=n_lab)[1:]
    vis = count > 0
    safe = np.maximum(count, 1)
    return np.stack([np.where(vis, sx / safe, 0), np.where(vis, sy / safe, 0), vis], 1).astype(np.float32)


def _part_masks(owner: np.ndarray | torch.Tensor) -> Any:
    ids = np.arange(1, len(PART_NAMES) + 1)
    if isinstance(owner, torch.Tensor):
        return owner[None] == torch.as_tensor(ids, dtype=owner.dtype)[:, None, None]
    return owner[None] == ids[:, None, None].astype(owner.dtype)


@lru_cache(maxsize=64)
def _slot_part_index(slots: tuple[str, ...]) -> list[int]:
    return [PART_NAMES.index(SLOT_PARTS[s]) for s in slots]


# ----------------------------------------------------------------------------- datasets


def _item(
    image: torch.Tensor,
    owner: torch.Tensor,
    label: int,
    traits: torch.Tensor,
    box: torch.Tensor,
    parts: torch.Tensor,
    index: int,
    slots: tuple[str, ...],
) -> dict[str, Any]:
    """The dataset dict shared by ``TraitShapes`` and ``InMemoryDataset`` (image uint8 [3,H,W])."""
    part_masks = _part_masks(owner)
    return {
        "image": image.float().div_(255.0),
        "label": torch.tensor(label, dtype=torch.int64),
        "index": index,
        "box": box,
        "parts": parts,
        "part_masks": part_masks,
        "trait_masks": part_masks[_slot_part_index(slots)],
        "mask": (owner > 0)[None],
        "traits": traits,
    }


class TraitShapes(Dataset):
    """TraitShapes as a map-style dataset; images render on access (see ``materialize``).

    Items are dicts: ``image`` float32 [3,H,W] in [0,1] (not normalised), ``label`` int64,
    ``index``, ``box`` float32 xyxy, ``parts`` float32 [n_parts,3], ``part_masks`` bool
    [n_parts,H,W], ``trait_masks`` bool [n_slots,H,W], ``mask`` bool [1,H,W] foreground and
    ``traits`` int64 [n_slots].

    Args:
        config: what to generate.
        split: split name (seeds the images; "train" and "test" never share an image).
        length: number of images.
        transform: optional callable on the item dict (see ``traitlens.data.transforms``).
    """

    def __init__(
        self,
        config: TraitShapesConfig | None = None,
        split: str = "train",
        length: int = 10_000,
        transform: Any = None,
    ) -> None:
        if length < 0:
            raise ValueError(f"length must be >= 0, got {length}")
        self.config = config or TraitShapesConfig()
        self.split = split
        self.length = length
        self.transform = transform
        self.classes = class_names(self.config)
        self.num_classes = self.config.num_classes

    def __len__(self) -> int:
        return self.length

    def raw(self, index: int) -> TraitShapesSample:
        """The untransformed sample of ``index`` as numpy arrays."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for length {self.length}")
        return render(self.config, index, self.split)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.raw(index)
        item = _item(
            torch.from_numpy(s.image).permute(2, 0, 1),
            torch.from_numpy(s.owner),
            s.label,
            torch.tensor(s.traits, dtype=torch.int64),
            torch.tensor(s.box, dtype=torch.float32),
            torch.from_numpy(s.parts),
            index,
            self.config.slots,
        )
        return self.transform(item) if self.transform is not None else item


class InMemoryDataset(Dataset):
    """A materialised TraitShapes split: stacked uint8 tensors, same items as ``TraitShapes``.

    Attributes:
        images: uint8 [N, 3, H, W]. owners: uint8 [N, H, W] part-owner maps.
        labels: int64 [N]. traits: int64 [N, n_slots]. boxes: float32 [N, 4].
        parts: float32 [N, n_parts, 3]. indices: int64 [N] generator indices.
    """

    def __init__(
        self,
        config: TraitShapesConfig,
        split: str,
        arrays: Mapping[str, np.ndarray],
        transform: Any = None,
    ) -> None:
        self.config = config
        self.split = split
        self.transform = transform
        self.classes = class_names(config)
        self.num_classes = config.num_classes
        self.images = torch.from_numpy(np.ascontiguousarray(arrays["images"].transpose(0, 3, 1, 2)))
        self.owners = torch.from_numpy(arrays["owners"])
        self.labels = torch.from_numpy(arrays["labels"].astype(np.int64))
        self.traits = torch.from_numpy(arrays["traits"].astype(np.int64))
        self.boxes = torch.from_numpy(arrays["boxes"].astype(np.float32))
        self.parts = torch.from_numpy(arrays["parts"].astype(np.float32))
        self.indices = torch.from_numpy(arrays["indices"].astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def raw(self, index: int) -> TraitShapesSample:
        """The untransformed sample at position ``index`` as numpy arrays."""
        return TraitShapesSample(
            image=self.images[index].permute(1, 2, 0).numpy(),
            label=int(self.labels[index]),
            traits=tuple(int(t) for t in self.traits[index]),
            box=tuple(float(b) for b in self.boxes[index]),  # type: ignore[arg-type]
            owner=self.owners[index].numpy(),
            parts=self.parts[index].numpy(),
            slots=self.config.slots,
        )

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = _item(
            self.images[index],
            self.owners[index],
            int(self.labels[index]),
            self.traits[index],
            self.boxes[index],
            self.parts[index],
            int(self.indices[index]),
            self.config.slots,
        )
        return self.transform(item) if self.transform is not None else item


def _render_chunk(args: tuple[TraitShapesConfig, str, int, int]) -> dict[str, np.ndarray]:
    """Render indices [start, stop) into stacked arrays (a module-level function: spawn-safe)."""
    config, split, start, stop = args
    samples = [render(config, i, split) for i in range(start, stop)]
    return {
        "images": np.stack([s.image for s in samples]),
        "owners": np.stack([s.owner for s in samples]),
        "labels": np.asarray([s.label for s in samples], dtype=np.int64),
        "traits": np.asarray([s.traits for s in samples], dtype=np.int64),
        "boxes": np.asarray([s.box for s in samples], dtype=np.float32),
        "parts": np.stack([s.parts for s in samples]),
        "indices": np.arange(start, stop, dtype=np.int64),
    }


def materialize(
    dataset: TraitShapes, num_workers: int = 2, progress: bool = True, chunk_size: int = 256
) -> InMemoryDataset:
    """Render every item of ``dataset`` once, in parallel, into an ``InMemoryDataset``.

    About 10,000 64-px images take a few seconds on 2 cores. The dataset's transform is kept
    and applied on access, so random augmentations stay random per epoch.

    Args:
        dataset: the lazily rendered split.
        num_workers: worker processes; 0 renders in this process.
        progress: show a progress bar.
        chunk_size: indices per task.

    Returns:
        The in-memory split with identical items.
    """
    from tqdm.auto import tqdm

    n = len(dataset)
    tasks = [(dataset.config, dataset.split, i, min(i + chunk_size, n)) for i in range(0, n, chunk_size)]
    bar = tqdm(total=n, desc=f"TraitShapes {dataset.split}", unit="img", disable=not progress)
    chunks = []
    if num_workers > 0 and len(tasks) > 1:
        with multiprocessing.get_context().Pool(num_workers) as pool:
            for chunk in pool.imap(_render_chunk, tasks):
                chunks.append(chunk)
                bar.update(len(chunk["labels"]))
    else:
        for task in tasks:
            chunks.append(_render_chunk(task))
            bar.update(task[3] - task[2])
    bar.close()
    arrays = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]} if chunks else _empty(dataset.config)
    return InMemoryDataset(dataset.config, dataset.split, arrays, transform=dataset.transform)


def _empty(config: TraitShapesConfig) -> dict[str, np.ndarray]:
    n, p, s = config.size, len(PART_NAMES), len(config.slots)
    return {
        "images": np.zeros((0, n, n, 3), np.uint8),
        "owners": np.zeros((0, n, n), np.uint8),
        "labels": np.zeros(0, np.int64),
        "traits": np.zeros((0, s), np.int64),
        "boxes": np.zeros((0, 4), np.float32),
        "parts": np.zeros((0, p, 3), np.float32),
        "indices": np.zeros(0, np.int64),
    }


# ----------------------------------------------------------------------------- export


def export_cub(
    dataset: TraitShapes | InMemoryDataset,
    out_dir: str | Path,
    test: TraitShapes | InMemoryDataset | None = None,
    progress: bool = False,
) -> Path:
    """Write TraitShapes in the CUB-200-2011 layout so ``CUBDataset`` reads it back.

    Writes ``images.txt``, ``classes.txt``, ``image_class_labels.txt``, ``train_test_split.txt``,
    ``bounding_boxes.txt`` (x y w h), ``parts/parts.txt``, ``parts/part_locs.txt`` (part-mask
    centroids), ``images/<class>/<name>.png``, ``segmentations/<class>/<name>.png`` (foreground,
    0/255), ``part_masks/<class>/<name>.png`` (a label map: pixel value = 1-based part id, 0
    background; parts never overlap) and ``traits.json`` (slots, values, class traits, config).

    Args:
        dataset: the training split (``is_train = 1``); its transform is ignored.
        out_dir: output folder (created).
        test: an optional test split (``is_train = 0``) with the same config.
        progress: show a progress bar.

    Returns:
        ``out_dir`` as a Path.
    """
    from tqdm.auto import tqdm

    config = dataset.config
    if test is not None and test.config != config:
        raise ValueError("train and test splits must share one TraitShapesConfig")
    out = Path(out_dir)
    names = class_names(config)
    class_dirs = [f"{c + 1:03d}.{name.replace('/', '_')}" for c, name in enumerate(names)]
    splits = [(dataset, 1)] + ([(test, 0)] if test is not None else [])
    lines: dict[str, list[str]] = {k: [] for k in ("images", "labels", "split", "boxes", "locs")}
    image_id = 0
    bar = tqdm(total=sum(len(d) for d, _ in splits), desc="export", unit="img", disable=not progress)
    for ds, is_train in splits:
        for i in range(len(ds)):
            s = ds.raw(i)
            image_id += 1
            rel = f"{class_dirs[s.label]}/{ds.split}_{i:06d}.png"
            for sub, array in (
                ("images", s.image),
                ("segmentations", (s.owner > 0).astype(np.uint8) * 255),
                ("part_masks", s.owner),
            ):
                path = out / sub / rel
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(path)
            x0, y0, x1, y1 = s.box
            lines["images"].append(f"{image_id} {rel}")
            lines["labels"].append(f"{image_id} {s.label + 1}")
            lines["split"].append(f"{image_id} {is_train}")
            lines["boxes"].append(f"{image_id} {x0:g} {y0:g} {x1 - x0:g} {y1 - y0:g}")
            for p, (px, py, vis) in enumerate(s.parts):
                lines["locs"].append(f"{image_id} {p + 1} {px:.3f} {py:.3f} {int(vis)}")
            bar.update(1)
    bar.close()
    (out / "parts").mkdir(parents=True, exist_ok=True)
    files = {
        "images.txt": lines["images"],
        "classes.txt": [f"{c + 1} {d}" for c, d in enumerate(class_dirs)],
        "image_class_labels.txt": lines["labels"],
        "train_test_split.txt": lines["split"],
        "bounding_boxes.txt": lines["boxes"],
        "parts/parts.txt": [f"{p + 1} {name}" for p, name in enumerate(PART_NAMES)],
        "parts/part_locs.txt": lines["locs"],
    }
    for name, content in files.items():
        (out / name).write_text("".join(line + "\n" for line in content))
    traits = {
        "slots": list(config.slots),
        "values": {slot: list(SLOTS[slot]) for slot in config.slots},
        "slot_parts": {slot: SLOT_PARTS[slot] for slot in config.slots},
        "classes": [{"id": c + 1, "name": names[c], "traits": list(t)} for c, t in enumerate(class_traits(config))],
        "config": asdict(config),
    }
    (out / "traits.json").write_text(json.dumps(traits, indent=2) + "\n")
    logger.info("wrote %d images in the CUB layout to %s", image_id, out)
    return out


# ----------------------------------------------------------------------------- baseline


def _image_batches(dataset: Dataset, batch_size: int = 512) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(float images in [0,1], labels) batches; an untransformed InMemoryDataset skips its masks."""
    if isinstance(dataset, InMemoryDataset) and dataset.transform is None:
        for i in range(0, len(dataset), batch_size):
            yield dataset.images[i : i + batch_size].float() / 255.0, dataset.labels[i : i + batch_size]
        return
    for batch in DataLoader(dataset, batch_size=batch_size, num_workers=0):
        yield batch["image"], batch["label"]


def _histograms(dataset: Dataset, bins: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel colour histograms (3·bins, each channel summing to 1) and labels."""
    feats, labels = [], []
    for img, label in _image_batches(dataset):
        q = (img * bins).long().clamp_(0, bins - 1) + torch.arange(3).view(1, 3, 1, 1) * bins
        q = q.flatten(1)
        h = torch.zeros(img.shape[0], 3 * bins).scatter_add_(1, q, torch.ones(q.shape))
        feats.append(h / (img.shape[-1] * img.shape[-2]))
        labels.append(label)
    return torch.cat(feats), torch.cat(labels)


def colour_histogram_baseline(
    train_ds: Dataset, test_ds: Dataset, bins: int = 8, weight_decay: float = 1e-4, max_iter: int = 300
) -> float:
    """Test accuracy of multinomial logistic regression on per-channel colour histograms.

    The "not solvable from colour histograms alone" check of datasets.md: a good fine-grained
    set leaves this far below a ViT. Trained full-batch with L-BFGS on standardised features.

    Args:
        train_ds: items with ``image`` float [3,H,W] in [0,1] and ``label``.
        test_ds: held-out items.
        bins: histogram bins per channel.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.

    Returns:
        Accuracy on ``test_ds`` in [0, 1].
    """
    x_tr, y_tr = _histograms(train_ds, bins)
    x_te, y_te = _histograms(test_ds, bins)
    mean, std = x_tr.mean(0), x_tr.std(0).clamp_min(1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    n_classes = int(max(y_tr.max(), y_te.max())) + 1
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(x_tr.shape[1], n_classes)
    torch.nn.init.normal_(linear.weight, std=0.01, generator=gen)
    torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_tr), y_tr) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((linear(x_te).argmax(1) == y_te).float().mean())
