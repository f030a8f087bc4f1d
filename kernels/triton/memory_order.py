"""Allocating outputs and gradients in the memory order of the tensors they belong to (the kernels take strides)."""

from __future__ import annotations

import torch


def like_layout(x: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """An empty tensor of x's shape whose memory orders the dimensions as x's strides do (x may be a view into a wider
    buffer, e.g. q in a [q k] GEMM output): a (b, h, L, d) view of (b, L, h, d) memory gives (b, L, h, d) memory, so
    the caller's reshape back to (b, L, h·d) is a view and not a copy."""
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), -d))  # outermost first; ties keep the logical order
    out = torch.empty([x.shape[d] for d in order], device=x.device, dtype=dtype or x.dtype)
    return out.permute([order.index(d) for d in range(x.dim())])


__all__ = ["like_layout"]
