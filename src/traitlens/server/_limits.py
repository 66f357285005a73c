"""The server's resource limits, in one table (no web dependencies, so the CLI can read the defaults)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["ServerLimits"]


@dataclass(frozen=True)
class ServerLimits:
    """Bounds on what one request, and the server as a whole, may cost.

    Attributes:
        max_upload_bytes: largest accepted image file (413 beyond).
        max_request_bytes: largest accepted request body, all files together (413 beyond, before parsing).
        max_pixels: largest decoded image, width × height (422 beyond: decompression-bomb guard).
        workers: threads computing explanations (each holds its own copy of a model once used).
        queue_size: requests allowed to wait for a worker; more get 503 at once.
        timeout_s: per-request limit on waiting plus computing (504 beyond).
        max_targets: largest K for `topk:K`.
        max_heads: per-head maps returned per target at most.
        max_concept_images: sample images per concept at most.
        max_concepts: concepts kept in memory; the oldest is dropped beyond.
        max_concurrent_connections: requests handled at once, counted from a complete request head (503
            beyond); idle or half-sent connections do not count, they are closed after `header_timeout_s`.
        header_timeout_s: seconds a connection may take to send a complete request head (request line and
            headers); it is closed beyond, so idle sockets cannot pile up.
        display_size: longest side in pixels of the returned overlays.
        head_display_size: longest side in pixels of the returned per-head maps.
        max_results: explanations kept in memory for their `.npz` download; the oldest is dropped beyond.
    """

    max_upload_bytes: int = 8 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024
    max_pixels: int = 24_000_000
    workers: int = 2
    queue_size: int = 8
    timeout_s: float = 120.0
    max_targets: int = 10
    max_heads: int = 32
    max_concept_images: int = 16
    max_concepts: int = 64
    max_concurrent_connections: int = 64
    header_timeout_s: float = 10.0
    display_size: int = 320
    head_display_size: int = 96
    max_results: int = 16

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            floor = 0 if f.name == "queue_size" else 1e-9  # an empty queue is allowed: refuse when all are busy
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < floor:
                raise ValueError(f"server limit {f.name} must be a positive number, got {value!r}")

    @classmethod
    def from_kwargs(cls, **limits: Any) -> ServerLimits:
        """Build from keyword arguments; an unknown name raises a TypeError listing the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(limits) - known)
        if unknown:
            raise TypeError(f"unknown server limit(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**{k: v for k, v in limits.items() if v is not None})

    def as_dict(self) -> dict[str, Any]:
        """The limits as a plain dict (shown by `GET /api/info`)."""
        return asdict(self)
