"""Multi-path selective scan: the reference for the route-fused kernel.

A route is P paths over the same L canonical tokens; `paths[p, t]` is the canonical position that path p visits at
step t (a permutation of 0..L−1). Each path has its own scan parameters, and all tensors stay in canonical order:

    for each p:  y_p = scatter_p( selective_scan_ref( gather_p(u[:, p]), gather_p(delta[:, p]), A[p],
                                                      gather_p(B[:, p]), gather_p(C[:, p]), D[p], delta_bias[p] ) )
    out = Σ_p y_p   (merge "sum")   or   (1/P) Σ_p y_p   (merge "mean");   out *= silu(z) if z is given

This module materialises the permuted copies on purpose (it is the oracle); `kernels.triton.selective_scan` reads the
permutation inside its loads instead, and `kernels.dispatch.selective_scan_paths` chooses between them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MERGES = ("sum", "mean")


def check_paths_args(u, delta, A, B, C, D=None, z=None, delta_bias=None, paths=None, merge="sum") -> None:
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


def _scan_ref():
    from kernels.selective_scan import selective_scan_ref  # the single-path oracle (another module's job)

    return selective_scan_ref


def selective_scan_paths_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, paths=None,
                             merge="sum"):
    """Reference multi-path scan. u, delta (batch, P, dim, L); B, C (batch, P, N, L); A (P, dim, N); D, delta_bias
    (P, dim); z (batch, dim, L) or None; paths LongTensor (P, L) or None (identity). Returns (batch, dim, L) in u's
    dtype."""
    check_paths_args(u, delta, A, B, C, D, z, delta_bias, paths, merge)
    scan = _scan_ref()
    n_paths, length = u.shape[1], u.shape[-1]
    out = None
    for p in range(n_paths):
        if paths is None:
            idx = inv = None
        else:
            idx = paths[p].to(device=u.device, dtype=torch.long)
            inv = torch.argsort(idx)  # inverse permutation: canonical position -> step
        take = (lambda x: x) if idx is None else (lambda x: x.index_select(-1, idx))
        y = scan(take(u[:, p]), take(delta[:, p]), A[p], take(B[:, p]), take(C[:, p]),
                 D=None if D is None else D[p], z=None,
                 delta_bias=None if delta_bias is None else delta_bias[p], delta_softplus=delta_softplus)
        y = y.float() if y.dtype != torch.float64 else y
        if inv is not None:
            y = y.index_select(-1, inv)
        out = y if out is None else out + y
    if merge == "mean":
        out = out / n_paths
    if z is not None:
        out = out * F.silu(z.to(out.dtype))
    return out.to(u.dtype)


__all__ = ["selective_scan_paths_ref", "check_paths_args", "MERGES"]
