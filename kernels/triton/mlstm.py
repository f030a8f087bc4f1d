"""Chunkwise mLSTM: a Triton forward, and a PyTorch chunkwise twin that gives the backward by recomputation.

Math (per batch and head; q, k of width dqk, v of width dv; ĩ, f̃ gate pre-activations; scale = 1/√dqk):

    F_t = Σ_{τ≤t} log σ(f̃_τ),   log D_ts = F_t − F_s + ĩ_s (s ≤ t),   m_t = max_s log D_ts
    h_t = Σ_s (scale q_t·k_s) e^{log D_ts − m_t} v_s / (max(|Σ_s (scale q_t·k_s) e^{log D_ts − m_t}|, e^{−m_t}) + ε)

Chunkwise (chunk length Lc; b_t = cumulative log σ(f̃) from the chunk start, b_last its value at the chunk end): the
state before chunk κ is (C, n, m) with C = Σ_{s<start} e^{F_{start−1} − F_s + ĩ_s − m} k_s v_sᵀ and n the same sum of
k_s, m the running max of those log weights. For a row t of the chunk

    m_t   = max(b_t + m, max_{s≤t in chunk} (b_t − b_s + ĩ_s))            (equals the parallel row max exactly)
    num_t = e^{b_t + m − m_t} scale q_t C + Σ_s e^{b_t − b_s + ĩ_s − m_t} (scale q_t·k_s) v_s
    den_t = e^{b_t + m − m_t} scale q_t·n + Σ_s e^{b_t − b_s + ĩ_s − m_t} (scale q_t·k_s)
    h_t   = num_t / (max(|den_t|, e^{−m_t}) + ε)

and the state moves on with a_s = b_last − b_s + ĩ_s, m' = max(b_last + m, max_s a_s),
C' = e^{b_last + m − m'} C + Σ_s e^{a_s − m'} k_s v_sᵀ (n' likewise with k_s). The result equals the parallel form, so
the parallel reference is the oracle.

The Triton forward either walks the chunks in order, one program per (batch·head, dv block), with the state in
registers ("walk"), or, when those programs are too few to fill the GPU (long sequences at small batch), first walks
only the state updates and stores the state before every chunk, then computes every chunk's rows in parallel, one
program per (batch·head, chunk, dv block) ("two_phase"); all products are `tl.dot`. Two backwards: by default the Triton tile kernels of `mlstm_bwd.py` (from the
per-row stabiliser and denominator the forward saves), or ("recompute") `mlstm_chunkwise_torch` under autograd (same
math, O(L·Lc) memory instead of the parallel form's O(L²)).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .memory_order import like_layout


def mlstm_chunkwise_torch(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                          eps: float = 1e-6, chunk: int = 64) -> torch.Tensor:
    """PyTorch chunkwise mLSTM (differentiable); shapes as `kernels.mlstm.mlstm_parallel_ref`; returns h like v."""
    bsz, heads, length, dqk = q.shape
    dv = v.shape[-1]
    dt = torch.float32 if q.dtype != torch.float64 else torch.float64
    pad = (-length) % chunk
    qf, kf, vf = (F.pad(x.to(dt), (0, 0, 0, pad)) for x in (q, k, v))
    ig = F.pad(i.to(dt), (0, pad), value=float("-inf"))
    lf = F.pad(F.logsigmoid(f.to(dt)), (0, pad), value=0.0)
    nck = (length + pad) // chunk
    qf = qf.view(bsz, heads, nck, chunk, dqk) / math.sqrt(dqk)
    kf = kf.view(bsz, heads, nck, chunk, dqk)
    vf = vf.view(bsz, heads, nck, chunk, dv)
    ig, lf = ig.view(bsz, heads, nck, chunk), lf.view(bsz, heads, nck, chunk)
    b = lf.cumsum(-1)  # (b, h, nck, Lc)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    w = b[..., :, None] - b[..., None, :] + ig[..., None, :]
    w = w.masked_fill(~causal, float("-inf"))  # (b, h, nck, t, s)
    state_c = qf.new_zeros(bsz, heads, dqk, dv)
    state_n = qf.new_zeros(bsz, heads, dqk)
    state_m = qf.new_full((bsz, heads), float("-inf"))
    outs = []
    for c in range(nck):
        bc, wc = b[:, :, c], w[:, :, c]
        m_t = torch.maximum(bc + state_m[..., None], wc.amax(-1))  # (b, h, Lc)
        inter = torch.exp(bc + state_m[..., None] - m_t)
        dmat = torch.exp(wc - m_t[..., None])
        s = qf[:, :, c] @ kf[:, :, c].transpose(-1, -2) * dmat
        num = inter[..., None] * (qf[:, :, c] @ state_c) + s @ vf[:, :, c]
        den = inter * (qf[:, :, c] @ state_n[..., None])[..., 0] + s.sum(-1)
        outs.append(num / (torch.maximum(den.abs(), torch.exp(-m_t)) + eps)[..., None])
        blast = bc[..., -1]
        a = blast[..., None] - bc + ig[:, :, c]
        m_new = torch.maximum(blast + state_m, a.amax(-1))
        decay = torch.exp(blast + state_m - m_new)
        wk = kf[:, :, c] * torch.exp(a - m_new[..., None])[..., None]
        state_c = decay[..., None, None] * state_c + wk.transpose(-1, -2) @ vf[:, :, c]
        state_n = decay[..., None] * state_n + wk.sum(-2)
        state_m = m_new
    h = torch.stack(outs, 2).reshape(bsz, heads, nck * chunk, dv)[:, :, :length]
    return h.to(v.dtype)


@triton.jit
def _chunk_gates(I, Fg, r, mask_t, si_l, sf_l):
    """Input gate ĩ and b = cumulative log σ(f̃) from the chunk start, both fp32 (LC,); I, Fg point at this
    (batch, head)'s row, r are the memory rows of the chunk's steps."""
    ig = tl.load(I + r * si_l, mask=mask_t, other=-float("inf")).to(tl.float32)
    fg = tl.load(Fg + r * sf_l, mask=mask_t, other=0.0).to(tl.float32)
    logf = tl.where(mask_t, tl.minimum(fg, 0.0) - tl.log(1.0 + tl.exp(-tl.abs(fg))), 0.0)  # log σ(f̃)
    return ig, tl.cumsum(logf, 0)


@triton.jit
def _chunk_output(Q, K, V, H, MROW, DEN, bh, pid_v, t, r, mask_t, offs_k, mask_k, offs_v, mask_v, offs_t, ig, b,
                  state_c, state_n, state_m, L, scale, eps, sq_l, sq_d, sk_l, sk_d, sv_l, sv_d, sh_l, sh_d,
                  PREC: tl.constexpr, SAVE_STATS: tl.constexpr):
    """One chunk's rows of h from the state before the chunk (the module docstring's num / den). Q, K, V, H point at
    this (batch, head); t are the chunk's steps along the path, r their memory rows."""
    q = tl.load(Q + r[:, None] * sq_l + offs_k[None, :] * sq_d, mask=mask_t[:, None] & mask_k[None, :], other=0.0)
    k = tl.load(K + r[:, None] * sk_l + offs_k[None, :] * sk_d, mask=mask_t[:, None] & mask_k[None, :], other=0.0)
    v = tl.load(V + r[:, None] * sv_l + offs_v[None, :] * sv_d, mask=mask_t[:, None] & mask_v[None, :], other=0.0)
    w = b[:, None] - b[None, :] + ig[None, :]
    w = tl.where(offs_t[:, None] >= offs_t[None, :], w, -float("inf"))
    m_t = tl.maximum(b + state_m, tl.max(w, 1))
    inter = tl.exp(b + state_m - m_t)
    dmat = tl.exp(w - m_t[:, None])
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * scale * dmat  # (LC, LC)
    qs = q.to(tl.float32) * scale
    num = inter[:, None] * tl.dot(qs, state_c, input_precision=PREC)
    num += tl.dot(s.to(v.dtype), v, input_precision=PREC)
    den = inter * tl.sum(qs * state_n[None, :], 1) + tl.sum(s, 1)
    hval = num / (tl.maximum(tl.abs(den), tl.exp(-m_t)) + eps)[:, None]
    tl.store(H + r[:, None] * sh_l + offs_v[None, :] * sh_d, hval.to(H.dtype.element_ty),
             mask=mask_t[:, None] & mask_v[None, :])
    if SAVE_STATS:  # per-row stabiliser and denominator for the Triton backward (every dv block has the same)
        tl.store(MROW + bh * L + t, m_t, mask=mask_t & (pid_v == 0))
        tl.store(DEN + bh * L + t, den, mask=mask_t & (pid_v == 0))


