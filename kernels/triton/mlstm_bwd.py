"""Triton backward of the mLSTM cell, in the flash-attention pattern: (t, s) tiles recomputed on the fly, O(L) memory.

With S_ts = scale q_t·k_s, log D_ts = F_t − F_s + ĩ_s (s ≤ t), m_t = max_s log D_ts, E_ts = e^{log D_ts − m_t},
W = S ∘ E, den_t = Σ_s W_ts, N_t = max(|den_t|, e^{−m_t}) + ε and h_t = Σ_s W_ts v_s / N_t, the forward saves m_t and
den_t per row. With dN_t = −(dh_t·h_t)/N_t:

    dden_t = dN_t · sign(den_t) · [|den_t| > e^{−m_t}]
    dW_ts  = (dh_t·v_s)/N_t + dden_t,    dS = dW ∘ E,    G = dW ∘ W  (= ∂loss/∂ log D through E)
    dv_s   = Σ_t W_ts dh_t / N_t,        dk_s = scale Σ_t dS_ts q_t,    dq_t = scale Σ_s dS_ts k_s
    dm_t   = −Σ_s G_ts − dN_t e^{−m_t} [|den_t| ≤ e^{−m_t}]            (m_t reaches log D at its arg-max s*_t)
    dĩ_s   = Σ_t G_ts + Σ_{t: s*_t = s} dm_t
    dF_t   = Σ_s G_ts − Σ_{t'} G_{t' t} + dm_t − Σ_{t': s*_{t'} = t} dm_{t'},   df̃_τ = σ(−f̃_τ) Σ_{t ≥ τ} dF_t

Kernel `_dkv` runs one program per key block and walks the query blocks at and after it (dk, dv, column sums of G);
kernel `_dq` runs one program per query block and walks the key blocks up to it (dq, row sums of G, the arg-max s*).
The O(L) pieces (dN, dden, dm, the scatter to s*, the reverse cumulative sum) are PyTorch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .memory_order import like_layout


@triton.jit
def _tile(q_t, k_s, dh_t, v_s, f_t, f_s, i_s, m_t, inv_n, dden, t, s, mask_t, mask_s, scale, PREC: tl.constexpr):
    """Shared (t, s) tile math: returns (W, dS, G, log D masked to −inf outside the causal, valid region)."""
    valid = (t[:, None] >= s[None, :]) & mask_t[:, None] & mask_s[None, :]
    logd = tl.where(valid, f_t[:, None] - f_s[None, :] + i_s[None, :], -float("inf"))
    e = tl.where(valid, tl.exp(logd - m_t[:, None]), 0.0)
    sc = tl.dot(q_t, tl.trans(k_s), input_precision=PREC) * scale
    w = sc * e
    dw = tl.dot(dh_t, tl.trans(v_s), input_precision=PREC) * inv_n[:, None] + dden[:, None]
    return w, dw * e, dw * w, logd


@triton.jit
def _query_rows(Q, DH, FC, M, INVN, DDEN, bh, t, rq, rdh, mask_t, ok, mk, ov, mv, L, sq_d, sdh_d):
    """A query block's tiles and per-row values: (q_t, dh_t, F_t, m_t, 1/N_t, dden_t), fp32. Q and DH point at this
    (batch, head); rq, rdh are the block's row offsets in them (step t's memory row times the row stride); the
    per-row values are in path order."""
    q_t = tl.load(Q + rq[:, None] + ok[None, :] * sq_d, mask=mask_t[:, None] & mk[None, :], other=0.0)
    dh_t = tl.load(DH + rdh[:, None] + ov[None, :] * sdh_d, mask=mask_t[:, None] & mv[None, :], other=0.0)
    f_t = tl.load(FC + bh * L + t, mask=mask_t, other=0.0)
    m_t = tl.load(M + bh * L + t, mask=mask_t, other=0.0)
    inv_n = tl.load(INVN + bh * L + t, mask=mask_t, other=0.0)
    dden = tl.load(DDEN + bh * L + t, mask=mask_t, other=0.0)
    return q_t.to(tl.float32), dh_t.to(tl.float32), f_t, m_t, inv_n, dden


@triton.jit
def _key_rows(K, V, FC, IG, bh, s, rk, rv, mask_s, ok, mk, ov, mv, L, sk_d, sv_d):
    """A key block's tiles and per-row values: (k_s, v_s, F_s, ĩ_s), fp32 (addressing as `_query_rows`)."""
    k_s = tl.load(K + rk[:, None] + ok[None, :] * sk_d, mask=mask_s[:, None] & mk[None, :], other=0.0)
    v_s = tl.load(V + rv[:, None] + ov[None, :] * sv_d, mask=mask_s[:, None] & mv[None, :], other=0.0)
    f_s = tl.load(FC + bh * L + s, mask=mask_s, other=0.0)
    i_s = tl.load(IG + bh * L + s, mask=mask_s, other=0.0)
    return k_s.to(tl.float32), v_s.to(tl.float32), f_s, i_s


