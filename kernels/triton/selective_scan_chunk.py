"""The chunk variant's Triton kernels of the route-fused selective scan (`selective_scan.py` holds the math, the
launchers and the autograd wrapper; `selective_scan_lane*.py` and `selective_scan_seq.py` the other variants).

Inside a program the sequence is processed in chunks of T steps; a chunk is one `tl.associative_scan` of the pairs
(a_t, Δ_t B_t u_t) under (a1, b1)∘(a2, b2) = (a1 a2, a2 b1 + b2), seeded with the carried state. The forward keeps the
state at every chunk start; the backward recomputes h chunk by chunk from those states and runs the adjoint as a
reverse associative scan.
"""

from __future__ import annotations

import triton
import triton.language as tl

from .scan_common import _combine, _load_step_inputs, _merge_store


@triton.jit
def _scan_fwd_kernel(
    U, DT, A, Bm, Cm, Dv, DTB, Z, PATHS, OUT, HS, LAST, ACC,
    L, DIM, NCHUNK, scale, NPATHS,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PATHS: tl.constexpr, ATOMIC: tl.constexpr, SAVE_STATES: tl.constexpr, SAVE_LAST: tl.constexpr,
    PATH_LOOP: tl.constexpr, HS_NMAJOR: tl.constexpr = False,
):
    b64 = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    npaths = NPATHS
    n_iter = NPATHS if PATH_LOOP else 1
    for pi in range(0, n_iter):  # PATH_LOOP: one program walks every path, adding in an fp32 buffer
        p = tl.program_id(2) + pi
        offs_d = pid_d * BD + tl.arange(0, BD)
        mask_d = offs_d < DIM
        offs_n = tl.arange(0, NP)
        mask_n = offs_n < N
        offs_t = tl.arange(0, T)
        a2 = tl.load(A + p * sa_p + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n,
                     mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32) * 1.4426950408889634
        if HAS_D:
            dvec = tl.load(Dv + p * sD_p + offs_d * sD_d, mask=mask_d, other=0.0).to(tl.float32)
        h = tl.zeros((BD, NP), dtype=tl.float32)
        hs_base = HS + ((b64 * npaths + p) * NCHUNK) * DIM * NP
        hs_off = offs_d[:, None] * NP + offs_n[None, :]
        # checkpoints in (dim, NP) memory for the chunk backward, (NP, dim) for the lane backward
        if HS_NMAJOR:
            ck_off = offs_n[None, :] * DIM + offs_d[:, None]
        else:
            ck_off = hs_off
        for c in range(0, NCHUNK):
            if SAVE_STATES:
                tl.store(hs_base + c * DIM * NP + ck_off, h, mask=mask_d[:, None])
            t = c * T + offs_t
            mask_t = t < L
            if HAS_PATHS:
                pos = tl.load(PATHS + p * sp_p + t * sp_l, mask=mask_t, other=0)
            else:
                pos = t
            u, dt, _ = _load_step_inputs(U, DT, DTB, b64, p, offs_d, mask_d, pos, mask_t,
                                         su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sdb_p, sdb_d,
                                         HAS_DTB, SOFTPLUS)
            mnt = mask_n[:, None] & mask_t[None, :]
            bt = tl.load(Bm + b64 * sb_b + p * sb_p + offs_n[:, None] * sb_n + pos[None, :] * sb_l,
                         mask=mnt, other=0.0).to(tl.float32)  # (NP, T)
            ct = tl.load(Cm + b64 * sc_b + p * sc_p + offs_n[:, None] * sc_n + pos[None, :] * sc_l,
                         mask=mnt, other=0.0).to(tl.float32)
            a = tl.exp2(dt[:, None, :] * a2[:, :, None])  # (BD, NP, T)
            bx = (dt * u)[:, None, :] * bt[None, :, :]
            acum, hloc = tl.associative_scan((a, bx), 2, _combine)
            hh = hloc + acum * h[:, :, None]
            y = tl.sum(hh * ct[None, :, :], axis=1)  # (BD, T)
            if HAS_D:
                y += dvec[:, None] * u
            m2 = mask_d[:, None] & mask_t[None, :]
            if HAS_Z:
                z = tl.load(Z + b64 * sz_b + offs_d[:, None] * sz_d + pos[None, :] * sz_l, mask=m2, other=0.0)
                z = z.to(tl.float32)
                y = y * (z * tl.sigmoid(z))
            y = y * scale
            ooff = b64 * so_b + offs_d[:, None] * so_d + pos[None, :] * so_l
            _merge_store(OUT, ACC, ooff, y, m2, pi, n_iter, ATOMIC, PATH_LOOP)
            h = tl.sum(tl.where(offs_t[None, None, :] == T - 1, hh, 0.0), axis=2)
        if SAVE_LAST:
            tl.store(LAST + ((b64 * npaths + p) * DIM) * NP + hs_off, h, mask=mask_d[:, None])


