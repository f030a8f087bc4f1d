"""Causal depthwise conv1d + SiLU along the paths of a route, read and written in canonical token order (Triton).

Math (per path p, channel e, conv width K; s = inv[p, j] is the step at which path p visits canonical token j, and
x is read at the path's earlier steps, zero before the first):

    pre_p[s] = bias[p, e] + Σ_k w[p, e, k] · x[paths[p, s − (K−1) + k], e]
    u[b, p, j, e] = SiLU(pre_p[inv[p, j]])

This is Vim's per-path conv (gather → conv1d → SiLU → scatter), with the gather and the scatter inside the loads and
the stores: a program owns a block of canonical tokens × channels, so the rows it reads and writes are whole channel
vectors (the (B, L, E) layout that token-wise Linear layers produce). The output's memory is (P, B, L, E): the x_proj
product that follows is then one batched matmul over paths with no copy.

Backward, two passes ("steps", the default), so that each dpre is computed once:

    pass 1, a path's steps:         dpre_p[s] = du[b, p, paths[p, s], e] · SiLU'(pre_p[s])   → fp32 scratch (P, B, L, E)
                                    dw[p, e, k] = Σ_{b, s} dpre_p[s] · x[paths[p, s − (K−1) + k]],
                                    dbias[p, e] = Σ_{b, s} dpre_p[s]   (summed over the steps in registers, one partial
                                                                        sum per (batch, path), then one reduction)
    pass 2, a block of tokens:      dx[b, j, e] = Σ_p Σ_k w[p, e, k] · dpre_p[inv[p, j] + K − 1 − k]
                                                  (all paths in one program: no atomics; the K rows are consecutive)

The one-pass backward ("tokens", kept as the measured alternative) does it for a block of canonical tokens in one
launch: each token needs the 2K − 1 rows around its step and recomputes the K dpre it reads, so every dpre is computed
K times (K² FMAs and K sigmoids a token and path, with 2K − 1 + K gathered rows in registers).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl


@triton.jit
def _rows(X, PATHS, p, b64, s, mask_j, offs_e, mask_e, L, sx_b, sx_l, sp_p, sp_l, D0: tl.constexpr,
          D1: tl.constexpr):
    """The x rows at steps s + δ of path p for δ = D0 .. D1 − 1, as a tuple of fp32 (BT, BE) tiles (zero off the
    sequence)."""
    rows = ()
    for i in tl.static_range(D1 - D0):
        st = s + (D0 + i)
        ok = mask_j & (st >= 0) & (st < L)
        pos = tl.load(PATHS + p * sp_p + st * sp_l, mask=ok, other=0)
        m = ok[:, None] & mask_e[None, :]
        rows = rows + (tl.load(X + b64 * sx_b + pos[:, None] * sx_l + offs_e[None, :], mask=m,
                               other=0.0).to(tl.float32),)
    return rows


@triton.jit
def _bias_and_taps(W, BIAS, p, E, offs_e, mask_e, K: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Path p's bias (BE,) (zeros without one) and its K taps as a tuple of fp32 (1, BE) rows."""
    bias = tl.zeros((offs_e.shape[0],), dtype=tl.float32)
    if HAS_BIAS:
        bias = tl.load(BIAS + p * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)
    ws = ()
    for k in tl.static_range(K):
        ws = ws + (tl.load(W + (p * E + offs_e) * K + k, mask=mask_e, other=0.0).to(tl.float32)[None, :],)
    return bias, ws


