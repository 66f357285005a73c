"""Small file helpers shared by every layer."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "sweep_temp_files"]


def atomic_write(target: str | Path, write: Callable[[Path], object]) -> Path:
    """Call `write(tmp_path)` then rename onto `target`, so a crash never leaves a half-written file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the user's usual permissions
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def sweep_temp_files(folder: str | Path) -> list[Path]:
    """Delete the temp files an `atomic_write` killed mid-write left in `folder` (not recursive); returns them.

    Only names `atomic_write` makes (`.NAME.XXXXXXXX.tmp`) are touched. Call it where no other process is writing
    into `folder` (e.g. when a run starts or resumes in its own folder).
    """
    removed = []
    for path in Path(folder).glob(".*.tmp"):
        if path.is_file():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