@triton.jit
def _chunk_state_step(K, V, r, mask_t, offs_k, mask_k, offs_v, mask_v, offs_t, ig, b, state_c, state_n, state_m,
                      sk_l, sk_d, sv_l, sv_d, LC: tl.constexpr, PREC: tl.constexpr):
    """The state after a chunk from the state before it: (C', n', m')."""
    k = tl.load(K + r[:, None] * sk_l + offs_k[None, :] * sk_d, mask=mask_t[:, None] & mask_k[None, :], other=0.0)
    v = tl.load(V + r[:, None] * sv_l + offs_v[None, :] * sv_d, mask=mask_t[:, None] & mask_v[None, :], other=0.0)
    blast = tl.sum(tl.where(offs_t == LC - 1, b, 0.0), 0)
    a = blast - b + ig
    m_new = tl.maximum(blast + state_m, tl.max(a, 0))
    decay = tl.exp(blast + state_m - m_new)
    wk = k.to(tl.float32) * tl.exp(a - m_new)[:, None]
    state_c = decay * state_c + tl.dot(tl.trans(wk.to(v.dtype)), v, input_precision=PREC)
    state_n = decay * state_n + tl.sum(wk, 0)
    return state_c, state_n, m_new


@triton.jit
def _mlstm_fwd_kernel(
    Q, K, V, I, Fg, H, MROW, DEN, SC, SN, SM, L, NHEADS, DQK, DV, NCH, scale, eps,
    sq_b, sq_h, sq_l, sq_d, sk_b, sk_h, sk_l, sk_d, sv_b, sv_h, sv_l, sv_d, si_b, si_h, si_l, sf_b, sf_h, sf_l,
    sh_b, sh_h, sh_l, sh_d,
    LC: tl.constexpr, DKP: tl.constexpr, BV: tl.constexpr, PREC: tl.constexpr, SAVE_STATS: tl.constexpr,
    MODE: tl.constexpr, REVERSE: tl.constexpr,
):
    # MODE 0: one program per (batch·head, dv block) walks the chunks: outputs and state in one pass.
    # MODE 1: the same walk, but only the states: the state before every chunk goes to SC/SN/SM.
    # MODE 2: one program per (batch·head, chunk, dv block): the chunk's outputs from its stored state.
    # Every tensor is addressed by its own (batch, head, row, column) strides; step t of the path reads and writes
    # memory row t, or L - 1 - t with REVERSE (the cell runs the sequence backwards, no flipped copies).
    bh = tl.program_id(0).to(tl.int64)
    bi, hi = bh // NHEADS, bh % NHEADS
    Q += bi * sq_b + hi * sq_h
    K += bi * sk_b + hi * sk_h
    V += bi * sv_b + hi * sv_h
    I += bi * si_b + hi * si_h
    Fg += bi * sf_b + hi * sf_h
    H += bi * sh_b + hi * sh_h
    pid_v = tl.program_id(1)
    offs_k = tl.arange(0, DKP)
    mask_k = offs_k < DQK
    offs_v = pid_v * BV + tl.arange(0, BV)
    mask_v = offs_v < DV
    offs_t = tl.arange(0, LC)
    sc_off = offs_k[:, None] * DV + offs_v[None, :]
    if MODE == 2:
        c = tl.program_id(2)
        t = c * LC + offs_t
        mask_t = t < L
        r = L - 1 - t if REVERSE else t
        base = bh * NCH + c
        state_c = tl.load(SC + base * DKP * DV + sc_off, mask=mask_v[None, :], other=0.0)
        state_n = tl.load(SN + base * DKP + offs_k)
        state_m = tl.load(SM + base)
        ig, b = _chunk_gates(I, Fg, r, mask_t, si_l, sf_l)
        _chunk_output(Q, K, V, H, MROW, DEN, bh, pid_v, t, r, mask_t, offs_k, mask_k, offs_v, mask_v, offs_t, ig, b,
                      state_c, state_n, state_m, L, scale, eps, sq_l, sq_d, sk_l, sk_d, sv_l, sv_d, sh_l, sh_d, PREC,
                      SAVE_STATS)
    else:
        state_c = tl.zeros((DKP, BV), dtype=tl.float32)
        state_n = tl.zeros((DKP,), dtype=tl.float32)
        state_m = -float("inf")
        for c in range(0, NCH):
            t = c * LC + offs_t
            mask_t = t < L
            r = L - 1 - t if REVERSE else t
            ig, b = _chunk_gates(I, Fg, r, mask_t, si_l, sf_l)
            if MODE == 1:
                base = bh * NCH + c
                tl.store(SC + base * DKP * DV + sc_off, state_c, mask=mask_v[None, :])
                tl.store(SN + base * DKP + offs_k, state_n, mask=pid_v == 0)
                tl.store(SM + base, state_m, mask=pid_v == 0)
            else:
                _chunk_output(Q, K, V, H, MROW, DEN, bh, pid_v, t, r, mask_t, offs_k, mask_k, offs_v, mask_v, offs_t,
                              ig, b, state_c, state_n, state_m, L, scale, eps, sq_l, sq_d, sk_l, sk_d, sv_l, sv_d,
                              sh_l, sh_d, PREC, SAVE_STATS)
            if c < NCH - 1:
                state_c, state_n, state_m = _chunk_state_step(K, V, r, mask_t, offs_k, mask_k, offs_v, mask_v,
                                                              offs_t, ig, b, state_c, state_n, state_m, sk_l, sk_d,
                                                              sv_l, sv_d, LC, PREC)


