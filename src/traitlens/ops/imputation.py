"""ROAD's noisy linear imputation (metrics.md §1.4): fill removed pixels from their neighbours, then add noise.

Two solvers of the same linear system: batched conjugate gradients on the device ('cg', the default) and SciPy's
sparse LU per image ('direct', optional dependency). Pure tensor code, usable by every layer.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["noisy_linear_impute"]

log = logging.getLogger(__name__)

_ROAD_KERNEL = ((1 / 12, 1 / 6, 1 / 12), (1 / 6, 0.0, 1 / 6), (1 / 12, 1 / 6, 1 / 12))


def noisy_linear_impute(
    images: torch.Tensor,
    removed: torch.Tensor,
    *,
    noise: float = 0.01,
    solver: str = "cg",
    tol: float = 1e-6,
    max_iter: int = 1000,
    generators: Sequence[torch.Generator] | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """ROAD's noisy linear imputation (metrics.md §1.4) of `removed` pixels ([N,H,W] bool) in `images` [N,C,H,W].

    Each removed pixel equals the weighted mean of its in-image 8-neighbours (1/6 edge, 1/12 diagonal, renormalised
    over the neighbours inside the image); all removed pixels of a channel are solved jointly. Multiplying each row
    by its normaliser Z_i gives the symmetric, diagonally dominant system (Z − W_UU) x_U = W_UK x_K, positive definite
    whenever a pixel is kept, which CG solves batched on the device ('cg', tol relative to ‖b‖) or SciPy's sparse LU
    per image ('direct', on the CPU). Then N(0, noise²) is added to each imputed value.

    Noise: image n draws one [C,H,W] float64 `randn` from `generators[n]` (seeded per image, so it does not depend
    on batching; the global RNG when not given). `generator` instead draws the whole batch's noise at once, as one
    [N,C,H,W] `randn` in the images' dtype (the convention of Prompt-CAM's trait removal, models.md §1.6).
    """
    if generators is not None and generator is not None:
        raise ValueError("pass generators= (one per image) or generator= (one per batch), not both")
    N, C, H, W = images.shape
    x = images.double()
    U = removed.to(x.device).bool().view(N, 1, H, W)
    if solver == "direct":
        sol = _impute_direct(x, U)
    elif solver == "cg":
        sol = _impute_cg(x, U, tol, max_iter)
    else:
        raise ValueError(f"unknown solver '{solver}'; choose 'cg' or 'direct'")
    if noise:
        if generator is not None:
            eps = torch.randn(images.shape, generator=generator, dtype=images.dtype).to(x)
        else:
            gens: Sequence[torch.Generator | None] = generators or [None] * N
            eps = torch.stack([torch.randn((C, H, W), generator=g, dtype=torch.float64) for g in gens]).to(x.device)
        sol = sol + noise * eps
    return torch.where(U, sol, x).to(images.dtype)


def _impute_cg(x: torch.Tensor, U: torch.Tensor, tol: float, max_iter: int) -> torch.Tensor:
    N, C, H, W = x.shape
    kern = torch.tensor(_ROAD_KERNEL, dtype=torch.float64, device=x.device).view(1, 1, 3, 3).expand(C, 1, 3, 3)
    Uf = U.double().expand(N, C, H, W)

    def conv(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, kern, padding=1, groups=C)  # zero padding = neighbours outside the image do not count

    Z = conv(torch.ones(1, C, H, W, dtype=torch.float64, device=x.device))

    def A(v: torch.Tensor) -> torch.Tensor:
        return Uf * (Z * v - conv(Uf * v))

    b = Uf * conv((1 - Uf) * x)
    # Start from a push-pull (pyramid) fill: CG is slow on exactly the smooth, low-frequency error modes that a
    # coarse-to-fine fill already gets right, so this cuts the iteration count on large holes several-fold.
    v = Uf * _push_pull(x, 1 - U.double())
    r = b - A(v)
    p = r.clone()
    rs = (r * r).sum((-2, -1), keepdim=True)
    b_norm = (b * b).sum((-2, -1), keepdim=True).sqrt().clamp_min(1e-300)
    it = 0
    for it in range(max_iter):  # noqa: B007 (reported below)
        if bool(((rs.sqrt() / b_norm) <= tol).all()):
            break
        Ap = A(p)
        pAp = (p * Ap).sum((-2, -1), keepdim=True)
        alpha = torch.where(pAp > 0, rs / torch.where(pAp > 0, pAp, torch.ones_like(pAp)), torch.zeros_like(pAp))
        v = v + alpha * p
        r = r - alpha * Ap
        rs_new = (r * r).sum((-2, -1), keepdim=True)
        beta = torch.where(rs > 0, rs_new / torch.where(rs > 0, rs, torch.ones_like(rs)), torch.zeros_like(rs))
        p = r + beta * p
        rs = rs_new
    else:
        log.warning("ROAD CG did not reach tol %.1e in %d iterations (worst residual %.2e)", tol, max_iter,
                    float((rs.sqrt() / b_norm).max()))
    log.debug("ROAD CG stopped after %d iterations", it)
    return v


def _push_pull(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown pixels of x [N,C,H,W] (known [N,1,H,W] in {0,1}) from a coarse-to-fine weighted pyramid."""
    H, W = x.shape[-2:]
    if H <= 2 or W <= 2:
        w = known.sum((-2, -1), keepdim=True)
        mean = (x * known).sum((-2, -1), keepdim=True) / w.clamp_min(1e-12)
        return torch.where(known > 0, x, mean.expand_as(x))
    xs = F.avg_pool2d(x * known, 2, ceil_mode=True)
    ws = F.avg_pool2d(known, 2, ceil_mode=True)
    coarse = xs / ws.clamp_min(1e-12)
    filled = _push_pull(coarse, (ws > 0).to(x.dtype))
    up = F.interpolate(filled, size=(H, W), mode="bilinear", align_corners=False)
    return torch.where(known > 0, x, up)


