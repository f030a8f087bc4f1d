"""Routes as index maps on the token axis: a route reorders tokens (gather), a mixer runs along the new order, and
the output goes back to canonical positions (scatter, the inverse).  Several routes (e.g. forward and backward
scans, or VMamba's four directions) are merged by summing their outputs at canonical positions.

Convention: ``index[j]`` is the canonical position of the token at route position j, so
``gather_tokens(x, index)[:, j] = x[:, index[j]]`` and ``scatter_tokens(gather_tokens(x, index), index) == x``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["check_permutation", "invert_permutation", "gather_tokens", "scatter_tokens", "scatter_add_paths"]


def check_permutation(index: Tensor, length: int | None = None) -> None:
    """Raise ValueError unless ``index`` is a 1-D integer permutation of 0..n-1 (and n == length if given)."""
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype.is_complex or index.dtype == torch.bool:
        raise ValueError(f"a route index must be a 1-D integer tensor; got shape {tuple(index.shape)}, {index.dtype}")
    n = index.numel()
    if length is not None and n != length:
        raise ValueError(f"route index has {n} entries but the token axis has length {length}")
    seen = torch.zeros(n, dtype=torch.bool, device=index.device)
    in_range = bool(((index >= 0) & (index < n)).all())
    if in_range:
        seen[index] = True
    if not in_range or not bool(seen.all()):
        bad = sorted(set(range(n)) - set(index.tolist()))[:5]
        raise ValueError(f"route index is not a permutation of 0..{n - 1}: missing positions {bad} "
                         f"(values must be distinct and in [0, {n}))")


def invert_permutation(index: Tensor) -> Tensor:
    """inv with inv[index[j]] = j, so gathering with ``inv`` undoes gathering with ``index``."""
    check_permutation(index)
    inv = torch.empty_like(index)
    inv[index] = torch.arange(index.numel(), dtype=index.dtype, device=index.device)
    return inv


def gather_tokens(x: Tensor, index: Tensor, dim: int = 1) -> Tensor:
    """Reorder the token axis ``dim`` into route order: out.select(dim, j) = x.select(dim, index[j])."""
    check_permutation(index, x.shape[dim])
    return x.index_select(dim, index.to(x.device))


def scatter_tokens(y: Tensor, index: Tensor, dim: int = 1) -> Tensor:
    """Put route-ordered tokens back at canonical positions: the inverse of :func:`gather_tokens`."""
    return y.index_select(dim, invert_permutation(index.to(y.device)))


def scatter_add_paths(ys: Sequence[Tensor], indices: Sequence[Tensor], dim: int = 1) -> Tensor:
    """Sum several route outputs at canonical positions: sum_p scatter_tokens(ys[p], indices[p])."""
    if len(ys) != len(indices) or not ys:
        raise ValueError(f"need one index per path output and at least one path; got {len(ys)} and {len(indices)}")
    out = scatter_tokens(ys[0], indices[0], dim)
    for y, idx in zip(ys[1:], indices[1:]):
        out = out + scatter_tokens(y, idx, dim)
    return out
