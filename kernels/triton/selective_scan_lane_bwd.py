"""Lane-owned backward of the route-fused selective scan (same math as `selective_scan.py`; read that docstring).

One lane owns one channel and all its N states, as in the lane forward (`selective_scan_lane.py`): the recurrence, its
adjoint and every Σ_n stay inside the thread. A program walks one path of one (batch, 32 · warps channels) block from
the last step to the first, stretch by stretch:

    the forward's checkpoint at the stretch start (every CK steps) → (CK > T only) the state every T steps, written to
    a program-private fp32 scratch (L2-resident, CK/T · N · 4 bytes per channel) → for each T-step tile, last first:
    recompute the T states into registers (a tuple of T (N, BD) tiles: no memory, no layout conversion), then walk
    the T steps backwards with the adjoint g_t = C_t dy_t + a_{t+1} g_{t+1} in registers.

The work per (channel, state, step) is two exp2 (three with CK > T) and about a dozen FMAs; no shuffles except the
Σ_d of dB_t and dC_t (B and C are shared by the channels), which are summed over groups of `RED` lanes (offline
SASS, sm_90: 8 lanes take 15 % fewer instructions per step than the whole warp) and added with one fp32 atomic per
(group, state, step), or (`BC_RS`, bwd_bc "scatter") summed over all the program's lanes by reduce-scatter and added
with one atomic instruction per array and step (under Triton 3.6 with lane_hint "channels", offline SASS at the study
row: 64 shuffles a 2-step tile instead of 192). du and dΔ are stored per step (coalesced for channel-last
gradients); dz goes through fp32 atomics when several paths' programs add to it. B_t and C_t rows are read with 16-byte vector loads
when their memory allows (`VEC_BC`, set by the launcher from the strides and alignment).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import triton
import triton.language as tl

from .scan_common import _bc_row, _gate_dy, _step_u_dt, _store_dz

if TYPE_CHECKING:
    import torch


@triton.jit
def _recompute_tile(U, DT, Bm, PATHS, p, t0, L, h, a2, offs_d, mask_d, offs_n, mask_n, zero_nd, dtb, u_base, dt_base,
                    b_base, su_l, su_d, sdt_l, sdt_d, sb_n, sb_l, sp_p, sp_l, T: tl.constexpr,
                    HAS_PATHS: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, VEC_BC: tl.constexpr,
                    FULL_N: tl.constexpr):
    """T steps of the recurrence from `h`; returns the T states and the steps' (pos, u, Δ, pre-softplus Δ) as
    tuples (registers), and the last state."""
    hs = ()
    us = ()
    dts = ()
    raws = ()
    poss = ()
    for s in tl.static_range(T):
        t = t0 + s
        valid = t < L
        pos, u, dt, dt_raw = _step_u_dt(U, DT, PATHS, p, t, valid, offs_d, mask_d, u_base, dt_base, dtb, su_l, su_d,
                                        sdt_l, sdt_d, sp_p, sp_l, HAS_PATHS, HAS_DTB, SOFTPLUS)
        bt = _bc_row(Bm, b_base, pos, sb_n, sb_l, offs_n, mask_n, valid, zero_nd, VEC_BC, FULL_N)
        h = tl.exp2(a2 * dt[None, :]) * h + bt * (dt * u)[None, :]
        hs = hs + (h,)
        us = us + (u,)
        dts = dts + (dt,)
        raws = raws + (dt_raw,)
        poss = poss + (pos,)
    return hs, us, dts, raws, poss, h


@triton.jit
def _advance(U, DT, Bm, PATHS, p, t0, L, h, a2, offs_d, mask_d, offs_n, mask_n, zero_nd, dtb, u_base, dt_base, b_base,
             su_l, su_d, sdt_l, sdt_d, sb_n, sb_l, sp_p, sp_l, T: tl.constexpr, HAS_PATHS: tl.constexpr,
             HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr, VEC_BC: tl.constexpr, FULL_N: tl.constexpr):
    """The state after T more steps (the tile's other values are dead and compiled away)."""
    return _recompute_tile(U, DT, Bm, PATHS, p, t0, L, h, a2, offs_d, mask_d, offs_n, mask_n, zero_nd, dtb, u_base,
                           dt_base, b_base, su_l, su_d, sdt_l, sdt_d, sb_n, sb_l, sp_p, sp_l, T, HAS_PATHS, HAS_DTB,
                           SOFTPLUS, VEC_BC, FULL_N)[5]


@triton.jit
def _lane_xor(x, lane, m: tl.constexpr):
    """x (K, BD) with one channel a lane: every lane gets lane ^ m's values (a warp-local gather: one shuffle per
    register)."""
    return tl.gather(x, (lane ^ m)[None, :] + tl.zeros(x.shape, dtype=tl.int32), 1)


@triton.jit
def _halve(x, lane, m: tl.constexpr):
    """One reduce-scatter round: lanes with bit m set keep the upper half of their K values and receive their
    partner's (lane ^ m) upper half, the others the lower; returns the K/2 partial sums (K/2, BD)."""
    k: tl.constexpr = x.shape[0]
    lo, hi = tl.split(tl.permute(tl.reshape(x, (2, k // 2, x.shape[1])), (1, 2, 0)))
    up = ((lane & m) != 0)[None, :]
    return tl.where(up, hi, lo) + _lane_xor(tl.where(up, lo, hi), lane, m)


@triton.jit
def _butterfly(y, lane, m: tl.constexpr):
    """y (BD,) plus lane ^ m's y."""
    return y + tl.sum(_lane_xor(y[None, :], lane, m), axis=0)


@triton.jit
def _reduce_scatter(x, lane, NP: tl.constexpr, BD: tl.constexpr):
    """Σ over the BD lanes of x (NP, BD), NP ≤ BD ≤ 32: returns (BD,) where lane l holds the sum for state
    l // (BD / NP) (each group of BD / NP lanes the same value). A butterfly reduction of each state apart costs
    NP · log2(BD) shuffles; halving the values each round (8 + 4 + 2 + 1 + 1 for NP = 16, BD = 32) costs about NP.
    The shuffles stay in one warp only when BD is one warp's 32 lanes (the launcher's default)."""
    if NP >= 2:
        x = _halve(x, lane, BD // 2)
    if NP >= 4:
        x = _halve(x, lane, BD // 4)
    if NP >= 8:
        x = _halve(x, lane, BD // 8)
    if NP >= 16:
        x = _halve(x, lane, BD // 16)
    if NP >= 32:
        x = _halve(x, lane, BD // 32)
    y = tl.sum(x, axis=0)  # (BD,): one value a lane left; the lanes of a group now add theirs
    if BD // NP >= 2:
        y = _butterfly(y, lane, BD // (2 * NP))
    if BD // NP >= 4:
        y = _butterfly(y, lane, BD // (4 * NP))
    if BD // NP >= 8:
        y = _butterfly(y, lane, BD // (8 * NP))
    if BD // NP >= 16:
        y = _butterfly(y, lane, BD // (16 * NP))
    if BD // NP >= 32:
        y = _butterfly(y, lane, BD // (32 * NP))
    return y


@triton.jit
def _lane_setup(A, DTB, p, pid_d, DIM, sa_p, sa_d, sa_n, sdb_p, sdb_d, N: tl.constexpr, NP: tl.constexpr,
                BD: tl.constexpr, HAS_DTB: tl.constexpr, CH_UNIT: tl.constexpr):
    """What every lane-backward program of a path starts from: its channels and states (offsets, masks), the
    broadcast helper, A · log2 e and the Δ bias, both in fp32."""
    offs_d = pid_d * BD + tl.arange(0, BD)
    mask_d = offs_d < DIM
    offs_n = tl.arange(0, NP)
    mask_n = offs_n < N
    zero_nd = tl.zeros((NP, BD), dtype=tl.int32)
    mnd = mask_n[:, None] & mask_d[None, :]
    if CH_UNIT:  # lane_hint "channels": sa_d = 1 (the launcher passes A so)
        a_off = offs_n[:, None] * sa_n + offs_d[None, :]
    else:
        a_off = offs_d[None, :] * sa_d + offs_n[:, None] * sa_n
    a2 = tl.load(A + p * sa_p + a_off, mask=mnd, other=0.0).to(tl.float32) * 1.4426950408889634
    dtb = tl.zeros((BD,), dtype=tl.float32)
    if HAS_DTB:
        dtb = tl.load(DTB + p * sdb_p + offs_d * sdb_d, mask=mask_d, other=0.0).to(tl.float32)
    return offs_d, mask_d, offs_n, mask_n, zero_nd, mnd, a2, dtb


_STRIDES = ["su_b", "su_p", "su_d", "su_l", "sdt_b", "sdt_p", "sdt_d", "sdt_l", "sa_p", "sa_d", "sa_n",
            "sb_b", "sb_p", "sb_n", "sb_l", "sc_b", "sc_p", "sc_n", "sc_l", "sD_p", "sD_d", "sdb_p", "sdb_d",
            "sz_b", "sz_d", "sz_l", "sp_p", "sp_l", "so_b", "so_d", "so_l", "sg_b", "sg_p", "sg_d", "sg_l",
            "sbc_b", "sbc_p", "sbc_n", "sbc_l", "zero"]


# The state's layout is decided by Triton from the kernel's (NP, BD) memory accesses (the lane forward's docstring):
# A, the checkpoints, the scratch and dA. With CH_UNIT (lane_hint "channels") each has the channels at unit stride
# from a base Triton cannot prove aligned (`zero`, a run-time 0, or an unspecialised stride): threads go along the
# channels, one lane a channel, and no access is vectorised across them. Without it the unit strides are hidden behind
# run-time values (`zero + 1`); Triton 3.8 then keeps one lane a channel, Triton 3.6 does not (4 lanes a channel, 176
# bytes of spills at the study row, offline SASS). Strides are not specialised in either case.
@triton.jit(do_not_specialize=_STRIDES)
def _scan_bwd_lane_kernel(
    U, DT, A, Bm, Cm, Dv, DTB, Z, PATHS, DOUT, HS, SCR, SEGG, SEGD,
    DU, DDT, DA, DB, DC, DD, DDTB, DZ,
    L, DIM, NCHUNK, scale, NPATHS, SEGLEN, NSEG,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l, sg_b, sg_p, sg_d, sg_l, sbc_b, sbc_p, sbc_n, sbc_l, zero, sbc_k,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, CK: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PATHS: tl.constexpr, ATOMIC_Z: tl.constexpr, VEC_BC: tl.constexpr, RED: tl.constexpr,
    BC_PARTIAL: tl.constexpr, CH_UNIT: tl.constexpr, BC_RS: tl.constexpr, SEGMENTED: tl.constexpr = False,
):
    # Gradient layouts as in `_scan_bwd_kernel`: DU, DDT through sg_*, DB/DC fp32 through sbc_*, DA (P, dim, NP) or
    # (P, NP, dim) with CH_UNIT, DD/DDTB (P, dim) fp32, DZ with Z's strides (fp32 when ATOMIC_Z). HS: (batch, P,
    # NCHUNK, dim, NP) or, with CH_UNIT, (batch, P, NCHUNK, NP, dim) fp32 states at
    # every CK-step checkpoint. SCR: per program (CK / T, NP, BD) fp32, used only when CK > T.
    b64 = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    if SEGMENTED:  # NSEG sequence segments of SEGLEN steps, one program each (else the whole sequence)
        seg = tl.program_id(2) % NSEG
        p = tl.program_id(2) // NSEG
    else:
        seg = 0
        p = tl.program_id(2)
    FULL_N: tl.constexpr = N == NP
    offs_d, mask_d, offs_n, mask_n, zero_nd, mnd, a2, dtb = _lane_setup(A, DTB, p, pid_d, DIM, sa_p, sa_d, sa_n,
                                                                         sdb_p, sdb_d, N, NP, BD, HAS_DTB, CH_UNIT)
    one = zero + 1
    dvec = tl.zeros((BD,), dtype=tl.float32)
    if HAS_D:
        dvec = tl.load(Dv + p * sD_p + offs_d * sD_d, mask=mask_d, other=0.0).to(tl.float32)
    u_base, dt_base = b64 * su_b + p * su_p, b64 * sdt_b + p * sdt_p
    b_base, c_base = b64 * sb_b + p * sb_p, b64 * sc_b + p * sc_p
    g_base, bc_base = b64 * sg_b + p * sg_p, b64 * sbc_b + p * sbc_p
    hs_base = HS + ((b64 * NPATHS + p) * NCHUNK) * DIM * NP
    if CH_UNIT:  # checkpoints (NP, dim) memory
        nd_off = zero + offs_n[:, None] * DIM + offs_d[None, :]
    else:  # (dim, NP), the unit stride passed at run time
        nd_off = (offs_n[:, None] + offs_d[None, :] * NP) * one
    prog = (b64 * tl.num_programs(1) + pid_d) * tl.num_programs(2) + tl.program_id(2)
    if CH_UNIT:
        scr = SCR + prog * (CK // T) * NP * BD + zero + offs_n[:, None] * BD + tl.arange(0, BD)[None, :]
    else:
        scr = SCR + prog * (CK // T) * NP * BD + (offs_n[:, None] * BD + tl.arange(0, BD)[None, :]) * one
    # the adjoint entering the segment from the later ones (already decayed into its last step), combined from the
    # last segment's summary down: carry = exp2(a2 · Σ_seg Δ) · carry + the segment's own (`_scan_bwd_lane_summary`)
    g = tl.zeros((NP, BD), dtype=tl.float32)
    if SEGMENTED:  # the summaries are stored in the checkpoints' layout (nd_off)
        sum_base = (b64 * NPATHS + p) * NSEG
        for jj in range(0, NSEG - 1 - seg):
            j = NSEG - 1 - jj
            sd = tl.load(SEGD + (sum_base + j) * DIM + offs_d, mask=mask_d, other=0.0)
            sg = tl.load(SEGG + (sum_base + j) * DIM * NP + nd_off, mask=mnd, other=0.0)
            g = tl.exp2(a2 * sd[None, :]) * g + sg
        a_next = tl.full((NP, BD), 1.0, dtype=tl.float32)  # the carry holds the next step's decay already
        c_first = seg * (SEGLEN // CK)
        c_last = tl.minimum(c_first + SEGLEN // CK, NCHUNK)
    else:
        a_next = tl.zeros((NP, BD), dtype=tl.float32)  # decay of the step after the one being processed
        c_first = 0
        c_last = NCHUNK
    da_acc = tl.zeros((NP, BD), dtype=tl.float32)
    dd_acc = tl.zeros((BD,), dtype=tl.float32)
    ddtb_acc = tl.zeros((BD,), dtype=tl.float32)
    for ci in range(0, c_last - c_first):
        c = c_last - 1 - ci
        h = tl.load(hs_base + c * DIM * NP + nd_off, mask=mnd, other=0.0)
        if CK > T:  # the state at every T-step tile start of this stretch, into the scratch
            for j in range(0, CK // T - 1):
                tl.store(scr + j * NP * BD, h)
                h = _advance(U, DT, Bm, PATHS, p, c * CK + j * T, L, h, a2, offs_d, mask_d, offs_n, mask_n, zero_nd,
                             dtb, u_base, dt_base, b_base, su_l, su_d, sdt_l, sdt_d, sb_n, sb_l, sp_p, sp_l, T,
                             HAS_PATHS, HAS_DTB, SOFTPLUS, VEC_BC, FULL_N)
            tl.debug_barrier()
        for jr in range(0, CK // T):
            j = CK // T - 1 - jr
            t0 = c * CK + j * T
            if CK > T:
                if jr > 0:
                    h = tl.load(scr + j * NP * BD)
            hs, us, dts, raws, poss, _ = _recompute_tile(
                U, DT, Bm, PATHS, p, t0, L, h, a2, offs_d, mask_d, offs_n, mask_n, zero_nd, dtb, u_base, dt_base,
                b_base, su_l, su_d, sdt_l, sdt_d, sb_n, sb_l, sp_p, sp_l, T, HAS_PATHS, HAS_DTB, SOFTPLUS, VEC_BC,
                FULL_N)
            for r in tl.static_range(T):
                t = t0 + T - 1 - r
                valid = t < L
                md = mask_d & valid
                ht = hs[T - 1 - r]
                u = us[T - 1 - r]
                dt = dts[T - 1 - r]
                pos = poss[T - 1 - r]
                bt = _bc_row(Bm, b_base, pos, sb_n, sb_l, offs_n, mask_n, valid, zero_nd, VEC_BC, FULL_N)
                ct = _bc_row(Cm, c_base, pos, sc_n, sc_l, offs_n, mask_n, valid, zero_nd, VEC_BC, FULL_N)
                dout, dy, z, sig = _gate_dy(DOUT, Z, b64, offs_d, pos, md, scale, so_b, so_d, so_l, sz_b, sz_d,
                                            sz_l, HAS_Z)
                if HAS_Z:
                    _store_dz(DZ, b64, offs_d, pos, md, dout, tl.sum(ht * ct, axis=0) + dvec * u, z, sig, sz_b,
                              sz_d, sz_l, ATOMIC_Z)
                g = a_next * g + ct * dy[None, :]
                a_next = tl.exp2(a2 * dt[None, :])
                dtu = dt * u
                sum_gb = tl.sum(g * bt, axis=0)
                ghb = g * (ht - bt * dtu[None, :])  # g_t · a_t h_{t-1}
                ddt = u * sum_gb + tl.sum(ghb * a2, axis=0) * 0.6931471805599453
                da_acc += ghb * dt[None, :]
                if SOFTPLUS:
                    ddt = ddt * tl.sigmoid(raws[T - 1 - r])
                ddt = tl.where(md, ddt, 0.0)
                ddtb_acc += ddt
                dd_acc += dy * u
                gptr = g_base + offs_d * sg_d + pos * sg_l
                tl.store(DU + gptr, (dt * sum_gb + dvec * dy).to(DU.dtype.element_ty), mask=md)
                tl.store(DDT + gptr, ddt.to(DDT.dtype.element_ty), mask=md)
                mn = mask_n & valid
                bcptr = bc_base + offs_n * sbc_n + pos * sbc_l
                if BC_RS:  # Σ_d over the program's lanes by reduce-scatter: one atomic instruction per array and step
                    lane = tl.arange(0, BD)
                    state = lane // (BD // NP)
                    lead = ((lane % (BD // NP)) == 0) & (state < N) & valid
                    rs_ptr = bc_base + state * sbc_n + pos * sbc_l
                    tl.atomic_add(DB + rs_ptr, _reduce_scatter(g * dtu[None, :], lane, NP, BD), mask=lead,
                                  sem="relaxed")
                    tl.atomic_add(DC + rs_ptr, _reduce_scatter(ht * dy[None, :], lane, NP, BD), mask=lead,
                                  sem="relaxed")
                else:
                    # Σ_d over RED lanes (log2 RED shuffle rounds), then BD / RED atomics per state and step
                    zg = tl.zeros((NP, BD // RED), dtype=tl.int32)
                    mg = mn[:, None] & (zg == 0)
                    db = tl.sum(tl.reshape(g * dtu[None, :], (NP, BD // RED, RED)), axis=2)
                    dc = tl.sum(tl.reshape(ht * dy[None, :], (NP, BD // RED, RED)), axis=2)
                    if BC_PARTIAL:  # one slot per group of RED channels: plain stores, summed by the launcher
                        gofs = (pid_d * (BD // RED) + tl.arange(0, BD // RED)) * sbc_k
                        tl.store(DB + bcptr[:, None] + gofs[None, :], db, mask=mg)
                        tl.store(DC + bcptr[:, None] + gofs[None, :], dc, mask=mg)
                    else:
                        tl.atomic_add(DB + bcptr[:, None] + zg, db, mask=mg, sem="relaxed")
                        tl.atomic_add(DC + bcptr[:, None] + zg, dc, mask=mg, sem="relaxed")
        if CK > T:
            tl.debug_barrier()
    if CH_UNIT:  # dA (P, NP, dim)
        tl.atomic_add(DA + zero + (p * NP + offs_n[:, None]) * DIM + offs_d[None, :], da_acc, mask=mnd, sem="relaxed")
    else:  # (P, dim, NP)
        tl.atomic_add(DA + (p * DIM + offs_d[None, :]) * NP + offs_n[:, None], da_acc, mask=mnd, sem="relaxed")
    if HAS_D:
        tl.atomic_add(DD + p * DIM + offs_d, dd_acc, mask=mask_d, sem="relaxed")
    if HAS_DTB:
        tl.atomic_add(DDTB + p * DIM + offs_d, ddtb_acc, mask=mask_d, sem="relaxed")




@triton.jit(do_not_specialize=_STRIDES)
def _scan_bwd_lane_summary_kernel(
    U, DT, A, Cm, DTB, Z, PATHS, DOUT, SEGG, SEGD,
    L, DIM, scale, NPATHS, SEGLEN, NSEG,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l, sg_b, sg_p, sg_d, sg_l, sbc_b, sbc_p, sbc_n, sbc_l, zero,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr, HAS_DTB: tl.constexpr,
    HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr, HAS_PATHS: tl.constexpr, VEC_BC: tl.constexpr,
    CH_UNIT: tl.constexpr,
):
    """A segment's summary for the segmented lane backward (segments 1 … NSEG-1; the first in time needs none): the
    adjoint g_t = a_{t+1} g_{t+1} + C_t dy_t run from zero over the segment's steps, last first, leaving
    SEGG = a_{s0} g_{s0} (what it hands the segment before it) and SEGD = Σ Δ over it (the decay a carry crossing it
    takes: exp2(a2 · Σ Δ), exact). Needs no state: g depends on Δ, C and dy only. Unrolled by T steps."""
    b64 = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    seg = tl.program_id(2) % (NSEG - 1) + 1
    p = tl.program_id(2) // (NSEG - 1)
    FULL_N: tl.constexpr = N == NP
    offs_d, mask_d, offs_n, mask_n, zero_nd, mnd, a2, dtb = _lane_setup(A, DTB, p, pid_d, DIM, sa_p, sa_d, sa_n,
                                                                         sdb_p, sdb_d, N, NP, BD, HAS_DTB, CH_UNIT)
    u_base, dt_base = b64 * su_b + p * su_p, b64 * sdt_b + p * sdt_p
    c_base = b64 * sc_b + p * sc_p
    g = tl.zeros((NP, BD), dtype=tl.float32)
    a_next = tl.zeros((NP, BD), dtype=tl.float32)
    dsum = tl.zeros((BD,), dtype=tl.float32)
    t_first = seg * SEGLEN
    t_last = tl.minimum(t_first + SEGLEN, L)
    for i in range(0, tl.cdiv(t_last - t_first, T)):
        for r in tl.static_range(T):
            t = t_last - 1 - (i * T + r)
            valid = t >= t_first
            md = mask_d & valid
            pos, u, dt, _ = _step_u_dt(U, DT, PATHS, p, t, valid, offs_d, mask_d, u_base, dt_base, dtb, su_l, su_d,
                                       sdt_l, sdt_d, sp_p, sp_l, HAS_PATHS, HAS_DTB, SOFTPLUS)
            ct = _bc_row(Cm, c_base, pos, sc_n, sc_l, offs_n, mask_n, valid, zero_nd, VEC_BC, FULL_N)
            dout, dy, z, sig = _gate_dy(DOUT, Z, b64, offs_d, pos, md, scale, so_b, so_d, so_l, sz_b, sz_d, sz_l,
                                        HAS_Z)
            e = tl.exp2(a2 * dt[None, :])  # 1 past the segment's first step (Δ = 0 there): g passes unchanged
            g = tl.where(valid, a_next * g + ct * dy[None, :], g)
            a_next = tl.where(valid, e, a_next)
            dsum += dt
    base = (b64 * NPATHS + p) * NSEG + seg
    tl.store(SEGD + base * DIM + offs_d, dsum, mask=mask_d)
    if CH_UNIT:  # the main kernel's checkpoint layout: (NP, dim) here, else (dim, NP)
        nd_off = zero + offs_n[:, None] * DIM + offs_d[None, :]
    else:
        nd_off = (offs_n[:, None] + offs_d[None, :] * NP) * (zero + 1)
    tl.store(SEGG + base * DIM * NP + nd_off, a_next * g, mask=mnd)


def launch_lane_bwd(inputs: tuple[torch.Tensor, ...], outs: tuple[torch.Tensor, ...], length: int, dim: int,
                    nchunk: int, scale: float, n_paths: int, strides: tuple[int, ...], flags: dict[str, Any], ck: int,
                    tile: int, bd: int, warps: int, vec_bc: int, red: int = 8, bc_partial: bool = False,
                    channel_unit: bool = False, bc_scatter: bool = False, segments: int = 1,
                    max_regs: int = 0) -> None:
    """Launch `_scan_bwd_lane_kernel`: one program per (batch, `bd` channels, path). `inputs`/`outs` in the chunk
    backward's order, `strides` = the inputs', dout's, the u/Δ gradients' and the dB/dC buffers' strides; `flags`
    = the N/NP/HAS_*/ATOMIC_Z constexprs; `ck` = the forward's checkpoint stretch, `tile` = steps kept in registers;
    `red` = lanes whose dB/dC partials are summed before the atomics (a power of two ≤ 32); `bc_partial`: instead of
    atomics, each group of `red` channels stores its dB/dC partial in its own slot of an fp32 buffer, and the slots
    are summed here (no atomics, and the same dB/dC bits on every run); `segments`: the sequence is cut into that many
    pieces of whole checkpoint stretches, each its own program (0 = as many as the forward would take, see
    `lane_segments`), after a summary launch that hands each piece the adjoint entering it from the later ones:
    more programs where batch × channel blocks × paths leave the GPU idle (long sequences at a small batch), for one
    more pass over Δ, C and dy; `max_regs`: registers a thread may hold in the main kernel (0 = the compiler's
    choice), spilling the rest to local memory for more warps an SM."""
    import torch

    from .selective_scan_lane import lane_segments

    tile = min(tile, ck)
    if ck % tile:
        raise ValueError(f"lane backward: the checkpoint stretch ({ck}) must be a multiple of the tile ({tile})")
    if segments < 0:
        raise ValueError(f"lane backward: segments must be ≥ 0 (0 = chosen from the lane count), got {segments}")
    u = inputs[0]
    dblocks = triton.cdiv(dim, bd)
    nseg = lane_segments(segments, u.shape[0] * dblocks * n_paths * warps * 32, nchunk, u.device)
    seglen = triton.cdiv(nchunk, nseg) * ck
    nseg = triton.cdiv(length, seglen)
    grid = (u.shape[0], dblocks, n_paths * nseg)
    np2 = flags["NP"]
    scratch = (torch.empty((grid[0] * grid[1] * grid[2], ck // tile, np2, bd), device=u.device, dtype=torch.float32)
               if ck > tile else outs[2])
    red = min(red, bd)
    if bc_scatter and flags["NP"] > bd:
        raise ValueError(f"bwd_bc='scatter' needs at least as many channels a program ({bd}) as padded states "
                         f"({flags['NP']})")
    outs, sbc_k = list(outs), 0
    if bc_partial:  # (slots, *dB's shape) with dB's strides per slot
        db, dc = outs[3], outs[4]
        slots = grid[1] * (bd // red)
        outs[3], outs[4] = (torch.empty_strided((slots, *t.shape), (t.numel(), *t.stride()), device=t.device,
                                                dtype=t.dtype) for t in (db, dc))
        sbc_k = db.numel()
    f32 = torch.float32
    segg = torch.empty((u.shape[0], n_paths, nseg, np2, dim), device=u.device, dtype=f32) if nseg > 1 else scratch
    segd = torch.empty((u.shape[0], n_paths, nseg, dim), device=u.device, dtype=f32) if nseg > 1 else scratch
    if nseg > 1:  # inputs: u, Δ, A, B, C, D, Δ-bias, z, paths, dout, …
        keep = ("N", "NP", "HAS_DTB", "HAS_Z", "SOFTPLUS", "HAS_PATHS")
        _scan_bwd_lane_summary_kernel[(grid[0], dblocks, n_paths * (nseg - 1))](
            inputs[0], inputs[1], inputs[2], inputs[4], inputs[6], inputs[7], inputs[8], inputs[9], segg, segd,
            length, dim, float(scale), n_paths, seglen, nseg, *strides, 0, BD=bd, T=tile, VEC_BC=vec_bc,
            CH_UNIT=channel_unit, num_warps=warps, **{k: v for k, v in flags.items() if k in keep})
    _scan_bwd_lane_kernel[grid](*inputs, scratch, segg, segd, *outs, length, dim, nchunk, float(scale), n_paths,
                                seglen, nseg, *strides, 0, sbc_k, BD=bd, CK=ck, T=tile, VEC_BC=vec_bc, RED=red,
                                BC_PARTIAL=bc_partial, CH_UNIT=channel_unit, BC_RS=bc_scatter,
                                SEGMENTED=nseg > 1, num_warps=warps, **flags,
                                **({"maxnreg": max_regs} if max_regs else {}))
    if bc_partial:
        torch.sum(outs[3], 0, out=db)
        torch.sum(outs[4], 0, out=dc)


__all__ = ["launch_lane_bwd"]
