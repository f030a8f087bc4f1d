"""Causal depthwise conv1d + SiLU along the paths of a route, read and written in canonical token order (Triton).

Math (per path p, channel e, conv width K; s = inv[p, j] is the step at which path p visits canonical token j, and
x is read at the path's earlier steps, zero before the first):

    pre_p[s] = bias[p, e] + Σ_k w[p, e, k] · x[paths[p, s − (K−1) + k], e]
    u[b, p, j, e] = SiLU(pre_p[inv[p, j]])

This is Vim's per-path conv (gather → conv1d → SiLU → scatter), with the gather and the scatter inside the loads and
the stores: a program owns a block of canonical tokens × channels, so the rows it reads and writes are whole channel
vectors (the (B, L, E) layout that token-wise Linear layers produce). The output's memory is (P, B, L, E): the x_proj
product that follows is then one batched matmul over paths with no copy.

Backward, for the same block of canonical tokens (each needs the 2K − 1 rows around its step, loaded once):

    dpre_p[t] = du[b, p, paths[p, t], e] · SiLU'(pre_p[t])
    dx[b, j, e] = Σ_p Σ_k w[p, e, k] · dpre_p[inv[p, j] + K − 1 − k]           (all paths in one program: no atomics)
    dw[p, e, k] = Σ_{b, s} dpre_p[s] · x[paths[p, s − (K−1) + k]],   dbias[p, e] = Σ_{b, s} dpre_p[s]
                                                                (a partial sum per program, then one reduction)
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
        bias = tl.zeros((BE,), dtype=tl.float32)
        if HAS_BIAS:
            bias = tl.load(BIAS + p * E + offs_e, mask=mask_e, other=0.0).to(tl.float32)
        ws = ()
        for k in tl.static_range(K):
            ws = ws + (tl.load(W + (p * E + offs_e) * K + k, mask=mask_e, other=0.0).to(tl.float32)[None, :],)
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


def _tiles(e: int) -> tuple[int, int]:
    """(tokens, channels) per program: 64-channel rows (128 bytes of bf16) and 32 tokens; smaller under the CPU
    interpreter's tests only because the shapes are."""
    be = min(64, triton.next_power_of_2(e))
    return 32, be


class CausalConv1dPaths(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, paths: torch.Tensor,
                inverse: torch.Tensor) -> torch.Tensor:
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
        return out.permute(1, 0, 2, 3)

    @staticmethod
    def backward(ctx: Any, du: torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, None, None]:
        x, w, bias, paths, inverse = ctx.saved_tensors
        bsz, length, e = x.shape
        n_conv, _, k = w.shape
        dx = torch.empty((bsz, length, e), device=x.device, dtype=x.dtype)
        bt, be = _tiles(e)
        grid = (triton.cdiv(length, bt), triton.cdiv(e, be), bsz)
        # dw and dbias: one fp32 partial sum per (program row, path), summed below (H200, session 4: fp32 atomics
        # from every program onto the Pc·E·K weights took 0.39 ms per call at Vim-Ti 224² × 128, 6x the forward)
        parts = grid[0] * grid[2]
        dw = torch.zeros((parts, n_conv, e, k), device=x.device, dtype=torch.float32)
        db = torch.zeros((parts, n_conv, e), device=x.device, dtype=torch.float32)
        _conv_bwd_kernel[grid](x, w, bias if bias is not None else w, paths, inverse, du, dx, dw, db, length, e,
                               n_conv, x.stride(0), x.stride(1), paths.stride(0), paths.stride(1), du.stride(0),
                               du.stride(1), du.stride(2), du.stride(3), dx.stride(0), dx.stride(1),
                               K=k, BT=bt, BE=be, HAS_BIAS=bias is not None)
        return dx, dw.sum(0).to(w.dtype), (db.sum(0).to(bias.dtype) if bias is not None else None), None, None


def causal_conv1d_paths_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                               paths: torch.Tensor) -> torch.Tensor:
    """`kernels.path_conv.causal_conv1d_paths_ref`'s contract in two Triton launches (forward, backward). x (B, L, E)
    with unit channel stride; weight (Pc, E, K); bias (Pc, E) or None; paths (Pc, L) positions. Returns (B, Pc, L, E)
    in x's dtype, whose memory is (Pc, B, L, E)."""
    paths = paths.to(device=x.device, dtype=torch.int32).contiguous()
    inverse = torch.empty_like(paths)
    inverse.scatter_(1, paths.long(), torch.arange(paths.shape[1], device=x.device, dtype=torch.int32)
                     .expand_as(paths).contiguous())
    return CausalConv1dPaths.apply(x, weight, bias, paths, inverse)


__all__ = ["causal_conv1d_paths_triton", "CausalConv1dPaths"]
