r"""Orthonormal 2-D DCT-II and GlobalMamba's anti-diagonal low-pass masks.

DCT-II, orthonormal, length n:  X[k] = s_k * sum_j x[j] cos(pi (2j + 1) k / (2n)),  s_0 = sqrt(1/n), s_k = sqrt(2/n).
As a matrix M (n x n) it is orthogonal, so the inverse is M^T and Parseval holds.  The 2-D transform over the last
two dims is M_h X M_w^T; we apply it as two matmuls with a cached M per (n, dtype, device), which on CPU and GPU is
faster than an FFT-based DCT for image sizes (<= 224) and exact in float64.  GlobalMamba uses an unnormalised DCT,
but any consistently paired DCT/IDCT gives the same band images because the masks are binary.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

__all__ = ["dct_matrix", "dct2", "idct2", "anti_diagonal_lowpass_masks"]


@lru_cache(maxsize=32)
def _dct_matrix_cached(n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    j = torch.arange(n, dtype=torch.float64)
    k = j[:, None]
    mat = torch.cos(math.pi * (2 * j[None, :] + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    mat[0] /= math.sqrt(2.0)
    return mat.to(dtype=dtype, device=device)  # built in float64, then cast: one rounding


def dct_matrix(n: int, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
    """Orthonormal DCT-II matrix M (n x n): rows are frequencies, ``M @ x`` transforms a column vector."""
    if n < 1:
        raise ValueError(f"DCT length must be >= 1; got {n}")
    device = torch.device(device if device is not None else "cpu")
    if torch.compiler.is_compiling():  # under torch.export / compile the tensor is a trace value: never cache it
        return _dct_matrix_cached.__wrapped__(n, dtype, device)
    return _dct_matrix_cached(n, dtype, device)


def _matrices(x: Tensor) -> tuple[Tensor, Tensor]:
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(f"dct2/idct2 need a floating tensor with >= 2 dims; got {tuple(x.shape)} {x.dtype}")
    return dct_matrix(x.shape[-2], x.dtype, x.device), dct_matrix(x.shape[-1], x.dtype, x.device)


def dct2(x: Tensor) -> Tensor:
    """Orthonormal 2-D DCT-II over the last two dims (..., H, W) -> (..., H, W); differentiable."""
    m_h, m_w = _matrices(x)
    return m_h @ x @ m_w.T


def idct2(x: Tensor) -> Tensor:
    """Exact inverse of :func:`dct2` (the transposes of the same orthogonal matrices)."""
    m_h, m_w = _matrices(x)
    return m_h.T @ x @ m_w


def anti_diagonal_lowpass_masks(size: int, bands: int, device: torch.device | str | None = None) -> Tensor:
    """GlobalMamba's cumulative low-pass masks, (bands, size, size) bool.

    Band k = 1..K-1 keeps frequencies (u, v) with u + v <= size / 2^(K-1-k) - 1 (an upper-left triangle, its
    anti-diagonal included); band K keeps everything.  For size 224, K = 4 the kept counts are
    1596 / 6328 / 25200 / 50176.
    """
    if bands < 1 or size < 1:
        raise ValueError(f"size and bands must be >= 1; got size={size}, bands={bands}")
    if size % 2 ** (bands - 1):
        raise ValueError(f"size={size} must be divisible by 2^(bands-1)={2 ** (bands - 1)} so every cut-off is whole")
    idx = torch.arange(size, device=device)
    radius = idx[:, None] + idx[None, :]  # u + v
    cuts = [size // 2 ** (bands - 1 - k) - 1 for k in range(1, bands)]
    masks = [radius <= c for c in cuts] + [torch.ones(size, size, dtype=torch.bool, device=device)]
    return torch.stack(masks)
