"""Step-sequential variant of the route-fused selective scan (same math as `selective_scan.py`, read that docstring).

Why a second variant: the chunked kernel scans (BD, N, T) tiles with `tl.associative_scan`, which costs log2(T)
combine rounds, lane shuffles and layout conversions per element. Here every program keeps its (BD, N) state in
registers and walks its path one step at a time, so the recurrence costs one exp2 and two FMAs per (channel, state,
step), the loads of later steps do not depend on the state (the unrolled inner loop lets them issue early), and the
only cross-lane work is the Σ_n for y. Parallelism comes from batch × channel blocks × paths; for long sequences at
small batch the chunked kernel may still win, and the launcher lets the caller pick (`config`).

Backward: the forward saves the state at every T-step checkpoint; the backward walks checkpoints from the last, first
recomputes the T states of that stretch into a program-private fp32 scratch (L2-resident), then runs the adjoint
recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} backwards over the stretch, reading h_t back.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .scan_common import _gate_dy, _step_u_dt, _store_dz


@triton.jit
def _step_inputs(U, DT, Bm, Cm, PATHS, p, t, valid, offs_d, mask_d, offs_n, mask_n, u_base, dt_base, b_base, c_base,
                 dtb, su_l, su_d, sdt_l, sdt_d, sb_n, sb_l, sc_n, sc_l, sp_p, sp_l,
                 HAS_PATHS: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """Loads of one step: (pos, u, Δ, pre-softplus Δ, B_t, C_t); invalid steps give Δ = 0 (state passes through)."""
    pos, u, dt, dt_raw = _step_u_dt(U, DT, PATHS, p, t, valid, offs_d, mask_d, u_base, dt_base, dtb, su_l, su_d,
                                    sdt_l, sdt_d, sp_p, sp_l, HAS_PATHS, HAS_DTB, SOFTPLUS)
    mn = mask_n & valid
    bt = tl.load(Bm + b_base + offs_n * sb_n + pos * sb_l, mask=mn, other=0.0).to(tl.float32)
    ct = tl.load(Cm + c_base + offs_n * sc_n + pos * sc_l, mask=mn, other=0.0).to(tl.float32)
    return pos, u, dt, dt_raw, bt, ct


@triton.jit
def _scan_fwd_seq_kernel(
    U, DT, A, Bm, Cm, Dv, DTB, Z, PATHS, OUT, HS, LAST,
    L, DIM, NCHUNK, scale,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PATHS: tl.constexpr, ATOMIC: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_LAST: tl.constexpr,
):
    b64 = tl.program_id(0).to(tl.int64)
    p = tl.program_id(2)
    npaths = tl.num_programs(2)
    offs_d = tl.program_id(1) * BD + tl.arange(0, BD)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    a2 = tl.load(A + p * sa_p + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n,
                 mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32) * 1.4426950408889634
    if HAS_D:
        dvec = tl.load(Dv + p * sD_p + offs_d * sD_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dvec = tl.zeros((BD,), dtype=tl.float32)
    if HAS_DTB:
        dtb = tl.load(DTB + p * sdb_p + offs_d * sdb_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dtb = tl.zeros((BD,), dtype=tl.float32)
    u_base, dt_base = b64 * su_b + p * su_p, b64 * sdt_b + p * sdt_p
    b_base, c_base = b64 * sb_b + p * sb_p, b64 * sc_b + p * sc_p
    hs_base = HS + ((b64 * npaths + p) * NCHUNK) * DIM * NP
    hs_off = offs_d[:, None] * NP + offs_n[None, :]
    h = tl.zeros((BD, NP), dtype=tl.float32)
    for c in range(0, NCHUNK):
        if SAVE_STATES:
            tl.store(hs_base + c * DIM * NP + hs_off, h, mask=mask_d[:, None])
        for s in tl.static_range(T):
            t = c * T + s
            valid = t < L
            pos, u, dt, _, bt, ct = _step_inputs(U, DT, Bm, Cm, PATHS, p, t, valid, offs_d, mask_d, offs_n, mask_n,
                                                 u_base, dt_base, b_base, c_base, dtb, su_l, su_d, sdt_l, sdt_d,
                                                 sb_n, sb_l, sc_n, sc_l, sp_p, sp_l, HAS_PATHS, HAS_DTB, SOFTPLUS)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * bt[None, :]
            y = tl.sum(h * ct[None, :], axis=1) + dvec * u
            md = mask_d & valid
            if HAS_Z:
                z = tl.load(Z + b64 * sz_b + offs_d * sz_d + pos * sz_l, mask=md, other=0.0).to(tl.float32)
                y = y * (z * tl.sigmoid(z))
            optr = OUT + b64 * so_b + offs_d * so_d + pos * so_l
            if ATOMIC:
                tl.atomic_add(optr, y * scale, mask=md, sem="relaxed")
            else:
                tl.store(optr, (y * scale).to(OUT.dtype.element_ty), mask=md)
    if SAVE_LAST:
        tl.store(LAST + ((b64 * npaths + p) * DIM) * NP + hs_off, h, mask=mask_d[:, None])


@triton.jit
def _scan_bwd_seq_kernel(
    U, DT, A, Bm, Cm, Dv, DTB, Z, PATHS, DOUT, HS, SCR,
    DU, DDT, DA, DB, DC, DD, DDTB, DZ,
    L, DIM, NCHUNK, scale,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l,
    sg_b, sg_p, sg_d, sg_l, sbc_b, sbc_p, sbc_n, sbc_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PATHS: tl.constexpr, ATOMIC_Z: tl.constexpr,
):
    # DU/DDT share strides (sg_*), DB/DC share strides (sbc_*, fp32); DA (P, dim, NP), DD/DDTB (P, dim) fp32.
    b64 = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    p = tl.program_id(2)
    npaths = tl.num_programs(2)
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    a_nat = tl.load(A + p * sa_p + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n,
                    mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
    a2 = a_nat * 1.4426950408889634
    if HAS_D:
        dvec = tl.load(Dv + p * sD_p + offs_d * sD_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dvec = tl.zeros((BD,), dtype=tl.float32)
    if HAS_DTB:
        dtb = tl.load(DTB + p * sdb_p + offs_d * sdb_d, mask=mask_d, other=0.0).to(tl.float32)
    else:
        dtb = tl.zeros((BD,), dtype=tl.float32)
    u_base, dt_base = b64 * su_b + p * su_p, b64 * sdt_b + p * sdt_p
    b_base, c_base = b64 * sb_b + p * sb_p, b64 * sc_b + p * sc_p
    g_base, bc_base = b64 * sg_b + p * sg_p, b64 * sbc_b + p * sbc_p
    hs_base = HS + ((b64 * npaths + p) * NCHUNK) * DIM * NP
    hs_off = offs_d[:, None] * NP + offs_n[None, :]
    prog = (b64 * tl.num_programs(1) + pid_d) * npaths + p
    scr = SCR + prog * T * BD * NP + tl.arange(0, BD)[:, None] * NP + offs_n[None, :]
    ga = tl.zeros((BD, NP), dtype=tl.float32)  # a_{t+1} g_{t+1}, carried backwards
    da_acc = tl.zeros((BD, NP), dtype=tl.float32)
    dd_acc = tl.zeros((BD,), dtype=tl.float32)
    ddtb_acc = tl.zeros((BD,), dtype=tl.float32)
    for ci in range(0, NCHUNK):
        c = NCHUNK - 1 - ci
        h = tl.load(hs_base + c * DIM * NP + hs_off, mask=mask_d[:, None], other=0.0)
        for s in tl.static_range(T):  # recompute this stretch's states into the scratch
            t = c * T + s
            valid = t < L
            pos, u, dt, _, bt, ct = _step_inputs(U, DT, Bm, Cm, PATHS, p, t, valid, offs_d, mask_d, offs_n, mask_n,
                                                 u_base, dt_base, b_base, c_base, dtb, su_l, su_d, sdt_l, sdt_d,
                                                 sb_n, sb_l, sc_n, sc_l, sp_p, sp_l, HAS_PATHS, HAS_DTB, SOFTPLUS)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * u)[:, None] * bt[None, :]
            tl.store(scr + s * BD * NP, h)
        tl.debug_barrier()
        for sr in tl.static_range(T):
            s = T - 1 - sr
            t = c * T + s
            valid = t < L
            pos, u, dt, dt_raw, bt, ct = _step_inputs(U, DT, Bm, Cm, PATHS, p, t, valid, offs_d, mask_d, offs_n,
                                                      mask_n, u_base, dt_base, b_base, c_base, dtb, su_l, su_d,
                                                      sdt_l, sdt_d, sb_n, sb_l, sc_n, sc_l, sp_p, sp_l, HAS_PATHS,
                                                      HAS_DTB, SOFTPLUS)
            md = mask_d & valid
            ht = tl.load(scr + s * BD * NP)
            dout, dy, z, sig = _gate_dy(DOUT, Z, b64, offs_d, pos, md, scale, so_b, so_d, so_l, sz_b, sz_d, sz_l,
                                        HAS_Z)
            if HAS_Z:
                _store_dz(DZ, b64, offs_d, pos, md, dout, tl.sum(ht * ct[None, :], axis=1) + dvec * u, z, sig,
                          sz_b, sz_d, sz_l, ATOMIC_Z)
            g = ct[None, :] * dy[:, None] + ga
            a = tl.exp2(dt[:, None] * a2)
            ga = a * g
            sum_gb = tl.sum(g * bt[None, :], axis=1)
            du = dt * sum_gb + dvec * dy
            dd_acc += dy * u
            bx = (dt * u)[:, None] * bt[None, :]
            ghb = g * (ht - bx)
            ddt = u * sum_gb + tl.sum(ghb * a_nat, axis=1)
            da_acc += ghb * dt[:, None]
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            ddt = tl.where(md, ddt, 0.0)
            ddtb_acc += ddt
            gptr = g_base + offs_d * sg_d + pos * sg_l
            tl.store(DU + gptr, du.to(DU.dtype.element_ty), mask=md)
            tl.store(DDT + gptr, ddt.to(DDT.dtype.element_ty), mask=md)
            mn = mask_n & valid
            bcptr = bc_base + offs_n * sbc_n + pos * sbc_l
            tl.atomic_add(DB + bcptr, tl.sum(g * (dt * u)[:, None], axis=0), mask=mn, sem="relaxed")
            tl.atomic_add(DC + bcptr, tl.sum(ht * dy[:, None], axis=0), mask=mn, sem="relaxed")
        tl.debug_barrier()
    md2 = mask_d[:, None] & mask_n[None, :]
    tl.atomic_add(DA + (p * DIM + offs_d[:, None]) * NP + offs_n[None, :], da_acc, mask=md2, sem="relaxed")
    if HAS_D:
        tl.atomic_add(DD + p * DIM + offs_d, dd_acc, mask=mask_d, sem="relaxed")
    if HAS_DTB:
        tl.atomic_add(DDTB + p * DIM + offs_d, ddtb_acc, mask=mask_d, sem="relaxed")


__all__ = ["_scan_fwd_seq_kernel", "_scan_bwd_seq_kernel"]
