"""Triton helpers shared by the selective-scan kernels (chunk, seq, lane forward and lane backward)."""

import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)), with log1p(w) = log(1 + w) · w / ((1 + w) − 1) (exact where 1 + w rounds).
    w = tl.exp(-tl.abs(x))
    one_w = 1.0 + w
    denom = tl.where(one_w == 1.0, 1.0, one_w - 1.0)
    l1p = tl.where(one_w == 1.0, w, tl.log(one_w) * (w / denom))
    return tl.maximum(x, 0.0) + l1p


@triton.jit
def _step_u_dt(U, DT, PATHS, p, t, valid, offs_d, mask_d, u_base, dt_base, dtb, su_l, su_d, sdt_l, sdt_d, sp_p, sp_l,
               HAS_PATHS: tl.constexpr, HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """One step's (pos, u, Δ, pre-softplus Δ) for a channel vector; steps past L give Δ = 0 (the state passes)."""
    if HAS_PATHS:
        pos = tl.load(PATHS + p * sp_p + t * sp_l, mask=valid, other=0)
    else:
        pos = t
    md = mask_d & valid
    u = tl.load(U + u_base + offs_d * su_d + pos * su_l, mask=md, other=0.0).to(tl.float32)
    dt = tl.load(DT + dt_base + offs_d * sdt_d + pos * sdt_l, mask=md, other=0.0).to(tl.float32)
    if HAS_DTB:
        dt = dt + dtb
    dt_raw = dt
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(md, dt, 0.0)
    return pos, u, dt, dt_raw


@triton.jit
def _merge_store(OUT, ACC, ooff, y, mask, pi, n_iter, ATOMIC: tl.constexpr, PATH_LOOP: tl.constexpr):
    """Write one tile of a path's output: fp32 atomics (paths in separate programs), or the path loop's fp32 buffer
    (the last path adds it and writes the output dtype), or a plain store (one path)."""
    if ATOMIC:
        tl.atomic_add(OUT + ooff, y, mask=mask, sem="relaxed")
    elif PATH_LOOP:
        if pi > 0:
            y += tl.load(ACC + ooff, mask=mask, other=0.0)
        if pi == n_iter - 1:
            tl.store(OUT + ooff, y.to(OUT.dtype.element_ty), mask=mask)
        else:
            tl.store(ACC + ooff, y, mask=mask)
    else:
        tl.store(OUT + ooff, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _bc_row(Ptr, base, pos, s_n, s_l, offs_n, mask_n, valid, zero_nd, VEC: tl.constexpr, FULL_N: tl.constexpr):
    """B_t or C_t (the N values shared by all channels at one step) in fp32, shaped to broadcast against the lane
    kernels' (NP, BD) state. With VEC > 1 the launcher has checked that the row is contiguous (s_n = 1) and that
    every row offset and the base pointer are VEC-element aligned: a 1-D load then compiles to 16-byte vector loads
    (each lane reads the whole row; the warp's identical addresses are one transaction) and is broadcast over the
    lanes as (NP, 1). Otherwise a (NP, BD) load in the state's layout (one scalar load per state)."""
    if VEC > 1:
        off = tl.multiple_of(base + pos * s_l, VEC)
        if FULL_N:
            row = tl.load(Ptr + off + offs_n, mask=valid, other=0.0)
        else:
            row = tl.load(Ptr + off + offs_n, mask=mask_n & valid, other=0.0)
        return row.to(tl.float32)[:, None]
    else:
        mn = (mask_n & valid)[:, None] & (zero_nd == 0)
        return tl.load(Ptr + base + offs_n[:, None] * s_n + pos * s_l + zero_nd, mask=mn, other=0.0).to(tl.float32)


@triton.jit
def _gate_dy(DOUT, Z, b64, offs_d, pos, md, scale, so_b, so_d, so_l, sz_b, sz_d, sz_l, HAS_Z: tl.constexpr):
    """One step's upstream gradient for a channel vector: (scale · dout, dy = scale · dout · silu(z), z, σ(z)); without
    a gate dy = scale · dout (z and σ(z) are then placeholders)."""
    dout = tl.load(DOUT + b64 * so_b + offs_d * so_d + pos * so_l, mask=md, other=0.0).to(tl.float32) * scale
    if HAS_Z:
        z = tl.load(Z + b64 * sz_b + offs_d * sz_d + pos * sz_l, mask=md, other=0.0).to(tl.float32)
        sig = tl.sigmoid(z)
        return dout, dout * (z * sig), z, sig
    return dout, dout, dout, dout


@triton.jit
def _store_dz(DZ, b64, offs_d, pos, md, dout, y, z, sig, sz_b, sz_d, sz_l, ATOMIC_Z: tl.constexpr):
    """dz = scale · dout · y · silu'(z) for one step: fp32 atomics when several programs add to it, else a store."""
    dz = dout * y * sig * (1.0 + z * (1.0 - sig))
    zptr = DZ + b64 * sz_b + offs_d * sz_d + pos * sz_l
    if ATOMIC_Z:
        tl.atomic_add(zptr, dz, mask=md, sem="relaxed")
    else:
        tl.store(zptr, dz.to(DZ.dtype.element_ty), mask=md)


@triton.jit
def _load_step_inputs(U, DT, DTB, b64, p, offs_d, mask_d, pos, mask_t,
                      su_b, su_p, su_d, su_l, sdt_b, sdt_p, sdt_d, sdt_l, sdb_p, sdb_d,
                      HAS_DTB: tl.constexpr, SOFTPLUS: tl.constexpr):
    """u and Δ tiles (BD, T) in fp32 at the path's positions; returns (u, Δ, pre-softplus Δ)."""
    m2 = mask_d[:, None] & mask_t[None, :]
    u = tl.load(U + b64 * su_b + p * su_p + offs_d[:, None] * su_d + pos[None, :] * su_l, mask=m2, other=0.0)
    dt = tl.load(DT + b64 * sdt_b + p * sdt_p + offs_d[:, None] * sdt_d + pos[None, :] * sdt_l, mask=m2, other=0.0)
    dt = dt.to(tl.float32)
    if HAS_DTB:
        bias = tl.load(DTB + p * sdb_p + offs_d * sdb_d, mask=mask_d, other=0.0).to(tl.float32)
        dt = dt + bias[:, None]
    dt_raw = dt
    if SOFTPLUS:
        dt = _softplus(dt)
    dt = tl.where(m2, dt, 0.0)  # masked steps: a = 1, Δ B u = 0, so the state passes through unchanged
    return u.to(tl.float32), dt, dt_raw