@triton.jit
def _conv_fwd_kernel(X, W, BIAS, PATHS, INV, OUT, L, E, NP, sx_b, sx_l, sp_p, sp_l, so_p, so_b, so_l,
                     K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr):
    j = tl.program_id(0) * BT + tl.arange(0, BT)
    offs_e = tl.program_id(1) * BE + tl.arange(0, BE)
    b64 = (tl.program_id(2) // NP).to(tl.int64)
    p = tl.program_id(2) % NP
    mask_j, mask_e = j < L, offs_e < E
    s = tl.load(INV + p * sp_p + j * sp_l, mask=mask_j, other=0)
    rows = _rows(X, PATHS, p, b64, s, mask_j, offs_e, mask_e, L, sx_b, sx_l, sp_p, sp_l, 1 - K, 1)
    acc = tl.zeros((BT, BE), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(BIAS + p * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(K):
        w = tl.load(W + (p * E + offs_e) * K + k, mask=mask_e, other=0.0).to(tl.float32)
        acc += w[None, :] * rows[k]
    out = acc * tl.sigmoid(acc)
    m = mask_j[:, None] & mask_e[None, :]
    tl.store(OUT + p * so_p + b64 * so_b + j[:, None] * so_l + offs_e[None, :], out.to(OUT.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_kernel(X, W, BIAS, PATHS, INV, DU, DX, DW, DB, L, E, NP, sx_b, sx_l, sp_p, sp_l,
                     sd_b, sd_p, sd_l, sd_e, sdx_b, sdx_l,
                     K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr, HAS_BIAS: tl.constexpr):
    j = tl.program_id(0) * BT + tl.arange(0, BT)
    offs_e = tl.program_id(1) * BE + tl.arange(0, BE)
    b64 = tl.program_id(2).to(tl.int64)
    mask_j, mask_e = j < L, offs_e < E
    dx = tl.zeros((BT, BE), dtype=tl.float32)
    for p in range(0, NP):
        s = tl.load(INV + p * sp_p + j * sp_l, mask=mask_j, other=0)
        rows = _rows(X, PATHS, p, b64, s, mask_j, offs_e, mask_e, L, sx_b, sx_l, sp_p, sp_l, 1 - K, K)
        bias, ws = _bias_and_taps(W, BIAS, p, E, offs_e, mask_e, K, HAS_BIAS)
        for k in tl.static_range(K):  # output step t = s + K − 1 − k; its rows are rows[(K−1) − k + k']
            t = s + (K - 1 - k)
            ok = mask_j & (t < L)
            pre = bias[None, :] + tl.zeros((BT, BE), dtype=tl.float32)
            for kk in tl.static_range(K):
                pre += ws[kk] * rows[K - 1 - k + kk]
            pos = tl.load(PATHS + p * sp_p + t * sp_l, mask=ok, other=0)
            m = ok[:, None] & mask_e[None, :]
            du = tl.load(DU + b64 * sd_b + p * sd_p + pos[:, None] * sd_l + offs_e[None, :] * sd_e, mask=m,
                         other=0.0).to(tl.float32)
            sig = tl.sigmoid(pre)
            dpre = tl.where(m, du * sig * (1.0 + pre * (1.0 - sig)), 0.0)
            dx += ws[k] * dpre
            if k == K - 1:  # t = s: every step of the path is counted once here, for dw and dbias
                part = (tl.program_id(2) * tl.num_programs(0) + tl.program_id(0)) * NP + p  # this program's slot
                for kk in tl.static_range(K):
                    tl.store(DW + (part * E + offs_e) * K + kk, tl.sum(dpre * rows[kk], 0), mask=mask_e)
                if HAS_BIAS:
                    tl.store(DB + part * E + offs_e, tl.sum(dpre, 0), mask=mask_e)
    m = mask_j[:, None] & mask_e[None, :]
    tl.store(DX + b64 * sdx_b + j[:, None] * sdx_l + offs_e[None, :], dx.to(DX.dtype.element_ty), mask=m)


@triton.jit
def _conv_bwd_steps_kernel(X, W, BIAS, PATHS, DU, DPRE, DW, DB, L, E, NP, BSZ, sx_b, sx_l, sp_p, sp_l,
                           sd_b, sd_p, sd_l, sd_e, K: tl.constexpr, BT: tl.constexpr, BE: tl.constexpr,
                           HAS_BIAS: tl.constexpr):
    """Pass 1: dpre along all of path p's steps, BT at a time, into DPRE (P, B, L, E) fp32 in path order; dw and
    dbias summed in registers over the steps and reduced across the tile once, into this program's partial slot."""
    offs_e = tl.program_id(0) * BE + tl.arange(0, BE)
    b64 = (tl.program_id(1) // NP).to(tl.int64)
    p = tl.program_id(1) % NP
    mask_e = offs_e < E
    bias, ws = _bias_and_taps(W, BIAS, p, E, offs_e, mask_e, K, HAS_BIAS)
    dws = ()
    for k in tl.static_range(K):
        dws = dws + (tl.zeros((BT, BE), dtype=tl.float32),)
    dbs = tl.zeros((BT, BE), dtype=tl.float32)
    for t0 in range(0, L, BT):
        s = t0 + tl.arange(0, BT)
        mask_s = s < L
        rows = _rows(X, PATHS, p, b64, s, mask_s, offs_e, mask_e, L, sx_b, sx_l, sp_p, sp_l, 1 - K, 1)
        pre = bias[None, :] + tl.zeros((BT, BE), dtype=tl.float32)
        for k in tl.static_range(K):
            pre += ws[k] * rows[k]
        pos = tl.load(PATHS + p * sp_p + s * sp_l, mask=mask_s, other=0)
        m = mask_s[:, None] & mask_e[None, :]
        du = tl.load(DU + b64 * sd_b + p * sd_p + pos[:, None] * sd_l + offs_e[None, :] * sd_e, mask=m,
                     other=0.0).to(tl.float32)
        sig = tl.sigmoid(pre)
        dpre = tl.where(m, du * sig * (1.0 + pre * (1.0 - sig)), 0.0)
        tl.store(DPRE + ((p * BSZ + b64) * L + s[:, None]) * E + offs_e[None, :], dpre, mask=m)
        new_dws = ()
        for k in tl.static_range(K):
            new_dws = new_dws + (dws[k] + dpre * rows[k],)
        dws = new_dws
        dbs += dpre
    part = b64 * NP + p  # this program's slot of the partial sums
    for k in tl.static_range(K):
        tl.store(DW + (part * E + offs_e) * K + k, tl.sum(dws[k], 0), mask=mask_e)
    if HAS_BIAS:
        tl.store(DB + part * E + offs_e, tl.sum(dbs, 0), mask=mask_e)


@triton.jit
def _conv_dx_kernel(W, INV, DPRE, DX, L, E, NP, BSZ, sp_p, sp_l, sdx_b, sdx_l, K: tl.constexpr, BT: tl.constexpr,
                    BE: tl.constexpr):
    """Pass 2: dx for a block of canonical tokens, from the K dpre rows after each token's step on every path."""
    j = tl.program_id(0) * BT + tl.arange(0, BT)
    offs_e = tl.program_id(1) * BE + tl.arange(0, BE)
    b64 = tl.program_id(2).to(tl.int64)
    mask_j, mask_e = j < L, offs_e < E
    dx = tl.zeros((BT, BE), dtype=tl.float32)
    for p in range(0, NP):
        s = tl.load(INV + p * sp_p + j * sp_l, mask=mask_j, other=0)
        base = DPRE + (p * BSZ + b64) * L * E
        for k in tl.static_range(K):
            t = s + (K - 1 - k)
            m = (mask_j & (t < L))[:, None] & mask_e[None, :]
            w = tl.load(W + (p * E + offs_e) * K + k, mask=mask_e, other=0.0).to(tl.float32)
            dx += w[None, :] * tl.load(base + t[:, None] * E + offs_e[None, :], mask=m, other=0.0)
    m = mask_j[:, None] & mask_e[None, :]
    tl.store(DX + b64 * sdx_b + j[:, None] * sdx_l + offs_e[None, :], dx.to(DX.dtype.element_ty), mask=m)


def _tiles(e: int) -> tuple[int, int]:
    """(tokens, channels) per program: 64-channel rows (128 bytes of bf16) and 32 tokens; smaller under the CPU
    interpreter's tests only because the shapes are."""
    be = min(64, triton.next_power_of_2(e))
    return 32, be


class CausalConv1dPaths(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, paths: torch.Tensor,
                inverse: torch.Tensor, backward: str = "steps") -> torch.Tensor:
        bsz, length, e = x.shape
        n_conv, _, k = weight.shape
        x = x if x.stride(-1) == 1 else x.contiguous()
        out = torch.empty((n_conv, bsz, length, e), device=x.device, dtype=x.dtype)
        bt, be = _tiles(e)
        grid = (triton.cdiv(length, bt), triton.cdiv(e, be), bsz * n_conv)
        w = weight.contiguous()
        _conv_fwd_kernel[grid](x, w, bias if bias is not None else w, paths, inverse, out, length, e, n_conv,
                               x.stride(0), x.stride(1), paths.stride(0), paths.stride(1), *out.stride()[:3],
                               K=k, BT=bt, BE=be, HAS_BIAS=bias is not None)
        ctx.save_for_backward(x, w, bias, paths, inverse)
        ctx.backward = backward
        return out.permute(1, 0, 2, 3)

    @staticmethod
    def backward(ctx: Any, du: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None, None, None]:
        x, w, bias, paths, inverse = ctx.saved_tensors
        dx, dw, db = conv_paths_bwd(x, w, bias, paths, inverse, du, ctx.backward)
        return dx, dw, db, None, None, None


BACKWARDS = ("steps", "tokens")
STEPS_BT = 16  # pass 1's steps a tile: its K + 1 (BT, BE) accumulators stay in registers across the path


def conv_paths_bwd(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, paths: torch.Tensor,
                   inverse: torch.Tensor, du: torch.Tensor, backward: str = "steps"
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(dx, dw, dbias) of the path conv: "steps" = two passes, each dpre computed once through an fp32 scratch of
    u's size; "tokens" = one pass that recomputes each dpre K times (module docstring)."""
    if backward not in BACKWARDS:
        raise ValueError(f"path conv backward must be one of {BACKWARDS}, got {backward!r}")
    bsz, length, e = x.shape
    n_conv, _, k = w.shape
    has_bias = bias is not None
    dx = torch.empty((bsz, length, e), device=x.device, dtype=x.dtype)
    bt, be = _tiles(e)
    # dw and dbias: one fp32 partial sum per (program row, path), summed below (H200, session 4: fp32 atomics
    # from every program onto the Pc·E·K weights took 0.39 ms per call at Vim-Ti 224² × 128, 6x the forward)
    parts = bsz if backward == "steps" else triton.cdiv(length, bt) * bsz
    dw = torch.empty((parts, n_conv, e, k), device=x.device, dtype=torch.float32)
    db = torch.empty((parts, n_conv, e), device=x.device, dtype=torch.float32) if has_bias else dw
    b_arg = bias if has_bias else w
    if backward == "steps":
        dpre = torch.empty((n_conv, bsz, length, e), device=x.device, dtype=torch.float32)
        _conv_bwd_steps_kernel[(triton.cdiv(e, be), bsz * n_conv)](
            x, w, b_arg, paths, du, dpre, dw, db, length, e, n_conv, bsz, x.stride(0), x.stride(1), paths.stride(0),
            paths.stride(1), *du.stride(), K=k, BT=STEPS_BT, BE=be, HAS_BIAS=has_bias)
        _conv_dx_kernel[(triton.cdiv(length, bt), triton.cdiv(e, be), bsz)](
            w, inverse, dpre, dx, length, e, n_conv, bsz, paths.stride(0), paths.stride(1), dx.stride(0),
            dx.stride(1), K=k, BT=bt, BE=be)
    else:
        grid = (triton.cdiv(length, bt), triton.cdiv(e, be), bsz)
        _conv_bwd_kernel[grid](x, w, b_arg, paths, inverse, du, dx, dw, db, length, e, n_conv, x.stride(0),
                               x.stride(1), paths.stride(0), paths.stride(1), *du.stride(), dx.stride(0),
                               dx.stride(1), K=k, BT=bt, BE=be, HAS_BIAS=has_bias)
    return dx, dw.sum(0).to(w.dtype), (db.sum(0).to(bias.dtype) if has_bias else None)


def causal_conv1d_paths_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               paths: torch.Tensor, backward: str = "steps") -> torch.Tensor:
    """`kernels.path_conv.causal_conv1d_paths_ref`'s contract in Triton (one forward launch; the backward's two passes,
    or one with `backward="tokens"`). x (B, L, E)
    with unit channel stride; weight (Pc, E, K); bias (Pc, E) or None; paths (Pc, L) positions. Returns (B, Pc, L, E)
    in x's dtype, whose memory is (Pc, B, L, E)."""
    paths = paths.to(device=x.device, dtype=torch.int32).contiguous()
    inverse = torch.empty_like(paths)
    inverse.scatter_(1, paths.long(), torch.arange(paths.shape[1], device=x.device, dtype=torch.int32)
                     .expand_as(paths).contiguous())
    if backward not in BACKWARDS:
        raise ValueError(f"path conv backward must be one of {BACKWARDS}, got {backward!r}")
    return CausalConv1dPaths.apply(x, weight, bias, paths, inverse, backward)


__all__ = ["causal_conv1d_paths_triton", "CausalConv1dPaths", "conv_paths_bwd", "BACKWARDS"]
