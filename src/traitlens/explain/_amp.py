"""Mixed precision for `explain(amp=True)`: which autocast dtype a device gets, the refusal of amp-unsafe methods,
and the cast of the raw maps back to the input's dtype.

Autocast runs the model's matmuls (and those of the method) in bfloat16, or float16 on a GPU without bfloat16; only
methods whose registry metadata state an `amp_tolerance` may run under it, because some maps are differences or
ratios of nearly equal numbers that half precision destroys (TAM, LRP, ...). Tolerances and how they were measured:
docs/performance.md, "Mixed precision in explain".
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch

from traitlens.explain._explanation import Attribution
from traitlens.explain._registry import MethodInfo, get_method, list_methods

__all__ = ["AmpUnsafeMethodError", "amp_context", "amp_dtype", "amp_refusal", "amp_safe_methods", "cpu_has_bf16",
           "to_input_dtype"]

log = logging.getLogger(__name__)


class AmpUnsafeMethodError(ValueError):
    """`amp=True` was asked of a method whose registry metadata declare it amp-unsafe."""


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic units (AVX512-BF16 or AMX), as torch detects them."""
    cpu: Any = torch.cpu
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(cpu, probe, None)
        if check is not None and check():
            return True
    return False


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `device`: bfloat16 on a GPU that has it, else float16; bfloat16 on a CPU with bf16
    units; None (stay in float32) elsewhere, where bf16 would be emulated and slower."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.bfloat16 if torch.cuda.get_device_capability(index)[0] >= 8 else torch.float16
    if device.type == "cpu" and cpu_has_bf16():
        return torch.bfloat16
    return None


def amp_context(info: MethodInfo, device: torch.device, amp: bool) -> tuple[AbstractContextManager[Any],
                                                                           torch.dtype | None]:
    """(context to run the method in, the autocast dtype or None) for `explain(..., amp=amp)`.

    Raises:
        AmpUnsafeMethodError: `amp` is asked of a method without an `amp_tolerance`.
        TypeError: `amp` is not a bool.
    """
    if not isinstance(amp, bool):
        raise TypeError(f"amp must be True or False, got {amp!r}")
    if not amp:
        return nullcontext(), None
    why = amp_refusal(info)
    if why is not None:
        raise AmpUnsafeMethodError(why)
    dtype = amp_dtype(device)
    if dtype is None:
        log.warning("amp: no bfloat16 units on %s; %s runs in float32", device, info.name)
        return nullcontext(), None
    return torch.autocast(device.type, dtype=dtype), dtype


def amp_refusal(method: str | MethodInfo) -> str | None:
    """Why `method` cannot run with `amp=True` (one line naming the amp-safe methods), or None if it can.

    Raises:
        ValueError: an unknown method name.
    """
    info = get_method(method) if isinstance(method, str) else method
    if info.amp_tolerance is not None:
        return None
    return (f"method '{info.name}' is amp-unsafe (half precision breaks its maps); drop amp, or use one of: "
            f"{', '.join(amp_safe_methods())}")


def amp_safe_methods() -> list[str]:
    """The registered methods that state an `amp_tolerance`, i.e. may run with `amp=True`."""
    return [m.name for m in list_methods() if m.amp_tolerance is not None]


def to_input_dtype(raw: Attribution, dtype: torch.dtype) -> Attribution:
    """`raw` with its floating-point tensors (maps, logits, head maps, tensor extras) cast to `dtype`."""

    def cast(t: Any) -> Any:
        return t.to(dtype) if isinstance(t, torch.Tensor) and t.is_floating_point() else t

    return dataclasses.replace(raw, patch_maps=cast(raw.patch_maps), logits=cast(raw.logits),
                               head_maps=cast(raw.head_maps), extras={k: cast(v) for k, v in raw.extras.items()})
