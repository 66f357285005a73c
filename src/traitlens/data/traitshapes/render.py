"""Render one TraitShapes image with its part-owner map, box and part points (pure numpy).

All randomness of one image comes from a generator seeded by ``(seed, split, index)`` and is
drawn in a fixed order that does not depend on the class, so two classes rendered with the
same index differ only inside their differing trait parts (datasets.md, "TraitShapes").
"""

from __future__ import annotations

import math

import numpy as np

from traitlens.data.traitshapes.classes import _split_code, class_traits, sample_label
from traitlens.data.traitshapes.config import _MAX_DISTRACTORS, PART_NAMES, SLOTS, TraitShapesConfig
from traitlens.data.traitshapes.geometry import (
    _BEAK,
    _BEAK_RGB,
    _BODY,
    _CREST_SPIKES,
    _ENVELOPE,
    _ENVELOPE_LENGTH,
    _HEAD,
    _HEAD_RGB,
    _TAIL_DARKEN,
    _WING,
    _ellipse,
    _grid,
    _hsv,
    _interp_matrix,
    _pattern,
    _polygon,
    _tail,
    _to_local,
)
from traitlens.data.traitshapes.sample import TraitShapesSample

__all__ = ["render"]

# Distractor kinds: colour blob, stripe patch, dot patch, dark spike.
_DISTRACTOR_P = (0.4, 0.2, 0.2, 0.2)
_TEXTURE_GRID = 5


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
