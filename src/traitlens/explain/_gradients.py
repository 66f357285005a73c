"""Gradient plumbing shared by the gradient-based explainers: state checks, chunking, batched target VJPs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from traitlens.backbones.introspect import ViTLayout
from traitlens.backbones.probe import AttentionProbe
from traitlens.explain._targets import TargetSpec, target_scores

MULTI_TARGETS = ("expand", "vjp")
QUERIES = ("cls", "mean_patches")
#: `internal_batch_size="auto"`: as many rows per pass as fit in this many bytes of estimated working memory
#: (at least one row). 2 GiB keeps a batch of 518 px ViT-B images within a few GiB (docs/performance.md).
AUTO_BUDGET_BYTES = 2 * 2**30


def _check_state(model: nn.Module) -> None:
    """Refuse states in which summing scalars over the batch is not a per-image gradient (posthoc.md §0).

    Raises:
        RuntimeError: under `torch.inference_mode`, or when a BatchNorm layer is in training mode (its batch
            statistics mix the images, so one backward over the summed batch would not give per-image maps).
    """
    if torch.is_inference_mode_enabled():
        raise RuntimeError("gradient explanations cannot run under torch.inference_mode(); use a normal mode")
    training_bn = [name or type(m).__name__ for name, m in model.named_modules()
                   if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    if training_bn:
        raise RuntimeError(
            f"BatchNorm layers in training mode ({', '.join(training_bn[:3])}{' ...' if len(training_bn) > 3 else ''})"
            " mix the images of a batch, so per-image gradient maps would be wrong; call model.eval() first"
        )


def _check_options(multi_target: str, internal_batch_size: int | str | None, query: str | None = None) -> None:
    if multi_target not in MULTI_TARGETS:
        raise ValueError(f"unknown multi_target '{multi_target}'; choose from {MULTI_TARGETS}")
    _check_batch_size(internal_batch_size)
    if query is not None and query not in QUERIES:
        raise ValueError(f"unknown query '{query}'; choose from {QUERIES}")


def _check_batch_size(internal_batch_size: int | str | None) -> None:
    """A positive int, None (one pass) or 'auto' (rows from `AUTO_BUDGET_BYTES`)."""
    if internal_batch_size == "auto":
        return
    if internal_batch_size is not None and (isinstance(internal_batch_size, bool)
                                            or not isinstance(internal_batch_size, int) or internal_batch_size < 1):
        raise ValueError(f"internal_batch_size must be a positive int, None or 'auto', got {internal_batch_size!r}")


def attention_bytes(layout: ViTLayout, itemsize: int = 4) -> int:
    """Bytes of one attention-sized tensor [H,N,N] of one image, the unit of the per-row memory estimates."""
    return layout.num_heads * layout.num_tokens**2 * itemsize


def _rows_per_pass(internal_batch_size: int | str | None, row_bytes: int) -> int | None:
    """The int rows per pass that `internal_batch_size` stands for ('auto': fit `AUTO_BUDGET_BYTES`)."""
    if internal_batch_size == "auto":
        return max(1, AUTO_BUDGET_BYTES // max(row_bytes, 1))
    return internal_batch_size if isinstance(internal_batch_size, int) else None


def _chunks(n_images: int, num_targets: int, expand: bool, internal_batch_size: int | None) -> list[tuple[int, int]]:
    """Image ranges [start, stop) so that one pass holds at most `internal_batch_size` rows.

    A row is one image for 'vjp' and one (image, target) pair for 'expand'; at least one image per chunk.
    """
    if internal_batch_size is None:
        step = max(n_images, 1)
    else:
        step = max(1, internal_batch_size // num_targets) if expand else internal_batch_size
    return [(s, min(s + step, n_images)) for s in range(0, n_images, step)]


def _resolve_chunk(target: TargetSpec, logits: torch.Tensor | None, start: int, stop: int) -> torch.Tensor:
    """Class ids [n,K] for images start..stop-1, from the logits of that chunk (no extra forward; None for a
    headless model's concept target)."""
    ids = target.resolve(logits)
    return ids if target.needs_logits else ids[start:stop]


def _chunk_scores(
    logits: torch.Tensor, target: TargetSpec, start: int, stop: int, num_targets: int, expand: bool, space: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-image logits [n,C], targets [n,K], scores y) for one chunk.

    With 'expand' the rows are (image, target) pairs in image-major order and y is [n·K, 1] (row b·K+k
    scores target k of image b); with 'vjp' y is [n,K].
    """
    image_logits = logits[::num_targets] if expand else logits
    targets = _resolve_chunk(target, image_logits, start, stop)
    y = target_scores(logits, targets.reshape(-1, 1) if expand else targets, space)
    return image_logits, targets, y


def _target_grads(y: torch.Tensor, inputs: Sequence[torch.Tensor], n: int, num_targets: int,
                  expand: bool) -> list[torch.Tensor]:
    """∂y/∂inputs per (image, target): a list of [n,K,...] tensors, one `autograd.grad` call in all cases.

    'expand': the inputs already hold one row per (image, target), so the summed scores give every row its own
    gradient. 'vjp': one forward, K one-hot vector-Jacobian products batched with `is_grads_batched`.
    """
    if expand:
        grads = AttentionProbe.grad(y.sum(), inputs)
        return [g.reshape(n, num_targets, *g.shape[1:]) for g in grads]
    if num_targets == 1:
        grads = AttentionProbe.grad(y.sum(), inputs)
        return [g.unsqueeze(1) for g in grads]
    eye = torch.eye(num_targets, dtype=y.dtype, device=y.device)
    one_hots = eye[:, None, :].expand(num_targets, n, num_targets)  # [K,n,K]: row k selects target k of every image
    grads = AttentionProbe.grad(y, inputs, grad_outputs=one_hots, is_grads_batched=True)
    return [g.movedim(0, 1) for g in grads]


def _per_target(t: torch.Tensor, n: int, num_targets: int, expand: bool) -> torch.Tensor:
    """A captured forward tensor as [n, K or 1, ...] (replicas in 'expand' mode, broadcastable in 'vjp')."""
    return t.reshape(n, num_targets, *t.shape[1:]) if expand else t.unsqueeze(1)