@triton.jit
def _rows(t, L, REVERSE: tl.constexpr):
    """Memory rows of path steps t."""
    return L - 1 - t if REVERSE else t


@triton.jit
def _mlstm_dkv_kernel(Q, K, V, DH, FC, IG, M, INVN, DDEN, DK, DV, GCOL, L, NHEADS, DQK, DVV, scale,
                      sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                      sdh_b, sdh_h, sdh_l, sdh_d, sdk_b, sdk_h, sdk_l, sdk_d, sdv_b, sdv_h, sdv_l, sdv_d,
                      BT: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
                      REVERSE: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    bi, hi = bh // NHEADS, bh % NHEADS
    Q += bi * sq_b + hi * sq_h
    K += bi * sk_b + hi * sk_h
    V += bi * sv_b + hi * sv_h
    DH += bi * sdh_b + hi * sdh_h
    DK += bi * sdk_b + hi * sdk_h
    DV += bi * sdv_b + hi * sdv_h
    s = tl.program_id(1) * BT + tl.arange(0, BT)
    mask_s = s < L
    rs = _rows(s, L, REVERSE)
    ok, ov = tl.arange(0, DKP), tl.arange(0, DVP)
    mk, mv = ok < DQK, ov < DVV
    k_s, v_s, f_s, i_s = _key_rows(K, V, FC, IG, bh, s, rs * sk_l, rs * sv_l, mask_s, ok, mk, ov, mv, L, sk_d, sv_d)
    dk = tl.zeros((BT, DKP), dtype=tl.float32)
    dv = tl.zeros((BT, DVP), dtype=tl.float32)
    gcol = tl.zeros((BT,), dtype=tl.float32)
    for t0 in range(tl.program_id(1) * BT, L, BT):
        t = t0 + tl.arange(0, BT)
        mask_t = t < L
        rt = _rows(t, L, REVERSE)
        q_t, dh_t, f_t, m_t, inv_n, dden = _query_rows(Q, DH, FC, M, INVN, DDEN, bh, t, rt * sq_l, rt * sdh_l, mask_t,
                                                       ok, mk, ov, mv, L, sq_d, sdh_d)
        w, ds, g, _ = _tile(q_t, k_s, dh_t, v_s, f_t, f_s, i_s, m_t, inv_n, dden, t, s, mask_t, mask_s, scale, PREC)
        dv += tl.dot(tl.trans(w * inv_n[:, None]), dh_t, input_precision=PREC)
        dk += tl.dot(tl.trans(ds), q_t, input_precision=PREC) * scale
        gcol += tl.sum(g, 0)
    tl.store(DK + rs[:, None] * sdk_l + ok[None, :] * sdk_d, dk.to(DK.dtype.element_ty),
             mask=mask_s[:, None] & mk[None, :])
    tl.store(DV + rs[:, None] * sdv_l + ov[None, :] * sdv_d, dv.to(DV.dtype.element_ty),
             mask=mask_s[:, None] & mv[None, :])
    tl.store(GCOL + bh * L + s, gcol, mask=mask_s)


@triton.jit
def _mlstm_dq_kernel(Q, K, V, DH, FC, IG, M, INVN, DDEN, DQ, GROW, ARGM, L, NHEADS, DQK, DVV, scale,
                     sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d,
                     sdh_b, sdh_h, sdh_l, sdh_d, sdq_b, sdq_h, sdq_l, sdq_d,
                     BT: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr,
                     REVERSE: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    bi, hi = bh // NHEADS, bh % NHEADS
    Q += bi * sq_b + hi * sq_h
    K += bi * sk_b + hi * sk_h
    V += bi * sv_b + hi * sv_h
    DH += bi * sdh_b + hi * sdh_h
    DQ += bi * sdq_b + hi * sdq_h
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    mask_t = t < L
    rt = _rows(t, L, REVERSE)
    ok, ov = tl.arange(0, DKP), tl.arange(0, DVP)
    mk, mv = ok < DQK, ov < DVV
    q_t, dh_t, f_t, m_t, inv_n, dden = _query_rows(Q, DH, FC, M, INVN, DDEN, bh, t, rt * sq_l, rt * sdh_l, mask_t,
                                                   ok, mk, ov, mv, L, sq_d, sdh_d)
    dq = tl.zeros((BT, DKP), dtype=tl.float32)
    grow = tl.zeros((BT,), dtype=tl.float32)
    best = tl.full((BT,), -float("inf"), dtype=tl.float32)
    best_at = tl.zeros((BT,), dtype=tl.int32)
    for s0 in range(0, (tl.program_id(1) + 1) * BT, BT):
        s = s0 + tl.arange(0, BT)
        mask_s = s < L
        rs = _rows(s, L, REVERSE)
        k_s, v_s, f_s, i_s = _key_rows(K, V, FC, IG, bh, s, rs * sk_l, rs * sv_l, mask_s, ok, mk, ov, mv, L, sk_d,
                                       sv_d)
        _, ds, g, logd = _tile(q_t, k_s, dh_t, v_s, f_t, f_s, i_s, m_t, inv_n, dden, t, s, mask_t, mask_s, scale,
                               PREC)
        dq += tl.dot(ds, k_s, input_precision=PREC) * scale
        grow += tl.sum(g, 1)
        tile_best = tl.max(logd, 1)
        tile_at = tl.argmax(logd, 1).to(tl.int32) + s0
        better = tile_best > best
        best_at = tl.where(better, tile_at, best_at)
        best = tl.where(better, tile_best, best)
    tl.store(DQ + rt[:, None] * sdq_l + ok[None, :] * sdq_d, dq.to(DQ.dtype.element_ty),
             mask=mask_t[:, None] & mk[None, :])
    tl.store(GROW + bh * L + t, grow, mask=mask_t)
    tl.store(ARGM + bh * L + t, best_at, mask=mask_t)


@triton.jit
def _mlstm_rows_kernel(DH, H, M, DEN, DN, DDEN, INVN, L, NHEADS, DVV, eps,
                       sdh_b, sdh_h, sdh_l, sdh_d, sh_b, sh_h, sh_l, sh_d,
                       BT: tl.constexpr, DVP: tl.constexpr, REVERSE: tl.constexpr):
    """Per row, in path order: dN_t = −(dh_t·h_t)/N_t, dden_t and 1/N_t (one read of dh and h, no fp32 copies)."""
    bh = tl.program_id(0).to(tl.int64)
    bi, hi = bh // NHEADS, bh % NHEADS
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    mask_t = t < L
    rt = _rows(t, L, REVERSE)
    ov = tl.arange(0, DVP)
    mask = mask_t[:, None] & (ov < DVV)[None, :]
    dh = tl.load(DH + bi * sdh_b + hi * sdh_h + rt[:, None] * sdh_l + ov[None, :] * sdh_d, mask=mask, other=0.0)
    h = tl.load(H + bi * sh_b + hi * sh_h + rt[:, None] * sh_l + ov[None, :] * sh_d, mask=mask, other=0.0)
    dot = tl.sum(dh.to(tl.float32) * h.to(tl.float32), 1)
    m = tl.load(M + bh * L + t, mask=mask_t, other=0.0)
    den = tl.load(DEN + bh * L + t, mask=mask_t, other=1.0)
    floor = tl.exp(-m)
    n = tl.maximum(tl.abs(den), floor) + eps
    dn = -dot / n
    sign = tl.where(den > 0, 1.0, tl.where(den < 0, -1.0, 0.0))
    tl.store(DN + bh * L + t, dn, mask=mask_t)
    tl.store(DDEN + bh * L + t, tl.where(tl.abs(den) > floor, dn * sign, 0.0), mask=mask_t)
    tl.store(INVN + bh * L + t, 1.0 / n, mask=mask_t)


def default_tile(length: int, head_width: int) -> tuple[int, int]:
    """(tile side, warps) of the backward. For heads padded to ≥ 128 (ViL-T's 96), from the H100 sweep
    (`bench_mlstm.py --bwd-sweep`): 64 × 64 tiles spill registers (offline SASS: 249 local loads in the dkv kernel);
    16 / 4 warps is fastest at 196 tokens (1.27×), 32 / 4 warps at 6,084 (2.39×) and even at 729. Smaller heads keep
    the 64-wide tile (not re-measured)."""
    if head_width < 128:
        return 64, 4
    return (16, 4) if length <= 256 else (32, 4)


def mlstm_bwd_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                     h: torch.Tensor, dh: torch.Tensor, m: torch.Tensor, den: torch.Tensor, eps: float = 1e-6,
                     block: int | None = None, warps: int | None = None, reverse: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv, di, df) of the mLSTM cell; m, den: (b·h, L) fp32 in path order, saved by the forward.
    q, k, v, h, dh may have any strides; dq, dk, dv come back in their inputs' dtype and memory order (written by the
    kernels, no fp32 copies). `block` = the (t, s) tile side and `warps` per program; None = `default_tile`.
    `reverse`: the forward ran the rows from last to first."""
    bsz, heads, length, dqk = q.shape
    dvv = v.shape[-1]
    bh = bsz * heads
    f32 = torch.float32

    def path_rows(x: torch.Tensor) -> torch.Tensor:  # (b, h, L) gates → (b·h, L) fp32 in path order
        x = x.flip(-1) if reverse else x
        return x.reshape(bh, length).to(f32).contiguous()

    fpath = path_rows(f)
    fc = F.logsigmoid(fpath).cumsum(-1)
    ig = path_rows(i)
    dkp, dvp = max(16, triton.next_power_of_2(dqk)), max(16, triton.next_power_of_2(dvv))
    dn, dden, inv_n = (torch.empty((bh, length), device=q.device, dtype=f32) for _ in range(3))
    _mlstm_rows_kernel[(bh, triton.cdiv(length, 32))](dh, h, m, den, dn, dden, inv_n, length, heads, dvv, eps,
                                                      *dh.stride(), *h.stride(), BT=32, DVP=dvp, REVERSE=reverse)
    dq, dk, dv = like_layout(q), like_layout(k), like_layout(v)
    gcol, grow = torch.empty((bh, length), device=q.device, dtype=f32), torch.empty((bh, length), device=q.device,
                                                                                     dtype=f32)
    argm = torch.empty((bh, length), device=q.device, dtype=torch.int32)
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    scale = 1.0 / math.sqrt(dqk)
    common = (q, k, v, dh, fc, ig, m, inv_n, dden)
    strides = (*q.stride(), *k.stride(), *v.stride(), *dh.stride())
    auto_block, auto_warps = default_tile(length, max(dkp, dvp))
    block, warps = block or auto_block, warps or auto_warps
    grid = (bh, triton.cdiv(length, block))
    opts = dict(BT=block, DKP=dkp, DVP=dvp, PREC=prec, REVERSE=reverse, num_warps=warps)
    _mlstm_dkv_kernel[grid](*common, dk, dv, gcol, length, heads, dqk, dvv, scale, *strides, *dk.stride(),
                            *dv.stride(), **opts)
    _mlstm_dq_kernel[grid](*common, dq, grow, argm, length, heads, dqk, dvv, scale, *strides, *dq.stride(), **opts)
    floor = torch.exp(-m)
    dm = -grow - dn * floor * (den.abs() <= floor)
    argm = argm.long()
    di = gcol.scatter_add(-1, argm, dm)
    d_fc = grow - gcol + dm - torch.zeros_like(dm).scatter_add(-1, argm, dm)
    dlogf = d_fc.flip(-1).cumsum(-1).flip(-1)
    df = dlogf * torch.sigmoid(-fpath)

    def gate_grad(g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:  # path order → the gate's own order
        g = g.view(bsz, heads, length)
        return (g.flip(-1) if reverse else g).to(like.dtype)

    return dq, dk, dv, gate_grad(di, i), gate_grad(df, f)


__all__ = ["mlstm_bwd_triton"]
