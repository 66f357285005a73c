"""Training checkpoints: written atomically, complete enough to resume exactly, and read without unpickling code.

Everything in a checkpoint is a tensor or a plain container of numbers and strings (the RNG states included), so
`load_checkpoint` reads it with `torch.load(weights_only=True)`: a checkpoint planted in a shared run folder cannot
run code. Files from before this format, or from anywhere else, are refused with a message.
"""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from traitlens._io import atomic_write

__all__ = ["CheckpointError", "capture_rng", "load_checkpoint", "restore_rng", "save_checkpoint"]

#: Format tag stored in every checkpoint; a file without it is not resumed.
FORMAT = "traitlens-checkpoint/2"


class CheckpointError(RuntimeError):
    """A checkpoint cannot be resumed from: unreadable, foreign, or written for another run."""


def capture_rng() -> dict[str, Any]:
    """The state of every random generator training touches (python, numpy, torch CPU and CUDA), as tensors/lists."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [kind, torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(int(v) for v in internal.tolist()), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """`torch.save` to a temp file, then rename: an interrupted write never corrupts the last checkpoint."""
    return atomic_write(path, lambda p: torch.save({**state, "format": FORMAT}, str(p)))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, never unpickling objects (`weights_only=True`).

    Raises:
        FileNotFoundError: no checkpoint at `path`.
        CheckpointError: the file holds anything but tensors and plain containers (an older traitlens checkpoint,
            a foreign or tampered file), or is not a traitlens checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {path}")
    try:
        state = torch.load(str(path), map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path} cannot be resumed safely: it is not a plain-tensor traitlens checkpoint ({first[:160]}); "
            "start the run again without --resume, or in a new --out folder"
        ) from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a {FORMAT} checkpoint; start the run again without --resume")
    return state
