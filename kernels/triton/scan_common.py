"""Triton helpers shared by the two selective-scan variants."""

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
