"""LRP relevance rules in closed form (posthoc.md §9): every rule is per sample, R has the shape of the layer's output.

The rules of `hila-chefer/Transformer-Explainability` (`modules/layers_ours.py`, MIT), re-derived; `lrp.py` applies
them block by block. `Workspace` holds the buffers the relevance pass reuses from block to block.
"""

from __future__ import annotations

import torch

__all__ = [
    "EPS",
    "Workspace",
    "relprop_add",
    "relprop_clone",
    "relprop_linear",
    "relprop_matmul",
    "relprop_scale",
    "safe_divide",
]

EPS = 1e-9


def safe_divide(a: torch.Tensor, b: torch.Tensor, stabilizer: str = "clamp", overwrite: bool = False) -> torch.Tensor:
    """a / b, and 0 wherever b = 0.

    'clamp' (spec): the denominator keeps its sign and |b| ≥ 1e-9. 'reference': the reference's `safe_divide`,
    which in effect divides by b + 1e-9 (its two clamps add up to that for every b). `overwrite=True` lets the
    result take b's buffer (b must be a temporary of the result's shape).
    """
    if stabilizer == "clamp":
        # On a CPU a fresh [B,H,N,N] buffer costs page faults comparable to the division itself: divide once (into
        # b's buffer when allowed) and redo only the rare entries with |b| < ε. Same values as clamping the whole
        # denominator: b ≥ 0 → max(b, ε), b < 0 → min(b, −ε), b = ±0 → 0.
        small = (b < EPS).logical_and_(b > -EPS)
        tiny = b[small] if bool(small.any()) else None  # read before b's buffer may take the quotient
        inplace = overwrite and b.shape == torch.broadcast_shapes(a.shape, b.shape) and b.dtype == a.dtype
        out = torch.div(a, b, out=b) if inplace else a / b
        if tiny is not None:
            if out.shape != small.shape:  # a broadcasts over b (never in place): the plain, slower form
                den = b.abs().clamp_(min=EPS).copysign_(b)
                return torch.where(small, (a / den).masked_fill_(b == 0, 0.0), out)
            num = a.expand_as(out)[small]
            den = tiny.abs().clamp_(min=EPS).copysign_(tiny)
            out[small] = (num / den).masked_fill_(tiny == 0, 0.0)
        return out
    den = b + EPS
    den.masked_fill_(den == 0, EPS)
    out = torch.div(a, den, out=den) if den.shape == torch.broadcast_shapes(a.shape, b.shape) and \
        den.dtype == torch.result_type(a, b) else a / den  # reuse the buffer
    return out.masked_fill_(b == 0, 0.0)


def relprop_linear(x: torch.Tensor, weight: torch.Tensor, R: torch.Tensor, stabilizer: str = "clamp") -> torch.Tensor:
    """LRP-αβ with α=1, β=0 through y = x Wᵀ (+ bias, ignored).

    R_j = Σ_i [(x_j w_ij)^+ / Σ_j' (x_j' w_ij')^+]·R_i. A product is positive when x and w share a sign, so
    (x w)^+ = x^+ w^+ + x^− w^−, and the rule is two transposed matmuls per sign.
    """
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    Z = (xp @ wp.T).add_(xn @ wn.T)
    S = safe_divide(R, Z, stabilizer, overwrite=True)
    return (S @ wp).mul_(xp).add_((S @ wn).mul_(xn))  # in place: fresh products, same values


def relprop_matmul(
    a: torch.Tensor, b: torch.Tensor, R: torch.Tensor, stabilizer: str = "clamp", product: torch.Tensor | None = None,
    workspace: Workspace | None = None, tag: str = "",
) -> tuple[torch.Tensor, torch.Tensor]:
    """z-rule over both operands of Z = a @ b: R_a = a ⊙ (S bᵀ), R_b = b ⊙ (aᵀ S), S = R/Z (not halved here).

    `product` is a @ b when the forward already computed it (the same tensor, so the same values). With a
    `workspace`, Z and R_a are written into its buffers named by `tag` (R_a is valid until the next call
    with that tag).
    """
    ws = workspace if workspace is not None else Workspace(keep=False)
    if product is None:
        S = safe_divide(R, torch.matmul(a, b, out=ws.buffer(f"{tag}.Z", a, b)), stabilizer, overwrite=True)
    else:
        S = safe_divide(R, product, stabilizer)
    R_a = torch.matmul(S, b.transpose(-2, -1), out=ws.buffer(f"{tag}.R_a", S, b.transpose(-2, -1))).mul_(a)
    return R_a, (a.transpose(-2, -1) @ S).mul_(b)


class Workspace:
    """Buffers reused from block to block by the relevance pass: on a CPU every fresh [M,H,N,N] tensor costs page
    faults comparable to the arithmetic that fills it. `keep=False` hands out fresh tensors."""

    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """An uninitialised buffer for the product a @ b, reused while its shape, dtype and device stay the same."""
        shape = (*torch.broadcast_shapes(a.shape[:-2], b.shape[:-2]), a.shape[-2], b.shape[-1])
        buf = self._buffers.get(name)
        if buf is None or buf.shape != shape or buf.dtype != a.dtype or buf.device != a.device:
            buf = torch.empty(shape, dtype=a.dtype, device=a.device)
            if self.keep:
                self._buffers[name] = buf
        return buf


def relprop_add(
    a: torch.Tensor, b: torch.Tensor, R: torch.Tensor, stabilizer: str = "clamp", total: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Residual a + b: z-rule split, then rescale so that ΣR_a : ΣR_b = |ΣR_a| : |ΣR_b| and ΣR_a + ΣR_b = ΣR.

    The sums run over each sample (every dim but the first); the reference sums over the whole batch, which
    is the same at B = 1. `total` is a + b when the forward already computed it.
    """
    S = safe_divide(R, a + b if total is None else total, stabilizer)
    Ra, Rb = a * S, b * S
    dims = tuple(range(1, R.dim()))
    sa, sb, sR = Ra.sum(dims, keepdim=True), Rb.sum(dims, keepdim=True), R.sum(dims, keepdim=True)
    total = sa.abs() + sb.abs()
    fa = safe_divide(sa.abs(), total, stabilizer) * sR
    fb = safe_divide(sb.abs(), total, stabilizer) * sR
    return Ra * safe_divide(fa, sa, stabilizer), Rb * safe_divide(fb, sb, stabilizer)


def relprop_clone(x: torch.Tensor, *Rs: torch.Tensor, stabilizer: str = "clamp") -> torch.Tensor:
    """A tensor used by several branches: R = x ⊙ Σ_r R_r/x (the z-rule; Σ_r R_r where x ≠ 0)."""
    return x * sum(safe_divide(r, x, stabilizer) for r in Rs)


def relprop_scale(x: torch.Tensor, gamma: torch.Tensor, R: torch.Tensor, stabilizer: str = "clamp") -> torch.Tensor:
    """Elementwise z-rule through y = x ⊙ γ (LayerScale; our extension): R_x = x γ ⊙ R/(x γ)."""
    z = x * gamma
    return z * safe_divide(R, z, stabilizer)
