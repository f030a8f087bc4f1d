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
def _query_rows(Q, DH, FC, M, INVN, DDEN, bh, t, mask_t, ok, mk, ov, mv, L, DQK, DVV):
    """A query block's tiles and per-row values: (q_t, dh_t, F_t, m_t, 1/N_t, dden_t), fp32."""
    q_t = tl.load(Q + bh * L * DQK + t[:, None] * DQK + ok[None, :], mask=mask_t[:, None] & mk[None, :], other=0.0)
    dh_t = tl.load(DH + bh * L * DVV + t[:, None] * DVV + ov[None, :], mask=mask_t[:, None] & mv[None, :],
                   other=0.0)
    f_t = tl.load(FC + bh * L + t, mask=mask_t, other=0.0)
    m_t = tl.load(M + bh * L + t, mask=mask_t, other=0.0)
    inv_n = tl.load(INVN + bh * L + t, mask=mask_t, other=0.0)
    dden = tl.load(DDEN + bh * L + t, mask=mask_t, other=0.0)
    return q_t.to(tl.float32), dh_t.to(tl.float32), f_t, m_t, inv_n, dden


@triton.jit
def _key_rows(K, V, FC, IG, bh, s, mask_s, ok, mk, ov, mv, L, DQK, DVV):
    """A key block's tiles and per-row values: (k_s, v_s, F_s, ĩ_s), fp32."""
    k_s = tl.load(K + bh * L * DQK + s[:, None] * DQK + ok[None, :], mask=mask_s[:, None] & mk[None, :], other=0.0)
    v_s = tl.load(V + bh * L * DVV + s[:, None] * DVV + ov[None, :], mask=mask_s[:, None] & mv[None, :], other=0.0)
    f_s = tl.load(FC + bh * L + s, mask=mask_s, other=0.0)
    i_s = tl.load(IG + bh * L + s, mask=mask_s, other=0.0)
    return k_s.to(tl.float32), v_s.to(tl.float32), f_s, i_s