def forward_mode(n_chunks: int, device: torch.device) -> str:
    """Choose "walk" (outputs and state in one sequential pass per program) or "two_phase" (a states-only pass, then
    every chunk's outputs in parallel). Two phases pay a write and a read of the chunk states and a second load of k,
    v, and win wherever there are a few chunks to spread (H100, bench_mlstm.py: 1.08× at 4 chunks with 512 walking
    programs, 1.09× at 12, 2.2× at 96 chunks with 16 programs)."""
    if device.type != "cuda" or n_chunks < 4:
        return "walk"
    return "two_phase"


def mlstm_fwd_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                     eps: float = 1e-6, chunk: int = 64, block_v: int | None = None, save_stats: bool = False,
                     mode: str | None = None, reverse: bool = False
                     ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the forward; q, k (b, h, L, dqk), v (b, h, L, dv), i, f (b, h, L), each with any strides (no copies).
    Returns h (b, h, L, dv) in v's memory order (`like_layout`), and with `save_stats` also the per-row stabiliser m
    and signed denominator (b·h, L) fp32 that the Triton backward needs, in path order. `mode`: "walk" or
    "two_phase" (see `forward_mode`, which chooses when None). `reverse`: run the cell from the last row to the first
    (equals flipping every input along L and the output back)."""
    bsz, heads, length, dqk = q.shape
    dv = v.shape[-1]
    out = like_layout(v)
    dkp = max(16, triton.next_power_of_2(dqk))
    bv = block_v or min(64, max(16, triton.next_power_of_2(dv)))
    prec = "ieee" if q.dtype == torch.float32 else "tf32"
    nvb, nch = triton.cdiv(dv, bv), triton.cdiv(length, chunk)
    stats = torch.empty((2, bsz * heads, length) if save_stats else (2, 1), device=q.device, dtype=torch.float32)
    mode = mode or forward_mode(nch, q.device)
    if mode not in ("walk", "two_phase"):
        raise ValueError(f"mode must be 'walk' or 'two_phase', got {mode!r}")
    two = mode == "two_phase"
    f32 = torch.float32
    sc = torch.empty((bsz * heads, nch, dkp, dv), device=q.device, dtype=f32) if two else out
    sn = torch.zeros((bsz * heads, nch, dkp), device=q.device, dtype=f32) if two else out
    sm = torch.empty((bsz * heads, nch), device=q.device, dtype=f32) if two else out
    args = (q, k, v, i, f, out, stats[0], stats[1], sc, sn, sm, length, heads, dqk, dv, nch, 1.0 / math.sqrt(dqk),
            eps, *q.stride(), *k.stride(), *v.stride(), *i.stride(), *f.stride(), *out.stride())
    opts = dict(LC=chunk, DKP=dkp, BV=bv, PREC=prec, SAVE_STATS=save_stats, REVERSE=reverse,
                num_warps=4 if dkp * bv <= 4096 else 8)
    if two:
        _mlstm_fwd_kernel[(bsz * heads, nvb)](*args, MODE=1, **opts)
        _mlstm_fwd_kernel[(bsz * heads, nvb, nch)](*args, MODE=2, **opts)
    else:
        _mlstm_fwd_kernel[(bsz * heads, nvb)](*args, MODE=0, **opts)
    return (out, stats[0], stats[1]) if save_stats else out


class MLSTMChunkwise(torch.autograd.Function):
    """Triton forward; backward either by the Triton tile kernels of `mlstm_bwd.py` ("triton") or by recomputing
    `mlstm_chunkwise_torch` under autograd ("recompute")."""

    @staticmethod
    def forward(ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                eps: float, backward: str, forward: str | None = None,
                bwd_tile: tuple[int, int] | None = None, reverse: bool = False, chunk: int = 64) -> torch.Tensor:
        ctx.eps, ctx.mode, ctx.bwd_tile, ctx.reverse = eps, backward, bwd_tile, reverse
        if backward == "triton" and any(ctx.needs_input_grad[:5]):  # inference skips the saved statistics
            h, m, den = mlstm_fwd_triton(q, k, v, i, f, eps, chunk=chunk, save_stats=True, mode=forward,
                                         reverse=reverse)
            ctx.save_for_backward(q, k, v, i, f, h, m, den)
            return h
        ctx.save_for_backward(q, k, v, i, f)
        return mlstm_fwd_triton(q, k, v, i, f, eps, chunk=chunk, mode=forward, reverse=reverse)

    @staticmethod
    def backward(ctx: Any, dh: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        if ctx.mode == "triton":
            from .mlstm_bwd import mlstm_bwd_triton

            q, k, v, i, f, h, m, den = ctx.saved_tensors
            tile = dict(zip(("block", "warps"), ctx.bwd_tile)) if ctx.bwd_tile else {}
            grads = mlstm_bwd_triton(q, k, v, i, f, h, dh, m, den, ctx.eps, reverse=ctx.reverse, **tile)
            return (*grads, None, None, None, None, None, None)
        inputs = [x.detach().requires_grad_(True) for x in ctx.saved_tensors]
        length = inputs[0].shape[2]
        # few, long stretches: each Python-level chunk costs a dozen launches, and a stretch of ≤1024 steps keeps the
        # per-head (chunk × chunk) matrices small
        chunk = 64 * triton.cdiv(length if length <= 1024 else triton.cdiv(length, 16), 64)
        with torch.enable_grad():
            path = [x.flip(2) for x in inputs] if ctx.reverse else inputs
            h = mlstm_chunkwise_torch(*path, eps=ctx.eps, chunk=chunk)
            grads = torch.autograd.grad(h.flip(2) if ctx.reverse else h, inputs, dh)
        return (*grads, None, None, None, None, None, None)


BACKWARDS = ("recompute", "triton")


def mlstm_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i: torch.Tensor, f: torch.Tensor,
                 eps: float = 1e-6, reverse: bool = False, backward: str = "triton", forward: str | None = None,
                 bwd_tile: tuple[int, int] | None = None, chunk: int = 64) -> torch.Tensor:
    """Same contract as `kernels.mlstm.mlstm_parallel_ref`. `backward`: "triton" (the tile kernels of mlstm_bwd.py;
    on the H100 2.3–5.7× faster in fwd+bwd than "recompute" at ViL-T shapes, benchmarks/RESULTS.md) or "recompute"
    (PyTorch chunkwise under autograd). `forward`: "walk", "two_phase" or None (chosen by `forward_mode`).
    `bwd_tile`: (tile side, warps) of the Triton backward, None = its default. `reverse`: the cell runs from the last
    row to the first. `chunk`: rows per chunk of the Triton forward (a power of two ≥ 16; the backward's tiles are its
    own). Offline SASS (sm_90, Triton 3.6) at vil_tiny's train shape (144 rows of 96-wide heads): chunk 64 walks 3
    chunks with 592 B of spills, chunk 32 takes the two-phase forward (5 chunks) with none; untimed, see
    `bench_mlstm.py --chunks`. Inputs may have any strides; h and the gradients come back in the inputs' memory order."""
    if backward not in BACKWARDS:
        raise ValueError(f"backward must be one of {BACKWARDS}; got {backward!r}")
    if chunk < 16 or chunk & (chunk - 1):
        raise ValueError(f"chunk must be a power of two ≥ 16, got {chunk}")
    return MLSTMChunkwise.apply(q, k, v, i, f, eps, backward, forward, bwd_tile, reverse, chunk)


__all__ = ["mlstm_triton", "mlstm_fwd_triton", "mlstm_chunkwise_torch", "MLSTMChunkwise", "forward_mode"]
