"""Route-fused selective scan (Mamba-1 SSM) in Triton, forward and backward.

Math (per batch b, path p, channel d, state n; t is the *step* along path p, and pos = paths[p, t] is the canonical
token it visits):

    Δ_t     = softplus(δ[pos] + bias_d)          (or δ[pos] + bias_d without softplus)
    a_t     = exp(Δ_t · A[d, n])                 (computed as exp2(Δ_t · A·log2 e))
    h_t     = a_t · h_{t-1} + Δ_t · B_t[n] · u_t  (h_{-1} = 0, fp32)
    y_t     = Σ_n C_t[n] · h_t[n] + D_d · u_t
    out[pos] += scale · y_t · silu(z[pos])        (scale = 1 for merge "sum", 1/P for "mean")

The permutation is applied in the kernel's loads and stores: u[b, p, d, pos], not a permuted copy. Every path of a
route runs in the same launch: one program per (batch, channel block) walks the paths in turn, adding each path's
output into an fp32 buffer and writing the merged result in the output dtype on the last path (no atomics, no
zero-fill, no cast pass; deterministic). Because the gate is per position it distributes over the path sum, so each
path applies it before adding and no second pass over the output is needed. Paths write disjoint slices of their own
per-path gradients; dz is merged the same way.

Inside a program the sequence is processed in chunks of T steps; a chunk is one `tl.associative_scan` of the pairs
(a_t, Δ_t B_t u_t) under (a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2), seeded with the carried state. The forward keeps the
state at every chunk start (fp32, (batch, P, chunks, dim, N)) so the backward can recompute h chunk by chunk.

Backward (adjoint g_t = ∂loss/∂h_t, dy_t = scale · dout[pos] · silu(z[pos])):

    g_t    = C_t dy_t + a_{t+1} g_{t+1}          (a reverse associative scan, a_{t+1} loaded with shifted indices)
    du_t   = Δ_t Σ_n g_t B_t + D dy_t
    dΔ_t   = u_t Σ_n g_t B_t + Σ_n g_t A (h_t − Δ_t B_t u_t)        (a_t h_{t-1} = h_t − Δ_t B_t u_t: no division)
    dA     = Σ_t g_t Δ_t (h_t − Δ_t B_t u_t),   dB_t = Σ_d g_t Δ_t u_t,   dC_t = Σ_d dy_t h_t,   dD = Σ_t dy_t u_t
    dz     = scale · dout · y · silu'(z)

dB, dC, dA, dD, dbias and dz are sums over programs and use fp32 atomics. The gradients of u and Δ (and the fp32
dB, dC buffers) are laid out like the inputs: channel-last memory in, channel-last gradients out (ScanConfig).
"""

from __future__ import annotations

from typing import Any

import torch
import triton

from .scan_config import (BWD_CANDIDATES, BWD_GRID_CANDIDATES, ScanConfig, _channel_last,  # noqa: F401
                          _chunk_default, _common_args, _empty_like_layout, backward_tiles, bc_vector_width,
                          check_lane_hint, default_config, lane_bwd_fills)
from .selective_scan_chunk import _scan_bwd_kernel, _scan_fwd_kernel
from .selective_scan_lane import launch_lane_fwd
from .selective_scan_lane_bwd import launch_lane_bwd
from .selective_scan_seq import _scan_bwd_seq_kernel, _scan_fwd_seq_kernel

LOG2E = 1.4426950408889634


def _default_for(u: torch.Tensor, n_state: int) -> ScanConfig:
    """`default_config` for u's (batch, paths, dim, L); forward and backward must agree on it (the checkpoints'
    stretch and layout), and it depends on whether the lane backward's programs fill the GPU (whole, else in
    sequence segments: the same test `backward_tiles` makes)."""
    bsz, n_paths, dim, _ = u.shape
    return default_config(n_state, dim, n_paths, lane_bwd_fills(bsz * n_paths * triton.cdiv(dim, 32), u.device))


def _runs_lane_backward(cfg: ScanConfig, u: torch.Tensor, n_state: int) -> bool:
    """Whether the backward of `cfg` on u's (batch, paths, dim, L) is the lane kernel (`backward_tiles` decides, as in
    scan_paths_bwd). With lane_hint "channels" the forward needs it: it writes the checkpoints in (NP, dim) memory for
    the lane backward and in (dim, NP) memory for the chunk backward."""
    bsz, n_paths, dim, _ = u.shape
    return backward_tiles(cfg, n_state, bsz * n_paths * triton.cdiv(dim, 32), u.device)[0].bwd == "lane"


