"""Training precision: bf16 autocast on CPUs with bf16 matrix units, unfused attention while it is on."""

from __future__ import annotations

import pytest
import torch

from traitlens.backbones import create_preset
from traitlens.train import FitConfig, fit, precision
from traitlens.train import trainer as trainer_module

from .test_trainer import ArraySet


@pytest.mark.parametrize(("flags", "expected"), [
    ("fpu sse avx2 avx512f amx_bf16 amx_tile", True),
    ("fpu sse avx2 avx512f avx512_bf16", True),
    ("fpu sse avx2 avx512f avx512_vnni", False),
])
def test_bf16_support_is_read_from_the_cpu_flags(tmp_path, flags, expected) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text(f"processor\t: 0\nmodel name\t: test\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert precision.cpu_has_fast_bf16(info) is expected


def test_no_cpuinfo_means_no_bf16(tmp_path) -> None:
    assert precision.cpu_has_fast_bf16(tmp_path / "missing") is False


def test_autocast_dtype_per_device(monkeypatch) -> None:
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda device: True)  # Ampere and later
    assert precision.autocast_dtype(torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(precision, "cuda_has_bf16", lambda device: False)  # older GPUs: fp16 + GradScaler
    assert precision.autocast_dtype(torch.device("cuda")) is torch.float16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: True)
    assert precision.autocast_dtype(torch.device("cpu")) is torch.bfloat16
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    assert precision.autocast_dtype(torch.device("cpu")) is None


def test_cuda_bf16_reads_the_compute_capability(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision.cuda_has_bf16(torch.device("cuda")) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index, c=capability: c)
        assert precision.cuda_has_bf16(torch.device("cuda", 0)) is expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs a CUDA runtime")
def test_pinned_batches_hold_the_same_values() -> None:
    from traitlens.train import iterate_batches

    class Mem:
        images = torch.randint(0, 255, (5, 3, 4, 4), dtype=torch.uint8)
        labels = torch.arange(5)
        transform = None

        def __len__(self) -> int:
            return 5

    plain = list(iterate_batches(Mem(), 2))
    pinned = list(iterate_batches(Mem(), 2, pin_memory=True))
    for (a, la), (b, lb) in zip(plain, pinned, strict=True):
        assert b.is_pinned() and torch.equal(a, b) and torch.equal(la, lb)


def test_unfused_attention_restores_each_block_also_after_an_error() -> None:
    model = create_preset("traitlens-vit-micro", 3)
    model.blocks[1].attn.fused_attn = False
    before = [blk.attn.fused_attn for blk in model.blocks]
    with pytest.raises(RuntimeError), precision.unfused_attention(model):
        assert not any(blk.attn.fused_attn for blk in model.blocks)
        raise RuntimeError("boom")
    assert [blk.attn.fused_attn for blk in model.blocks] == before == [True, False]


def _forward_states(amp: bool, monkeypatch) -> tuple[list[tuple[bool, bool, torch.dtype]], torch.nn.Module]:
    """Fit with bf16 forced on; record (fused attention, autocast on, autocast dtype) at each attention call."""
    monkeypatch.setattr(trainer_module, "autocast_dtype", lambda device: torch.bfloat16)
    torch.manual_seed(0)
    model = create_preset("traitlens-vit-micro", 3)
    seen = []
    attn = model.blocks[0].attn
    attn.register_forward_pre_hook(lambda mod, args: seen.append(
        (mod.fused_attn, torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))))
    fit(model, ArraySet(n=32), None, FitConfig(epochs=1, batch_size=16, amp=amp), progress=False)
    return seen, model


def test_bf16_training_runs_attention_unfused_and_restores_it(monkeypatch) -> None:
    seen, model = _forward_states(True, monkeypatch)
    assert seen == [(False, True, torch.bfloat16)] * 2  # two steps, both in bf16 with the manual attention path
    assert all(blk.attn.fused_attn for blk in model.blocks)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: weights stay float32


def test_amp_off_trains_in_float32_with_fused_attention(monkeypatch) -> None:
    seen, _ = _forward_states(False, monkeypatch)
    assert [state[:2] for state in seen] == [(True, False)] * 2
