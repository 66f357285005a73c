"""TraitShapes drawing primitives: the critter's shapes in body units, its palette and inside tests.

Shapes are analytic (ellipses, convex polygons, a fan sector) and evaluated on pixel-centre grids,
so a part's mask is exactly the set of sample points inside it.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__: list[str] = []

# Colours (RGB in [0, 1]). Trait colours are saturated and bright; the nuisance body colour is
# muted and mid-dark, the background pastel and light, so traits stand out from both.
_HEAD_RGB = {"red": (0.92, 0.1, 0.08), "blue": (0.1, 0.3, 0.95), "yellow": (0.98, 0.86, 0.08)}
_BEAK_RGB = (0.96, 0.55, 0.12)
_TAIL_DARKEN = 0.45

# Critter geometry in body units: body half-length 1, facing +x, y pointing down.
_BODY = (0.0, 0.0, 1.0, 0.62)  # ellipse cx, cy, a, b
_WING = (-0.12, -0.06, 0.78, 0.48)  # holds ~5 dots or ~4 stripe periods
_HEAD = (0.98, -0.5, 0.48)  # circle cx, cy, r
_BEAK = ((1.3, -0.68), (1.3, -0.3), (1.85, -0.48))
# The three tails have about the same visible area (1.7-1.9 unit², near the body's 1.9), so tail shape cannot be read
# from colour histograms: only the outline tells fan, fork and point apart. They are 1.3× the first design (scaled
# about the root) so that fork and point stay distinguishable at 64 px (docs/history.md, "TraitShapes geometry").
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
# Dots sit on a wider lattice with ~2 px gaps at 64 px: nearly touching dots render as a dark grid that reads as
# stripes or a plain wing (docs/history.md, "TraitShapes geometry").
_DOT_PERIOD = 0.5
_DOT_RADIUS = 0.15  # ~28% cover


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