def _unit_channel_stride(A: torch.Tensor) -> torch.Tensor:
    """A (P, dim, N) with the channels at unit stride: lane_hint "channels" reads it so (selective_scan_lane.py)."""
    return A.transpose(-1, -2).contiguous().transpose(-1, -2)


def scan_paths_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                   D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                   paths: torch.Tensor | None, softplus: bool, scale: float, save_states: bool, save_last: bool = False,
                   config: ScanConfig | tuple | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Launch the forward; returns (out in u's dtype, checkpoint states or None, last state or None)."""
    bsz, n_paths, dim, length = u.shape
    n_state = A.shape[-1]
    np2 = triton.next_power_of_2(n_state)
    cfg = ScanConfig(*config) if config else _default_for(u, n_state)
    if cfg.variant not in ("seq", "chunk", "lane"):
        raise ValueError(f"variant must be 'seq', 'chunk' or 'lane', got {cfg.variant!r}")
    check_lane_hint(cfg)
    hints = cfg.lane_hint == "channels"
    hs_nmajor = save_states and _runs_lane_backward(cfg, u, n_state) and hints  # also checks the backward's fields
    if hs_nmajor and cfg.variant == "seq":
        raise ValueError("the lane backward reads the lane or chunk forward's checkpoints, not the seq variant's")
    if cfg.variant == "lane":
        if save_last:
            raise ValueError("the lane variant does not return the last state; use 'chunk' or 'seq'")
        a_lane = _unit_channel_stride(A) if hints else A
        out, hs = launch_lane_fwd(u, delta, a_lane, B, C, D, z, delta_bias, paths, softplus, scale, save_states, cfg,
                                  _common_args(u, delta, a_lane, B, C, D, z, delta_bias, paths), _empty_like_layout,
                                  _channel_last, bc_vector_width(B, C), hs_nmajor, hints)
        return out, hs, None
    nchunk = triton.cdiv(length, cfg.steps)
    seq = cfg.variant == "seq"
    path_loop = not seq and n_paths > 1  # chunk kernel: one program per (batch, channels) walks every path
    atomic = n_paths > 1 and not path_loop
    out = _empty_like_layout((bsz, dim, length), u, torch.float32 if atomic else u.dtype, atomic,
                             _channel_last(delta))
    acc = _empty_like_layout((bsz, dim, length), u, torch.float32, False, _channel_last(delta)) if path_loop else out
    f32 = torch.float32
    hs = torch.empty((bsz, n_paths, nchunk, dim, np2), device=u.device, dtype=f32) if save_states else out
    last = torch.empty((bsz, n_paths, dim, np2), device=u.device, dtype=f32) if save_last else out
    dummy = out
    grid = (bsz, triton.cdiv(dim, cfg.bd), 1 if path_loop else n_paths)
    kernel = _scan_fwd_seq_kernel if seq else _scan_fwd_kernel
    extra = {} if seq else dict(PATH_LOOP=path_loop, HS_NMAJOR=hs_nmajor)
    kernel[grid](
        u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy,
        z if z is not None else dummy, paths if paths is not None else dummy, out, hs, last,
        *(() if seq else (acc,)), length, dim, nchunk, float(scale), *(() if seq else (n_paths,)),
        *_common_args(u, delta, A, B, C, D, z, delta_bias, paths), *out.stride(),
        N=n_state, NP=np2, BD=cfg.bd, T=cfg.steps,
        HAS_D=D is not None, HAS_DTB=delta_bias is not None, HAS_Z=z is not None, SOFTPLUS=bool(softplus),
        HAS_PATHS=paths is not None, ATOMIC=atomic, SAVE_STATES=save_states, SAVE_LAST=save_last,
        num_warps=cfg.warps, **extra,
    )
    return out.to(u.dtype), (hs if save_states else None), (last[..., :n_state] if save_last else None)


def scan_paths_bwd(dout: torch.Tensor, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                   C: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                   paths: torch.Tensor | None, softplus: bool, scale: float, hs: torch.Tensor,
                   config: ScanConfig | tuple | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                              torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Launch the backward; returns the gradients of (u, delta, A, B, C, D, z, delta_bias) (None where absent)."""
    bsz, n_paths, dim, length = u.shape
    n_state = A.shape[-1]
    np2 = triton.next_power_of_2(n_state)
    cfg = ScanConfig(*config) if config else _default_for(u, n_state)
    nchunk = triton.cdiv(length, cfg.steps)
    if hs.shape[2] != nchunk:
        raise RuntimeError("checkpoint states were saved with another stretch length; pass the forward's config")
    seq = cfg.variant == "seq"
    cfg, bd, warps = backward_tiles(cfg, n_state, bsz * n_paths * triton.cdiv(dim, 32), u.device)
    if cfg.grad_layout not in ("auto", "input", "channel_first"):
        raise ValueError(f"grad_layout must be 'auto', 'input' or 'channel_first', got {cfg.grad_layout!r}")
    follow = cfg.grad_layout in ("input", "auto")
    dev, f32 = u.device, torch.float32
    cl = follow and _channel_last(delta)
    du = _empty_like_layout((bsz, n_paths, dim, length), u, u.dtype, False, cl)
    ddt = _empty_like_layout((bsz, n_paths, dim, length), u, delta.dtype, False, cl)
    db = _empty_like_layout((bsz, n_paths, np2, length), u, f32, True, follow and _channel_last(B))
    dc = _empty_like_layout((bsz, n_paths, np2, length), u, f32, True, follow and _channel_last(B))
    lane = cfg.bwd == "lane"
    hints = lane and cfg.lane_hint == "channels"
    if hints:  # A read and dA added with the channels at unit stride (selective_scan_lane_bwd.py)
        A_k = _unit_channel_stride(A)
        da = torch.zeros((n_paths, np2, dim), device=dev, dtype=f32).transpose(1, 2)
    else:
        A_k, da = A, torch.zeros((n_paths, dim, np2), device=dev, dtype=f32)
    dd = torch.zeros((n_paths, dim), device=dev, dtype=f32)
    ddtb = torch.zeros((n_paths, dim), device=dev, dtype=f32)
    if cfg.bwd_paths not in ("loop", "grid"):
        raise ValueError(f"bwd_paths must be 'loop' or 'grid', got {cfg.bwd_paths!r}")
    path_loop = not seq and n_paths > 1 and cfg.bwd_paths == "loop" and cfg.bwd == "chunk"
    atomic_z = n_paths > 1 and not path_loop
    dz = dzacc = None
    if z is not None:
        dz = _empty_like_layout(tuple(z.shape), z, f32 if atomic_z else z.dtype, atomic_z, _channel_last(z))
        if tuple(dz.stride()) != tuple(z.stride()):  # Z and DZ share strides in the kernels
            z, dz = z.contiguous(), dz.contiguous()
        dzacc = torch.empty_like(dz, dtype=f32) if path_loop else dz
    grid = (bsz, triton.cdiv(dim, bd), 1 if path_loop else n_paths)
    dummy = da
    strides = (*_common_args(u, delta, A_k, B, C, D, z, delta_bias, paths), *dout.stride())
    opts = dict(N=n_state, NP=np2, BD=bd, T=cfg.steps, HAS_D=D is not None, HAS_DTB=delta_bias is not None,
                HAS_Z=z is not None, SOFTPLUS=bool(softplus), HAS_PATHS=paths is not None, ATOMIC_Z=atomic_z,
                num_warps=warps)
    inputs = (u, delta, A_k, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy,
              z if z is not None else dummy, paths if paths is not None else dummy, dout, hs)
    outs = (du, ddt, da, db, dc, dd, ddtb, dz if dz is not None else dummy)
    if lane:
        flags = {k: v for k, v in opts.items() if k not in ("T", "BD", "num_warps")}
        launch_lane_bwd(inputs, outs, length, dim, nchunk, scale, n_paths, (*strides, *du.stride(), *db.stride()),
                        flags, cfg.steps, cfg.bwd_tile, bd, warps, bc_vector_width(B, C), cfg.bwd_red,
                        cfg.bwd_bc == "partial", hints, cfg.bwd_bc == "scatter", cfg.bwd_segments, cfg.bwd_regs)
    elif seq:
        scratch = torch.empty((grid[0] * grid[1] * grid[2], cfg.steps, bd, np2), device=dev, dtype=f32)
        _scan_bwd_seq_kernel[grid](*inputs[:-1], hs, scratch, *outs, length, dim, nchunk, float(scale), *strides,
                                   *du.stride(), *db.stride(), **opts)
    else:
        _scan_bwd_kernel[grid](*inputs, *outs, dzacc if dzacc is not None else dummy, length, dim, nchunk,
                               float(scale), n_paths, *strides, *du.stride(), *db.stride(), PATH_LOOP=path_loop,
                               **opts)
    return (du, ddt, da[..., :n_state].to(A.dtype), db[:, :, :n_state].to(B.dtype), dc[:, :, :n_state].to(C.dtype),
            dd.to(D.dtype) if D is not None else None, dz.to(z.dtype) if dz is not None else None,
            ddtb.to(delta_bias.dtype) if delta_bias is not None else None)


class SelectiveScanPaths(torch.autograd.Function):
    """Autograd wrapper; tensors as in `kernels.route_scan.selective_scan_paths_ref`, paths as int32 (P, L) or None."""

    @staticmethod
    def forward(ctx: Any, u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                paths: torch.Tensor | None, softplus: bool, scale: float,
                config: ScanConfig | tuple | None = None) -> torch.Tensor:
        need_grad = any(ctx.needs_input_grad[:8])
        # the tile choice is made once, here: the backward reads this forward's checkpoints, so it takes the same
        # config even where the default's inputs (e.g. `lane_defaults`) changed in between
        config = ScanConfig(*config) if config else _default_for(u, A.shape[-1])
        out, hs, _ = scan_paths_fwd(u, delta, A, B, C, D, z, delta_bias, paths, softplus, scale, save_states=need_grad,
                                    config=config)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, paths, hs)
        ctx.softplus, ctx.scale, ctx.config = softplus, scale, config
        return out

    @staticmethod
    def backward(ctx: Any, dout: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        u, delta, A, B, C, D, z, delta_bias, paths, hs = ctx.saved_tensors
        grads = scan_paths_bwd(dout, u, delta, A, B, C, D, z, delta_bias, paths, ctx.softplus, ctx.scale, hs,
                               config=ctx.config)
        du, ddt, da, db, dc, dd, dz, ddtb = grads
        return du, ddt, da, db, dc, dd, dz, ddtb, None, None, None, None


def selective_scan_paths_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor,
                                C: torch.Tensor, D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                                delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                                paths: torch.Tensor | None = None, merge: str = "sum", *,
                                config: ScanConfig | tuple | None = None) -> torch.Tensor:
    """Same contract as `kernels.route_scan.selective_scan_paths_ref`; one launch for all paths. `config` = a
    `ScanConfig` or its tuple ("seq"|"chunk", channels, steps, warps[, bwd channels, bwd warps, grad layout])
    overrides the tile choice (benchmark sweeps)."""
    n_paths = u.shape[1]
    scale = 1.0 if merge == "sum" else 1.0 / n_paths
    if paths is not None:
        paths = paths.to(device=u.device, dtype=torch.int32).contiguous()
    A = A.float()  # fp32 state: A is always read in fp32
    return SelectiveScanPaths.apply(u, delta, A, B, C, D, z, delta_bias, paths, bool(delta_softplus), scale, config)


def selective_scan_triton(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                          D: torch.Tensor | None = None, z: torch.Tensor | None = None,
                          delta_bias: torch.Tensor | None = None, delta_softplus: bool = False,
                          return_last_state: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """`selective_scan_ref` semantics for one path: u (batch, dim, L), B/C (batch, N, L) or (batch, 1, N, L)."""
    if B.dim() == 4:
        B, C = B[:, 0], C[:, 0]
    args = (u.unsqueeze(1), delta.unsqueeze(1), A.float().unsqueeze(0), B.unsqueeze(1), C.unsqueeze(1),
            D.unsqueeze(0) if D is not None else None, z,
            delta_bias.unsqueeze(0) if delta_bias is not None else None)
    out = SelectiveScanPaths.apply(*args, None, bool(delta_softplus), 1.0)
    if not return_last_state:
        return out
    with torch.no_grad():
        _, _, last = scan_paths_fwd(*args, None, bool(delta_softplus), 1.0, save_states=False, save_last=True)
    return out, last[:, 0]


__all__ = ["selective_scan_paths_triton", "selective_scan_triton", "SelectiveScanPaths", "ScanConfig", "LOG2E",
           "BWD_CANDIDATES", "BWD_GRID_CANDIDATES", "default_config"]