@triton.jit
def _mlstm_dkv_kernel(Q, K, V, DH, FC, IG, M, INVN, DDEN, DK, DV, GCOL, L, DQK, DVV, scale,
                      BT: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    s = tl.program_id(1) * BT + tl.arange(0, BT)
    mask_s = s < L
    ok, ov = tl.arange(0, DKP), tl.arange(0, DVP)
    mk, mv = ok < DQK, ov < DVV
    k_s, v_s, f_s, i_s = _key_rows(K, V, FC, IG, bh, s, mask_s, ok, mk, ov, mv, L, DQK, DVV)
    dk = tl.zeros((BT, DKP), dtype=tl.float32)
    dv = tl.zeros((BT, DVP), dtype=tl.float32)
    gcol = tl.zeros((BT,), dtype=tl.float32)
    for t0 in range(tl.program_id(1) * BT, L, BT):
        t = t0 + tl.arange(0, BT)
        mask_t = t < L
        q_t, dh_t, f_t, m_t, inv_n, dden = _query_rows(Q, DH, FC, M, INVN, DDEN, bh, t, mask_t, ok, mk, ov, mv, L,
                                                       DQK, DVV)
        w, ds, g, _ = _tile(q_t, k_s, dh_t, v_s, f_t, f_s, i_s, m_t, inv_n, dden, t, s, mask_t, mask_s, scale, PREC)
        dv += tl.dot(tl.trans(w * inv_n[:, None]), dh_t, input_precision=PREC)
        dk += tl.dot(tl.trans(ds), q_t, input_precision=PREC) * scale
        gcol += tl.sum(g, 0)
    tl.store(DK + bh * L * DQK + s[:, None] * DQK + ok[None, :], dk, mask=mask_s[:, None] & mk[None, :])
    tl.store(DV + bh * L * DVV + s[:, None] * DVV + ov[None, :], dv, mask=mask_s[:, None] & mv[None, :])
    tl.store(GCOL + bh * L + s, gcol, mask=mask_s)


@triton.jit
def _mlstm_dq_kernel(Q, K, V, DH, FC, IG, M, INVN, DDEN, DQ, GROW, ARGM, L, DQK, DVV, scale,
                     BT: tl.constexpr, DKP: tl.constexpr, DVP: tl.constexpr, PREC: tl.constexpr):
    bh = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1) * BT + tl.arange(0, BT)
    mask_t = t < L
    ok, ov = tl.arange(0, DKP), tl.arange(0, DVP)
    mk, mv = ok < DQK, ov < DVV
    q_t, dh_t, f_t, m_t, inv_n, dden = _query_rows(Q, DH, FC, M, INVN, DDEN, bh, t, mask_t, ok, mk, ov, mv, L, DQK,
                                                   DVV)
    dq = tl.zeros((BT, DKP), dtype=tl.float32)
    grow = tl.zeros((BT,), dtype=tl.float32)
    best = tl.full((BT,), -float("inf"), dtype=tl.float32)
    best_at = tl.zeros((BT,), dtype=tl.int32)
    for s0 in range(0, (tl.program_id(1) + 1) * BT, BT):
        s = s0 + tl.arange(0, BT)
        mask_s = s < L
        k_s, v_s, f_s, i_s = _key_rows(K, V, FC, IG, bh, s, mask_s, ok, mk, ov, mv, L, DQK, DVV)
        _, ds, g, logd = _tile(q_t, k_s, dh_t, v_s, f_t, f_s, i_s, m_t, inv_n, dden, t, s, mask_t, mask_s, scale,
                               PREC)
        dq += tl.dot(ds, k_s, input_precision=PREC) * scale
        grow += tl.sum(g, 1)
        tile_best = tl.max(logd, 1)
        tile_at = tl.argmax(logd, 1).to(tl.int32) + s0
        better = tile_best > best
        best_at = tl.where(better, tile_at, best_at)
        best = tl.where(better, tile_best, best)
    tl.store(DQ + bh * L * DQK + t[:, None] * DQK + ok[None, :], dq, mask=mask_t[:, None] & mk[None, :])
    tl.store(GROW + bh * L + t, grow, mask=mask_t)
    tl.store(ARGM + bh * L + t, best_at, mask=mask_t)


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
                     block: int | None = None, warps: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (dq, dk, dv, di, df) of the mLSTM cell; m, den: (b·h, L) fp32 saved by the forward. `block` = the
    (t, s) tile side and `warps` per program; None = `default_tile`."""
    bsz, heads, length, dqk = q.shape
    dvv = v.shape[-1]
    bh = bsz * heads
    q3, k3, v3, dh3 = (x.reshape(bh, length, x.shape[-1]).contiguous() for x in (q, k, v, dh))
    f32 = torch.float32
    fc = F.logsigmoid(f.reshape(bh, length).to(f32)).cumsum(-1).contiguous()
    ig = i.reshape(bh, length).to(f32).contiguous()
    floor = torch.exp(-m)
    n = torch.maximum(den.abs(), floor) + eps
    dn = -(dh3.to(f32) * h.reshape(bh, length, dvv).to(f32)).sum(-1) / n
    on_den = den.abs() > floor
    dden = (dn * torch.sign(den) * on_den).contiguous()
    inv_n = (1.0 / n).contiguous()
    dq = torch.empty((bh, length, dqk), device=q.device, dtype=f32)
    dk, dv = torch.empty_like(dq), torch.empty((bh, length, dvv), device=q.device, dtype=f32)
    gcol, grow = torch.empty((bh, length), device=q.device, dtype=f32), torch.empty((bh, length), device=q.device,
                                                                                     dtype=f32)
    argm = torch.empty((bh, length), device=q.device, dtype=torch.int32)
    dkp, dvp = max(16, triton.next_power_of_2(dqk)), max(16, triton.next_power_of_2(dvv))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    scale = 1.0 / math.sqrt(dqk)
    common = (q3, k3, v3, dh3, fc, ig, m, inv_n, dden)
    auto_block, auto_warps = default_tile(length, max(dkp, dvp))
    block, warps = block or auto_block, warps or auto_warps
    grid = (bh, triton.cdiv(length, block))
    _mlstm_dkv_kernel[grid](*common, dk, dv, gcol, length, dqk, dvv, scale, BT=block, DKP=dkp, DVP=dvp, PREC=prec,
                            num_warps=warps)
    _mlstm_dq_kernel[grid](*common, dq, grow, argm, length, dqk, dvv, scale, BT=block, DKP=dkp, DVP=dvp, PREC=prec,
                           num_warps=warps)
    dm = -grow - dn * floor * (~on_den)
    argm = argm.long()
    di = gcol.scatter_add(-1, argm, dm)
    d_fc = grow - gcol + dm - torch.zeros_like(dm).scatter_add(-1, argm, dm)
    dlogf = d_fc.flip(-1).cumsum(-1).flip(-1)
    df = dlogf * torch.sigmoid(-f.reshape(bh, length).to(f32))
    shape4 = lambda x: x.view(bsz, heads, length, -1)  # noqa: E731
    return (shape4(dq).to(q.dtype), shape4(dk).to(k.dtype), shape4(dv).to(v.dtype),
            di.view(bsz, heads, length).to(i.dtype), df.view(bsz, heads, length).to(f.dtype))


__all__ = ["mlstm_bwd_triton"]
