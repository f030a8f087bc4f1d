"""Causal depthwise conv1d + SiLU along each path of a route (Vim's per-path conv), in canonical token order.

    u[:, c] = scatter_c( SiLU( causal_dwconv1d( gather_c(x), weight[c], bias[c] ) ) )     for each conv c

x (B, L, E) canonical; weight (Pc, E, K); bias (Pc, E) or None; paths (Pc, L) with paths[c, t] the canonical position
path c visits at step t. Returns (B, Pc, L, E). The reference materialises the gathered copies (it is the oracle, and
the CPU path); `kernels.triton.path_conv` reads through the permutation instead. `causal_conv1d_paths` picks: the
Triton kernel for CUDA tensors (or when named, e.g. under Triton's CPU interpreter in tests), else the reference.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

BACKENDS = ("auto", "triton", "reference")


def causal_conv1d_paths_ref(x: Tensor, weight: Tensor, bias: Tensor | None, paths: Tensor) -> Tensor:
    """The gather → conv1d → SiLU → scatter composition (see the module docstring)."""
    length, n_conv, k = x.shape[1], weight.shape[0], weight.shape[-1]
    weight = weight.to(x.dtype)  # what autocast does for F.conv1d; the Triton kernel reads fp32 weights as they are
    bias = None if bias is None else bias.to(x.dtype)
    outs = []
    for c in range(n_conv):
        idx = paths[c].to(device=x.device, dtype=torch.long)
        y = F.conv1d(x.index_select(1, idx).transpose(1, 2), weight[c].unsqueeze(1),
                     None if bias is None else bias[c], padding=k - 1, groups=x.shape[-1])
        outs.append(F.silu(y[..., :length]).transpose(1, 2).index_select(1, torch.argsort(idx)))
    return torch.stack(outs, 1)


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def causal_conv1d_paths(x: Tensor, weight: Tensor, bias: Tensor | None, paths: Tensor,
                        backend: str = "auto") -> Tensor:
    """Route-ordered causal conv + SiLU with `causal_conv1d_paths_ref`'s contract; `backend` "auto" takes the
    Triton kernel on CUDA (its output memory is (Pc, B, L, E), so a batched matmul over paths needs no copy)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    use_triton = backend == "triton" or (backend == "auto" and x.is_cuda)
    if use_triton and (x.is_cuda or _interpreter_on()):
        from kernels.triton.path_conv import causal_conv1d_paths_triton

        return causal_conv1d_paths_triton(x, weight, bias, paths)
    if backend == "triton":
        raise ValueError("the Triton conv needs a CUDA tensor (or TRITON_INTERPRET=1 on the CPU)")
    return causal_conv1d_paths_ref(x, weight, bias, paths)


__all__ = ["causal_conv1d_paths", "causal_conv1d_paths_ref"]