@triton.jit
def _scan_bwd_kernel(
    U, DT, A, Bm, Cm, Dv, DTB, Z, PATHS, DOUT, HS,
    DU, DDT, DA, DB, DC, DD, DDTB, DZ, DZACC,
    L, DIM, NCHUNK, scale, NPATHS,
    su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sa_p, sa_d, sa_n,
    sb_b, sb_p, sb_n, sb_l, sc_b, sc_p, sc_n, sc_l, sD_p, sD_d, sdb_p, sdb_d,
    sz_b, sz_d, sz_l, sp_p, sp_l, so_b, so_d, so_l, sg_b, sg_p, sg_d, sg_l, sbc_b, sbc_p, sbc_n, sbc_l,
    N: tl.constexpr, NP: tl.constexpr, BD: tl.constexpr, T: tl.constexpr,
    HAS_D: tl.constexpr, HAS_DTB: tl.constexpr, HAS_Z: tl.constexpr, SOFTPLUS: tl.constexpr,
    HAS_PATHS: tl.constexpr, ATOMIC_Z: tl.constexpr, PATH_LOOP: tl.constexpr,
):
    # Gradient layouts: DU, DDT (batch, P, dim, L) through strides sg_* (channel-last memory when the inputs are, see
    # scan_paths_bwd); DB, DC (batch, P, NP, L) fp32 through strides sbc_*; DA (P, dim, NP) fp32; DD, DDTB (P, dim)
    # fp32; DZ (batch, dim, L) with Z's strides.
    b64 = tl.program_id(0).to(tl.int64)
    pid_d = tl.program_id(1)
    npaths = NPATHS
    n_iter = NPATHS if PATH_LOOP else 1
    for pi in range(0, n_iter):  # PATH_LOOP: one program walks every path, adding in an fp32 buffer
        p = tl.program_id(2) + pi
        offs_d = pid_d * BD + tl.arange(0, BD)
        mask_d = offs_d < DIM
        offs_n = tl.arange(0, NP)
        mask_n = offs_n < N
        offs_t = tl.arange(0, T)
        a_nat = tl.load(A + p * sa_p + offs_d[:, None] * sa_d + offs_n[None, :] * sa_n,
                        mask=mask_d[:, None] & mask_n[None, :], other=0.0).to(tl.float32)
        a2 = a_nat * 1.4426950408889634
        if HAS_D:
            dvec = tl.load(Dv + p * sD_p + offs_d * sD_d, mask=mask_d, other=0.0).to(tl.float32)
        g_carry = tl.zeros((BD, NP), dtype=tl.float32)
        da_acc = tl.zeros((BD, NP), dtype=tl.float32)
        dd_acc = tl.zeros((BD,), dtype=tl.float32)
        ddtb_acc = tl.zeros((BD,), dtype=tl.float32)
        hs_base = HS + ((b64 * npaths + p) * NCHUNK) * DIM * NP
        hs_off = offs_d[:, None] * NP + offs_n[None, :]
        g_base = b64 * sg_b + p * sg_p
        bc_base = b64 * sbc_b + p * sbc_p
        for ci in range(0, NCHUNK):
            c = NCHUNK - 1 - ci
            t = c * T + offs_t
            mask_t = t < L
            mask_tn = (t + 1) < L
            if HAS_PATHS:
                pos = tl.load(PATHS + p * sp_p + t * sp_l, mask=mask_t, other=0)
                pos_n = tl.load(PATHS + p * sp_p + (t + 1) * sp_l, mask=mask_tn, other=0)
            else:
                pos = t
                pos_n = t + 1
            m2 = mask_d[:, None] & mask_t[None, :]
            u, dt, dt_raw = _load_step_inputs(U, DT, DTB, b64, p, offs_d, mask_d, pos, mask_t,
                                              su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sdb_p, sdb_d,
                                              HAS_DTB, SOFTPLUS)
            _, dt_n, _ = _load_step_inputs(U, DT, DTB, b64, p, offs_d, mask_d, pos_n, mask_tn,
                                           su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sdb_p, sdb_d,
                                           HAS_DTB, SOFTPLUS)
            mnt = mask_n[:, None] & mask_t[None, :]
            bt = tl.load(Bm + b64 * sb_b + p * sb_p + offs_n[:, None] * sb_n + pos[None, :] * sb_l,
                         mask=mnt, other=0.0).to(tl.float32)
            ct = tl.load(Cm + b64 * sc_b + p * sc_p + offs_n[:, None] * sc_n + pos[None, :] * sc_l,
                         mask=mnt, other=0.0).to(tl.float32)
            dout = tl.load(DOUT + b64 * so_b + offs_d[:, None] * so_d + pos[None, :] * so_l, mask=m2, other=0.0)
            dout = dout.to(tl.float32) * scale
            if HAS_Z:
                z = tl.load(Z + b64 * sz_b + offs_d[:, None] * sz_d + pos[None, :] * sz_l, mask=m2, other=0.0)
                z = z.to(tl.float32)
                sig = tl.sigmoid(z)
                dy = dout * (z * sig)
            else:
                dy = dout
            # recompute the chunk's states from the saved chunk-start state
            h0 = tl.load(hs_base + c * DIM * NP + hs_off, mask=mask_d[:, None], other=0.0)
            a = tl.exp2(dt[:, None, :] * a2[:, :, None])
            bx = (dt * u)[:, None, :] * bt[None, :, :]
            acum, hloc = tl.associative_scan((a, bx), 2, _combine)
            hh = hloc + acum * h0[:, :, None]
            if HAS_Z:
                y = tl.sum(hh * ct[None, :, :], axis=1)
                if HAS_D:
                    y += dvec[:, None] * u
                dz = dout * y * sig * (1.0 + z * (1.0 - sig))
                zoff = b64 * sz_b + offs_d[:, None] * sz_d + pos[None, :] * sz_l
                _merge_store(DZ, DZACC, zoff, dz, m2, pi, n_iter, ATOMIC_Z, PATH_LOOP)
            # reverse scan for the adjoint state
            alpha = tl.exp2(dt_n[:, None, :] * a2[:, :, None])
            cc = ct[None, :, :] * dy[:, None, :]
            aprod, gloc = tl.associative_scan((alpha, cc), 2, _combine, reverse=True)
            g = gloc + aprod * g_carry[:, :, None]
            g_carry = tl.sum(tl.where(offs_t[None, None, :] == 0, g, 0.0), axis=2)
            sum_gb = tl.sum(g * bt[None, :, :], axis=1)  # (BD, T)
            du = dt * sum_gb
            if HAS_D:
                du += dvec[:, None] * dy
                dd_acc += tl.sum(tl.where(m2, dy * u, 0.0), axis=1)
            hb = hh - bx  # a_t h_{t-1}
            ghb = g * hb
            ddt = u * sum_gb + tl.sum(ghb * a_nat[:, :, None], axis=1)
            da_acc += tl.sum(ghb * dt[:, None, :], axis=2)
            if SOFTPLUS:
                ddt = ddt * tl.sigmoid(dt_raw)
            ddt = tl.where(m2, ddt, 0.0)
            ddtb_acc += tl.sum(ddt, axis=1)
            gptr = g_base + offs_d[:, None] * sg_d + pos[None, :] * sg_l
            tl.store(DU + gptr, du.to(DU.dtype.element_ty), mask=m2)
            tl.store(DDT + gptr, ddt.to(DDT.dtype.element_ty), mask=m2)
            db = tl.sum(g * (dt * u)[:, None, :], axis=0)  # (NP, T)
            dc = tl.sum(hh * dy[:, None, :], axis=0)
            bcptr = bc_base + offs_n[:, None] * sbc_n + pos[None, :] * sbc_l
            tl.atomic_add(DB + bcptr, db, mask=mnt, sem="relaxed")
            tl.atomic_add(DC + bcptr, dc, mask=mnt, sem="relaxed")
        md = mask_d[:, None] & mask_n[None, :]
        tl.atomic_add(DA + (p * DIM + offs_d[:, None]) * NP + offs_n[None, :], da_acc, mask=md, sem="relaxed")
        if HAS_D:
            tl.atomic_add(DD + p * DIM + offs_d, dd_acc, mask=mask_d, sem="relaxed")
        if HAS_DTB:
            tl.atomic_add(DDTB + p * DIM + offs_d, ddtb_acc, mask=mask_d, sem="relaxed")
