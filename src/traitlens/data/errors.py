"""Errors raised by the data layer."""

from __future__ import annotations

__all__ = ["DataError"]


class DataError(ValueError):
    """A data file is missing, unreadable or inconsistent; the message names the file."""
