"""Multi-path selective scan: the reference for the route-fused kernel.

A route is P paths over the same L canonical tokens; `paths[p, t]` is the canonical position that path p visits at
step t (a permutation of 0..L−1). Each path has its own scan parameters, and all tensors stay in canonical order:

    for each p:  y_p = scatter_p( selective_scan_ref( gather_p(u[:, p]), gather_p(delta[:, p]), A[p],
                                                      gather_p(B[:, p]), gather_p(C[:, p]), D[p], delta_bias[p] ) )
                 (computed as one grouped scan over P·dim channels: path p is B/C group p)
    out = Σ_p y_p   (merge "sum")   or   (1/P) Σ_p y_p   (merge "mean");   out *= silu(z) if z is given

This module materialises the permuted copies on purpose (it is the oracle); `kernels.triton.selective_scan` reads the
permutation inside its loads instead, and `kernels.dispatch.selective_scan_paths` chooses between them. While
`torch.export` traces (ONNX export), each path runs `selective_scan_segsum`, the same math without Python loops, so
the exported graph has a fixed size per scan instead of one that grows with the sequence (nas/export_onnx.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from kernels.selective_scan import selective_scan_ref, selective_scan_segsum

MERGES = ("sum", "mean")


def check_paths_args(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                     z: Tensor | None = None, delta_bias: Tensor | None = None, paths: Tensor | None = None,
                     merge: str = "sum") -> None:
    """Validate shapes of a multi-path scan call; raise ValueError naming the bad argument and what is allowed."""
    if u.dim() != 4:
        raise ValueError(f"u must be (batch, P, dim, L); got shape {tuple(u.shape)}")
    bsz, n_paths, dim, length = u.shape
    expect = {
        "delta": (delta, (bsz, n_paths, dim, length)),
        "A": (A, (n_paths, dim, A.shape[-1])),
        "B": (B, (bsz, n_paths, A.shape[-1], length)),
        "C": (C, (bsz, n_paths, A.shape[-1], length)),
        "D": (D, (n_paths, dim)),
        "delta_bias": (delta_bias, (n_paths, dim)),
        "z": (z, (bsz, dim, length)),
        "paths": (paths, (n_paths, length)),
    }
    for name, (tensor, shape) in expect.items():
        if tensor is not None and tuple(tensor.shape) != shape:
            raise ValueError(f"{name} must have shape {shape} for u of shape {tuple(u.shape)}; "
                             f"got {tuple(tensor.shape)}")
    if merge not in MERGES:
        raise ValueError(f"merge must be one of {MERGES}; got {merge!r}")
    if paths is not None and paths.dtype.is_floating_point:
        raise ValueError(f"paths must be an integer tensor of positions; got dtype {paths.dtype}")


def selective_scan_paths_ref(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                             z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                             paths: Tensor | None = None, merge: str = "sum") -> Tensor:
    """Reference multi-path scan. u, delta (batch, P, dim, L); B, C (batch, P, N, L); A (P, dim, N); D, delta_bias
    (P, dim); z (batch, dim, L) or None; paths LongTensor (P, L) or None (identity). Returns (batch, dim, L) in u's
    dtype."""
    check_paths_args(u, delta, A, B, C, D, z, delta_bias, paths, merge)
    bsz, n_paths, dim, length = u.shape
    scan = selective_scan_segsum if torch.compiler.is_exporting() else selective_scan_ref
    idx = None if paths is None else paths.to(device=u.device, dtype=torch.long)  # (P, L)

    def along(x: Tensor, index: Tensor | None) -> Tensor:  # (batch, P, C, L): each path's slice reordered by its index
        return x if index is None else x.gather(-1, index[None, :, None, :].expand(x.shape))

    # All paths in one scan: path p's channels are block p of P·dim channels, and its B, C are B/C group p.
    y = scan(along(u, idx).reshape(bsz, n_paths * dim, length), along(delta, idx).reshape(bsz, n_paths * dim, length),
             A.reshape(n_paths * dim, -1), along(B, idx), along(C, idx),
             D=None if D is None else D.reshape(-1), z=None,
             delta_bias=None if delta_bias is None else delta_bias.reshape(-1), delta_softplus=delta_softplus)
    y = y.reshape(bsz, n_paths, dim, length)
    y = y.float() if y.dtype != torch.float64 else y
    y = along(y, None if idx is None else torch.argsort(idx, dim=-1))  # back to canonical positions
    out = y.sum(1) if merge == "sum" else y.mean(1)
    if z is not None:
        out = out * F.silu(z.to(out.dtype))
    return out.to(u.dtype)


def selective_scan_paths_copies(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                                z: Tensor | None = None, delta_bias: Tensor | None = None,
                                delta_softplus: bool = False, paths: Tensor | None = None,
                                merge: str = "sum") -> Tensor:
    """The unfused composition every public codebase uses, on mamba-ssm's CUDA kernel: permuted copies, one
    `selective_scan_fn` call a path, merge (dispatch's "mamba_ssm" backend of `selective_scan_paths`)."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # CUDA-only, optional

    out = None
    for p in range(u.shape[1]):
        idx = None if paths is None else paths[p].to(device=u.device, dtype=torch.long)
        take = (lambda x: x.contiguous()) if idx is None else (lambda x: x.index_select(-1, idx))
        y = selective_scan_fn(take(u[:, p]), take(delta[:, p]), A[p].float(), take(B[:, p]), take(C[:, p]),
                              None if D is None else D[p].float(), None if z is None else take(z),
                              None if delta_bias is None else delta_bias[p].float(), delta_softplus)
        if idx is not None:
            y = y.index_select(-1, torch.argsort(idx))
        out = y if out is None else out + y
    return out / u.shape[1] if merge == "mean" else out


__all__ = ["MERGES", "check_paths_args", "selective_scan_paths_copies", "selective_scan_paths_ref"]
