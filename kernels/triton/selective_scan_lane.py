"""Lane-owned variant of the route-fused selective-scan forward (same math as `selective_scan.py`, read that docstring).

Why a third variant: the chunked kernel spends most of its instructions on `tl.associative_scan` over (BD, N, T) tiles
(log2 T shuffle rounds and layout conversions per element), the step-sequential one on Σ_n across lanes and on loads
that wait behind every step's store. Here one *lane* owns one channel and all N of its states, in registers:

    state h (NP, BD) with NP inside the thread and BD = 32 · warps channels across lanes (with BD < 32 per warp,
    Triton spreads the N states of a channel over 32 / BD lanes: fewer states per thread, more threads, and a
    Σ_n that ends in log2(32 / BD) shuffle rounds);
    a step is N exp2, 2N FMAs and an in-thread Σ_n — no shared memory, no layout conversion;
    T steps are unrolled with no store in between (y is kept in a (T, BD) register tile and stored once), so the
    loads of the T steps issue together and their latency is paid once per tile, not once per step.

The lane-per-channel layout is not something a Triton kernel can name: Triton derives a tensor's layout from the
(NP, BD) memory accesses it feeds from, each laid out to coalesce. Strides are not specialised (`do_not_specialize`),
so a unit stride along the states cannot make Triton vectorise there. That is enough for Triton 3.8, not for Triton
3.6 (the GPU machine's): it spreads a channel's states over 4 lanes (4 a thread, 8 channels a warp row), the
per-channel vectors go through shared memory every step and Σ_n crosses lanes (offline SASS at the study row: 104
shared-memory and 64 shuffle instructions a tile). With `CH_UNIT` (ScanConfig.lane_hint "channels") A, the one
(NP, BD) load, has the channels at unit stride (the launcher passes it so) from a base Triton cannot prove aligned:
threads go along the channels, one element each, under both versions (no shuffles, 3 shared-memory instructions). The
checkpoint store then follows the backward that reads it (`HS_NMAJOR`: (NP, dim) memory for the lane backward).

Parallelism is batch × channels (× paths when paths are not walked by one program). For long sequences at a small
batch that is too few lanes, so the sequence is cut into `segments`: a first launch (MODE 1) runs every segment but the
last from a zero state and keeps its end state and its Σ Δ (the segment's decay is exp2(A · log2 e · Σ Δ), exact);
the main launch (MODE 2) starts each segment from the combination of the earlier segments' summaries. That costs one
more pass of exp2 over all but the last segment, and buys `segments`× the lanes.

The forward saves the state at every `CK`-step checkpoint in the chunked kernel's layout (batch, P, chunks, dim, NP),
so the chunked backward (`_scan_bwd_kernel`, with T = CK) computes the gradients unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import triton
import triton.language as tl

from .scan_common import _bc_row, _merge_store, _step_u_dt

if TYPE_CHECKING:
    import torch

    from .scan_config import ScanConfig

_STRIDES = ["su_b", "su_p", "su_d", "su_l", "sdt_b", "sdt_p", "sdt_d", "sdt_l", "sa_p", "sa_d", "sa_n",
            "sb_b", "sb_p", "sb_n", "sb_l", "sc_b", "sc_p", "sc_n", "sc_l", "sD_p", "sD_d", "sdb_p", "sdb_d",
            "sz_b", "sz_d", "sz_l", "sp_p", "sp_l", "so_b", "so_d", "so_l", "zero"]


@triton.jit(do_not_specialize=_STRIDES)
def _scan_fwd_lane_kernel(
    U, DT, A, Bm, Cm, Dv, DTB, Z, PATHS, OUT, ACC, HS, SEGH, SEGD,
    L, DIM, NCHUNK, scale, NPATHS, SEGLEN, NSEG, NSEG_GRID,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l, zero,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, CK: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PATHS: tl.constexpr, ATOMIC: tl.constexpr, PATH_LOOP: tl.constexpr, SAVE_STATES: tl.constexpr,
    MODE: tl.constexpr, VEC_BC: tl.constexpr = 1, HS_NMAJOR: tl.constexpr = False, CH_UNIT: tl.constexpr = False,
):
    # MODE 0: the whole sequence in one program; 1: segment summaries only (end state from zero, Σ Δ; no output);
    # 2: one segment, started from the earlier segments' summaries.
    b64 = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    seg = tl.program_id(2) % NSEG_GRID
    p0 = tl.program_id(2) // NSEG_GRID
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    offs_t = tl.arange(0, T)
    zero_nd = tl.zeros((NP, BD), dtype=tl.int32)  # gives the broadcast B/C loads the state's (NP, BD) layout
    c_first = seg * (SEGLEN // CK)
    c_last = tl.minimum(c_first + SEGLEN // CK, NCHUNK)
    n_iter = NPATHS if PATH_LOOP else 1
    for pi in range(0, n_iter):
        p = p0 + pi
        if CH_UNIT:  # lane_hint "channels": sa_d = 1 (the launcher passes A so), base not provably aligned
            a_off = offs_n[:, None] * sa_n + offs_d[None, :]
        else:
            a_off = offs_d[None, :] * sa_d + offs_n[:, None] * sa_n
        a2 = tl.load(A + p * sa_p + a_off, mask=mask_n[:, None] & mask_d[None, :],
                     other=0.0).to(tl.float32) * 1.4426950408889634
        if HAS_D:
            dvec = tl.load(Dv + p * sD_p + offs_d * sD_d, mask=mask_d, other=0.0).to(tl.float32)
        if HAS_DTB:
            dtb = tl.load(DTB + p * sdb_p + offs_d * sdb_d, mask=mask_d, other=0.0).to(tl.float32)
        else:
            dtb = tl.zeros((BD,), dtype=tl.float32)
        h = tl.zeros((NP, BD), dtype=tl.float32)
        sum_base = (b64 * NPATHS + p) * NSEG
        if MODE == 2:  # start from the earlier segments: h = Π decay · h + end state, in order
            for j in range(0, seg):
                sd = tl.load(SEGD + (sum_base + j) * DIM + offs_d, mask=mask_d, other=0.0)
                sh = tl.load(SEGH + ((sum_base + j) * NP + offs_n[:, None]) * DIM + offs_d[None, :],
                             mask=mask_n[:, None] & mask_d[None, :], other=0.0)
                h = tl.exp2(a2 * sd[None, :]) * h + sh
        dsum = tl.zeros((BD,), dtype=tl.float32)
        u_base, dt_base = b64 * su_b + p * su_p, b64 * sdt_b + p * sdt_p
        b_base, c_base = b64 * sb_b + p * sb_p, b64 * sc_b + p * sc_p
        hs_base = HS + ((b64 * NPATHS + p) * NCHUNK) * DIM * NP
        for c in range(c_first, c_last):
            if SAVE_STATES:
                if HS_NMAJOR:  # (NP, dim) memory, for the lane backward
                    hs_off = zero + offs_n[:, None] * DIM + offs_d[None, :]
                else:  # (dim, NP), for the chunk backward
                    hs_off = offs_d[None, :] * NP + offs_n[:, None]
                tl.store(hs_base + c * DIM * NP + hs_off, h,
                         mask=mask_n[:, None] & mask_d[None, :])
            for it in range(0, CK // T):
                t0 = c * CK + it * T
                ytile = tl.zeros((T, BD), dtype=tl.float32)
                for s in tl.static_range(T):
                    t = t0 + s
                    valid = t < L
                    pos, u, dt, _ = _step_u_dt(U, DT, PATHS, p, t, valid, offs_d, mask_d, u_base, dt_base, dtb,
                                               su_l, su_d, sdt_l, sdt_d, sp_p, sp_l, HAS_PATHS, HAS_DTB, SOFTPLUS)
                    md = mask_d & valid
                    bt = _bc_row(Bm, b_base, pos, sb_n, sb_l, offs_n, mask_n, valid, zero_nd, VEC_BC, N == NP)
                    h = tl.exp2(a2 * dt[None, :]) * h + bt * (dt * u)[None, :]
                    if MODE == 1:
                        dsum += dt
                    else:
                        ct = _bc_row(Cm, c_base, pos, sc_n, sc_l, offs_n, mask_n, valid, zero_nd, VEC_BC, N == NP)
                        y = tl.sum(h * ct, axis=0)
                        if HAS_D:
                            y += dvec * u
                        if HAS_Z:
                            z = tl.load(Z + b64 * sz_b + offs_d * sz_d + pos * sz_l, mask=md, other=0.0)
                            z = z.to(tl.float32)
                            y = y * tl.fdiv(z, 1.0 + tl.exp(-z))  # silu; the approximate divide is 2 ulp
                        ytile = tl.where(offs_t[:, None] == s, y[None, :] * scale, ytile)
                if MODE != 1:  # one store per T steps: the loads above are not held back by it
                    tt = t0 + offs_t
                    mask_t = tt < L
                    if HAS_PATHS:
                        post = tl.load(PATHS + p * sp_p + tt * sp_l, mask=mask_t, other=0)
                    else:
                        post = tt
                    m2 = mask_t[:, None] & mask_d[None, :]
                    ooff = b64 * so_b + offs_d[None, :] * so_d + post[:, None] * so_l
                    _merge_store(OUT, ACC, ooff, ytile, m2, pi, n_iter, ATOMIC, PATH_LOOP)
        if MODE == 1:
            tl.store(SEGD + (sum_base + seg) * DIM + offs_d, dsum, mask=mask_d)
            tl.store(SEGH + ((sum_base + seg) * NP + offs_n[:, None]) * DIM + offs_d[None, :], h,
                     mask=mask_n[:, None] & mask_d[None, :])


def lane_segments(requested: int, threads: int, nchunk: int, device: torch.device) -> int:
    """Segments for a launch: `requested` when > 0; else enough to give the GPU ~16 warps per SM (1 when the batch ×
    channel blocks × paths programs already give half of that), never shorter than two checkpoint stretches."""
    if requested > 0:
        return max(1, min(requested, nchunk))
    if device.type != "cuda":
        return 1
    import torch

    target = torch.cuda.get_device_properties(device).multi_processor_count * 16 * 32
    if threads * 2 >= target:
        return 1
    return max(1, min(triton.cdiv(target, threads), nchunk // 2))


def launch_lane_fwd(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
                    D: torch.Tensor | None, z: torch.Tensor | None, delta_bias: torch.Tensor | None,
                    paths: torch.Tensor | None, softplus: bool, scale: float, save_states: bool, cfg: ScanConfig,
                    common_strides: tuple[int, ...], empty_like_layout: Callable[..., torch.Tensor],
                    channel_last: Callable[[torch.Tensor], bool], vec_bc: int = 1, hs_nmajor: bool = False,
                    channel_unit: bool = False
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Forward with the lane-owned kernel; returns (out in u's dtype, checkpoint states or None)."""
    import torch

    bsz, n_paths, dim, length = u.shape
    n_state = A.shape[-1]
    np2 = triton.next_power_of_2(n_state)
    if cfg.fwd_paths not in ("auto", "loop", "grid"):
        raise ValueError(f"fwd_paths must be 'auto', 'loop' or 'grid', got {cfg.fwd_paths!r}")
    ck, tile = cfg.steps, min(cfg.tile, cfg.steps)
    if ck % tile:
        raise ValueError(f"lane config: the checkpoint stretch ({ck}) must be a multiple of the tile ({tile})")
    nchunk = triton.cdiv(length, ck)
    dblocks = triton.cdiv(dim, cfg.bd)
    nseg = lane_segments(cfg.segments, bsz * dblocks * n_paths * cfg.warps * 32, nchunk, u.device)
    seglen = triton.cdiv(nchunk, nseg) * ck
    nseg = triton.cdiv(length, seglen)
    # one program may walk every path (deterministic, no atomics) only when it owns whole sequences
    path_loop = n_paths > 1 and nseg == 1 and cfg.fwd_paths != "grid"
    atomic = n_paths > 1 and not path_loop
    cl = channel_last(delta)
    out = empty_like_layout((bsz, dim, length), u, torch.float32 if atomic else u.dtype, atomic, cl)
    acc = empty_like_layout((bsz, dim, length), u, torch.float32, False, cl) if path_loop else out
    f32 = torch.float32
    hs = torch.empty((bsz, n_paths, nchunk, dim, np2), device=u.device, dtype=f32) if save_states else out
    segh = torch.empty((bsz, n_paths, nseg, np2, dim), device=u.device, dtype=f32) if nseg > 1 else out
    segd = torch.empty((bsz, n_paths, nseg, dim), device=u.device, dtype=f32) if nseg > 1 else out
    dummy = out
    args = (u, delta, A, B, C, D if D is not None else dummy, delta_bias if delta_bias is not None else dummy,
            z if z is not None else dummy, paths if paths is not None else dummy, out, acc, hs, segh, segd,
            length, dim, nchunk, float(scale), n_paths, seglen, nseg)
    opts = dict(N=n_state, NP=np2, BD=cfg.bd, T=tile, CK=ck, HAS_D=D is not None, HAS_DTB=delta_bias is not None,
                HAS_Z=z is not None, SOFTPLUS=bool(softplus), HAS_PATHS=paths is not None, ATOMIC=atomic,
                PATH_LOOP=path_loop, VEC_BC=vec_bc, HS_NMAJOR=hs_nmajor, CH_UNIT=channel_unit,
                num_warps=cfg.warps)
    strides = (*common_strides, *out.stride())
    n_prog_paths = 1 if path_loop else n_paths
    if nseg > 1:
        _scan_fwd_lane_kernel[(bsz, dblocks, n_prog_paths * (nseg - 1))](
            *args, nseg - 1, *strides, 0, SAVE_STATES=False, MODE=1, **opts)
    _scan_fwd_lane_kernel[(bsz, dblocks, n_prog_paths * nseg)](
        *args, nseg, *strides, 0, SAVE_STATES=save_states, MODE=2 if nseg > 1 else 0, **opts)
    return out.to(u.dtype), (hs if save_states else None)