def _impute_direct(x: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    try:
        import numpy as np
        import scipy.sparse as sp
        from scipy.sparse.linalg import spsolve
    except ImportError as err:  # SciPy is optional: 'cg' needs nothing
        raise ImportError("solver='direct' needs SciPy (pip install scipy); solver='cg' does not") from err
    N, C, H, W = x.shape
    out = torch.zeros_like(x)
    xn = x.cpu().numpy()
    offsets = [(dy, dx, _ROAD_KERNEL[dy + 1][dx + 1]) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    for n in range(N):
        mask = U[n, 0].cpu().numpy()
        ys, xs = np.nonzero(mask)
        if ys.size == 0:
            continue
        pos = -np.ones((H, W), dtype=np.int64)
        pos[ys, xs] = np.arange(ys.size)
        rows, cols, vals = [], [], []
        diag = np.zeros(ys.size)
        rhs = np.zeros((ys.size, C))
        for dy, dx, w in offsets:
            ny, nx = ys + dy, xs + dx
            inside = (ny >= 0) & (ny < H) & (nx >= 0) & (nx < W)
            diag[inside] += w
            ii = np.nonzero(inside)[0]
            unknown = pos[ny[ii], nx[ii]]
            is_u = unknown >= 0
            rows.append(ii[is_u])
            cols.append(unknown[is_u])
            vals.append(np.full(is_u.sum(), -w))
            kept = ii[~is_u]
            rhs[kept] += w * xn[n][:, ny[kept], nx[kept]].T
        A = sp.csr_matrix((np.concatenate([diag, *vals]),
                           (np.concatenate([np.arange(ys.size), *rows]), np.concatenate([np.arange(ys.size), *cols]))),
                          shape=(ys.size, ys.size))
        sol = spsolve(A.tocsc(), rhs)
        sol = sol.reshape(ys.size, C)
        out[n][:, ys, xs] = torch.from_numpy(np.ascontiguousarray(sol.T)).to(out)
    return out
