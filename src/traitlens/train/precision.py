"""Mixed precision for training: bfloat16 on a GPU that has it (else float16 with loss scaling), bfloat16 on a CPU
with native bf16 matrix units.

On CPUs with AMX or AVX512-BF16, bf16 matmuls are several times faster than float32, so training autocasts to bf16
there. The fused attention kernel is the exception: its bf16 backward is slow on a CPU, so attention runs unfused
while training in bf16 (measurements: docs/history.md, "CPU precision").
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

__all__ = ["autocast_dtype", "cpu_has_fast_bf16", "cuda_has_bf16", "unfused_attention"]

_BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


@functools.cache
def cpu_has_fast_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU advertises AMX-BF16 or AVX512-BF16 (read from `cpuinfo`; False where it is absent)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(_BF16_CPU_FLAGS & set(line.split(":", 1)[1].split()))
    return False


def cuda_has_bf16(device: torch.device) -> bool:
    """Whether the CUDA device `device` runs bfloat16 natively (compute capability ≥ 8.0)."""
    if not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    return torch.cuda.get_device_capability(index)[0] >= 8


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The autocast dtype worth using for training on `device`, or None to stay in float32.

    CUDA: bfloat16 where the GPU supports it (Ampere and later: no loss scaling needed), else float16, which the
    trainer pairs with a `GradScaler`.
    """
    if device.type == "cuda":
        return torch.bfloat16 if cuda_has_bf16(device) else torch.float16
    if device.type == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return None


@contextmanager
def unfused_attention(model: nn.Module) -> Iterator[None]:
    """Switch timm's fused attention off in every block of `model` for the duration; restore it after."""
    modules: list[Any] = list(model.modules())
    saved = [(m, m.fused_attn) for m in modules if isinstance(getattr(m, "fused_attn", None), bool)]
    try:
        for m, _ in saved:
            m.fused_attn = False
        yield
    finally:
        for m, fused in saved:
            m.fused_attn = fused
