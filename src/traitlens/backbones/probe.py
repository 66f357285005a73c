"""`AttentionProbe`: capture attention, q/k, norm1 tokens and block inputs/outputs of chosen ViT blocks.

Follows posthoc.md §0. Hooks are forward hooks only; gradients are taken with `torch.autograd.grad`
on the captured tensors (no module backward hooks, no `.grad` left on parameters). Hooks are always
removed and fused attention always restored on exit, also when the body raises.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

import torch
import torch.nn as nn
from timm.models.vision_transformer import Attention as TimmAttention

from traitlens.backbones.protocols import ViTBlock, as_vit

__all__ = ["AttentionProbe", "UnsupportedAttentionError"]

log = logging.getLogger(__name__)

CAPTURES = ("attn", "q", "k", "norm1", "block_input", "block_output")


class UnsupportedAttentionError(NotImplementedError):
    """The attention module cannot be read the way a method needs (e.g. pre-softmax scores of EVA/RoPE)."""


def _leaf(t: torch.Tensor) -> torch.Tensor:
    """Leaf rule (posthoc.md §0): a captured tensor that does not require grad becomes a grad leaf.

    Exact, because nothing upstream of it requires grad.
    """
    if torch.is_grad_enabled() and not t.requires_grad and t.is_floating_point():
        return t.detach().requires_grad_()
    return t


class AttentionProbe:
    """Context manager capturing tensors inside ViT blocks during forward passes.

    Args:
        model: a timm-style ViT (`model.blocks[i].attn`, `.norm1`).
        blocks: block indices (negative allowed) or "all".
        capture: any of "attn" (post-softmax A [B,H,N,N]), "q", "k" ([B,H,N,d_h], after q/k norm),
            "norm1" (T [B,N,D]), "block_input", "block_output" ([B,N,D]).
        detach_attention_input: detach the input of each hooked attention module (AGCAM's graph).

    After a forward pass, `probe.attn[i]` etc. hold the latest captures per block index (non-negative).
    `probe.scores(i)` gives S = (q·scale)kᵀ for timm's standard `Attention`.

    Example:
        >>> with AttentionProbe(model, blocks=[-1], capture=("attn", "norm1")) as probe:  # doctest: +SKIP
        ...     logits = model(x)
        ...     (g,) = probe.grad(logits[:, 0].sum(), [probe.norm1[-1]])
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: Sequence[int] | str = (-1,),
        capture: Iterable[str] = ("attn",),
        detach_attention_input: bool = False,
    ) -> None:
        if isinstance(model, torch.jit.ScriptModule):
            raise TypeError("AttentionProbe cannot hook a scripted (TorchScript) model; pass the eager nn.Module")
        if not hasattr(model, "blocks"):
            raise TypeError(f"{type(model).__name__} has no `blocks`; AttentionProbe needs a timm-style ViT")
        self.model = model
        n = len(self._blocks)
        idx: Iterable[int] = range(n) if blocks == "all" else cast(Sequence[int], blocks)
        self.block_ids = sorted({i % n for i in idx})
        self.capture = tuple(capture)
        unknown = set(self.capture) - set(CAPTURES)
        if unknown:
            raise ValueError(f"unknown capture {sorted(unknown)}; choose from {CAPTURES}")
        self.detach_attention_input = detach_attention_input
        self._handles: list[Any] = []
        self._fused: dict[int, bool] = {}
        self.attn: dict[int, torch.Tensor] = {}
        self.q: dict[int, torch.Tensor] = {}
        self.k: dict[int, torch.Tensor] = {}
        self.norm1: dict[int, torch.Tensor] = {}
        self.block_input: dict[int, torch.Tensor] = {}
        self.block_output: dict[int, torch.Tensor] = {}
        self._check()

    @property
    def _blocks(self) -> Sequence[ViTBlock]:
        return as_vit(self.model).blocks

    def _check(self) -> None:
        for i in self.block_ids:
            attn = self._blocks[i].attn
            if "attn" in self.capture and not hasattr(attn, "attn_drop"):
                raise UnsupportedAttentionError(
                    f"block {i}: {type(attn).__name__} does not route attention probabilities through "
                    "`attn_drop`, so they cannot be captured"
                )
            if ("q" in self.capture or "k" in self.capture) and type(attn) is not TimmAttention:
                raise UnsupportedAttentionError(
                    f"block {i}: pre-softmax scores are only readable from timm's standard Attention, "
                    f"not {type(attn).__module__}.{type(attn).__name__}"
                )


    def _store(self, name: str, i: int) -> Callable[[nn.Module, Any, torch.Tensor], torch.Tensor]:
        store: dict[int, torch.Tensor] = getattr(self, name)

        def hook(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            output = _leaf(output)
            store[i] = output
            store[i - len(self._blocks)] = output
            return output

        return hook

    def __enter__(self) -> AttentionProbe:
        try:
            for i in self.block_ids:
                blk = self._blocks[i]
                attn = blk.attn
                if "attn" in self.capture:
                    if hasattr(attn, "fused_attn"):
                        self._fused[i] = attn.fused_attn
                        attn.fused_attn = False
                    self._handles.append(attn.attn_drop.register_forward_hook(self._store("attn", i)))
                if "q" in self.capture:
                    self._handles.append(attn.q_norm.register_forward_hook(self._store("q", i)))
                if "k" in self.capture:
                    self._handles.append(attn.k_norm.register_forward_hook(self._store("k", i)))
                if "norm1" in self.capture:
                    self._handles.append(blk.norm1.register_forward_hook(self._store("norm1", i)))
                if "block_input" in self.capture:
                    self._handles.append(blk.register_forward_pre_hook(self._pre_store(i)))
                if "block_output" in self.capture:
                    self._handles.append(blk.register_forward_hook(self._store("block_output", i)))
                if self.detach_attention_input:
                    self._handles.append(attn.register_forward_pre_hook(_detach_first_input))
        except BaseException:
            self.remove()
            raise
        return self

    def _pre_store(self, i: int) -> Callable[[nn.Module, tuple[Any, ...]], tuple[Any, ...]]:
        def hook(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
            x = _leaf(args[0])
            self.block_input[i] = x
            self.block_input[i - len(self._blocks)] = x
            return (x, *args[1:])

        return hook

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook and restore fused attention; safe to call twice."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        for i, fused in self._fused.items():
            self._blocks[i].attn.fused_attn = fused
        self._fused.clear()

    def scores(self, i: int) -> torch.Tensor:
        """Pre-softmax scores S = (q·scale)kᵀ of block i, [B,H,N,N] (no attention mask is applied)."""
        if i not in self.q or i not in self.k:
            raise RuntimeError("scores() needs capture=('q', 'k') and a forward pass inside the probe")
        attn = self._blocks[i].attn
        return (self.q[i] * attn.scale) @ self.k[i].transpose(-2, -1)

    @staticmethod
    def grad(
        output: torch.Tensor,
        inputs: Sequence[torch.Tensor],
        grad_outputs: torch.Tensor | None = None,
        is_grads_batched: bool = False,
        retain_graph: bool | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """`torch.autograd.grad` with zeros for captured tensors the output does not depend on."""
        return torch.autograd.grad(
            output, list(inputs), grad_outputs=grad_outputs, is_grads_batched=is_grads_batched,
            retain_graph=retain_graph, allow_unused=True, materialize_grads=True,
        )


def _detach_first_input(_module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].detach(), *args[1:])
