"""The Vision-LSTM (ViL v2) mLSTM layer, without the block's pre-LayerNorm and residual.

    [x_m, z] = split(proj_up(x))                          # E = int(expand · dim) each
    c        = SiLU(conv(x_m))                             # dw2d: depthwise k×k per token grid (class tokens pass
                                                           #   through); causal1d: depthwise causal conv along the path
    q, k, v  = BlockDiag_q(c), BlockDiag_k(c), BlockDiag_v(x_m)     # qkv_block × qkv_block blocks (+ bias)
    ĩ, f̃     = igate(cat(q, k, v)), fgate(cat(q, k, v))             # one scalar per head and token
    h̃        = OutNorm(mLSTM cell(q, k, v, ĩ, f̃) along the path)    # per-head LayerNorm over DH = E / heads
    y        = proj_down((h̃ + skip ⊙ c) ⊙ SiLU(z))

The cell runs along each path of `ctx.paths`. With the dw2d conv an identity or reversed path (ViL's alternating
route) needs no copies: q/k/v and the gates are per token, so they are computed in canonical order and the cell runs
the path itself (`reverse`, strided head views); other paths gather → cell → scatter. With one path the layer is
ViL's: parameters 6D² + 109D + 8 at the defaults (ViL's 6D² + 111D + 8 minus the block LN). With n_paths > 1
(a parallel route) the q/k/v projections, the gates and the output norm are per path, and the path outputs (after the
skip) are averaged before the SiLU(z) gate (which is per token, so the order does not matter).

Causality: the cell is causal along the path. With `conv="causal1d"` (ViL v1) the whole layer is causal along the path.
The default `conv="dw2d"` (ViL v2) is a 2-D conv over the token grid, so a token's q/k already see its grid neighbours
on both sides: the layer is then causal only in its cell, by design. Note also that ViL runs its 2-D conv on the
*flipped* grid for reversed blocks; here the conv always runs on the canonical grid, which equals ViL's up to rotating
the kernel by 180° (a checkpoint converter flips the kernel for reversed blocks).

Differences from ViL's parametrisation: the output-norm weight is stored directly (init 1), not as 1 + w (w = 0).
Init ("original" in vision_lstm2.py): proj_up and q/k/v weights N(0, √(2/(5D))); proj_down N(0, 2/√D); gate weights
0, forget bias linspace(3, 6) over heads, input bias N(0, 0.1); skip 1; conv PyTorch default; other biases 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kernels.dispatch import mlstm as mlstm_cell
from kernels.mlstm import mlstm_tail_ref

from ..layout import MixContext, grid_apply
from .base import MIXERS, MixerParams, TokenMixer


class MLSTMParams(MixerParams):
    expand: float = Field(2.0, gt=0)
    heads: int = Field(4, ge=1)
    qkv_block: int = Field(4, ge=1)
    conv: Literal["dw2d", "causal1d"] = "dw2d"
    conv_size: int | None = Field(None, ge=1)  # None: 3 for dw2d, 4 for causal1d
    bias: bool = True  # ViL v2; v1 has no bias in proj_up / q,k,v / out-norm / proj_down


class BlockDiagonal(nn.Module):
    """xLSTM's LinearHeadwiseExpand: channels in groups of `block`, each group mapped by its own block×block matrix.

    On CUDA the map runs as one dense (dim × dim) matmul with the blocks on the diagonal and exact zeros elsewhere
    (same values: the zeros add nothing). The grouped product is a batched matmul of dim / block tiny (block × block)
    matrices, which cuBLAS runs at a few percent of the tensor cores (session 7's vil_tiny profile: 17 ms of a 124 ms
    step in 72 such calls); the dense one is an ordinary GEMM, dim / block times the FLOPs, which tensor cores absorb.
    On the CPU the grouped product is kept: there the extra FLOPs cost real time at larger widths (2-core VM, fwd+bwd
    of 8 × 196 tokens: dense 2.7 vs 12.7 ms at dim 96, but 36 vs 15 ms at dim 768)."""

    def __init__(self, dim: int, block: int, bias: bool, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.n_blocks, self.block = dim // block, block
        self.weight = nn.Parameter(torch.empty(self.n_blocks, block, block, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.zeros(dim, device=device, dtype=dtype)) if bias else None

    def dense_weight(self) -> Tensor:
        """The (dim, dim) matrix with the blocks on its diagonal, differentiable in `weight`."""
        eye = torch.eye(self.n_blocks, device=self.weight.device, dtype=self.weight.dtype)
        dim = self.n_blocks * self.block
        return torch.einsum("goi,gh->gohi", self.weight, eye).reshape(dim, dim)

    def forward(self, x: Tensor, dense: bool | None = None) -> Tensor:
        """`dense`: None = on CUDA only; True / False force one product (the tests compare them). The dense product
        takes the bias inside the GEMM, so under autocast the output stays in the autocast dtype (a separate add of the
        fp32 bias promoted every q/k/v to fp32: session 12's op count found 3 fp32 (B, L, E) tensors a block, their
        fp32 concatenation and 5 casts back)."""
        if dense is None:
            dense = x.is_cuda
        if dense:
            return F.linear(x, self.dense_weight(), self.bias)
        shape = x.shape
        # out[..., g, o] = Σ_i x[..., g, i] · W[g, o, i]
        y = torch.einsum("...gi,goi->...go", x.reshape(*shape[:-1], self.n_blocks, self.block),
                         self.weight).reshape(shape)
        return y + self.bias.to(y.dtype) if self.bias is not None else y


class _PathCell(nn.Module):
    """What is per path in a parallel route: q/k/v projections, gates and the output norm."""

    def __init__(self, inner: int, p: MLSTMParams, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        fk = dict(device=device, dtype=dtype)
        self.q = BlockDiagonal(inner, p.qkv_block, p.bias, **fk)
        self.k = BlockDiagonal(inner, p.qkv_block, p.bias, **fk)
        self.v = BlockDiagonal(inner, p.qkv_block, p.bias, **fk)
        self.igate = nn.Linear(3 * inner, p.heads, **fk)
        self.fgate = nn.Linear(3 * inner, p.heads, **fk)
        self.norm_weight = nn.Parameter(torch.ones(inner, **fk))
        self.norm_bias = nn.Parameter(torch.zeros(inner, **fk)) if p.bias else None


class MLSTM(TokenMixer):
    Params = MLSTMParams
    test_params = ({}, {"conv": "causal1d"})
    dense_qkv: bool | None = None  # the q/k/v maps as dense GEMMs: None = on CUDA (see `_project`); tests force it
    native_paths: bool = True  # identity/reversed paths run by the cell's `reverse`, not by gathered copies (dw2d)
    fused_tail: bool | None = None  # norm + skip + SiLU(z) gate as one Triton kernel (one-path routes): None = on CUDA

    def __init__(self, dim: int, *, params: MLSTMParams, n_paths: int = 1, layer_idx: int = 0, depth: int = 1,
                 kernel_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, params=params, n_paths=n_paths, layer_idx=layer_idx, depth=depth,
                         kernel_backend=kernel_backend, device=device, dtype=dtype)
        p = params
        inner = int(p.expand * dim)
        if inner % p.qkv_block or inner % p.heads:
            raise ValueError(f"mlstm: inner width int(expand*dim) = {inner} (dim={dim}, expand={p.expand}) must be "
                             f"divisible by qkv_block={p.qkv_block} and heads={p.heads}")
        self.inner, self.num_heads, self.head_dim = inner, p.heads, inner // p.heads
        self.conv_size = p.conv_size if p.conv_size is not None else (3 if p.conv == "dw2d" else 4)
        if p.conv == "dw2d" and self.conv_size % 2 == 0:
            raise ValueError(f"mlstm: a dw2d conv_size must be odd to keep the grid size, got {self.conv_size}")
        fk = dict(device=device, dtype=dtype)
        self.proj_up = nn.Linear(dim, 2 * inner, bias=p.bias, **fk)
        if p.conv == "dw2d":
            self.conv = nn.Conv2d(inner, inner, self.conv_size, padding=self.conv_size // 2, groups=inner, **fk)
        else:
            self.conv = nn.Conv1d(inner, inner, self.conv_size, groups=inner, **fk)  # left-padded in forward
        self.cells = nn.ModuleList(_PathCell(inner, p, **fk) for _ in range(max(1, n_paths)))
        self.skip = nn.Parameter(torch.ones(inner, **fk))
        self.proj_down = nn.Linear(inner, dim, bias=p.bias, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.skip.is_meta:
            return  # no values to set; its pointwise math would load torch's Python decompositions (~1.5 s, once)
        small = math.sqrt(2 / (5 * self.dim))
        nn.init.normal_(self.proj_up.weight, std=small)
        nn.init.normal_(self.proj_down.weight, std=2 / math.sqrt(self.dim))
        for lin in (self.proj_up, self.proj_down):
            if lin.bias is not None:
                nn.init.zeros_(lin.bias)
        self.conv.reset_parameters()
        for cell in self.cells:
            for bd in (cell.q, cell.k, cell.v):
                nn.init.normal_(bd.weight, std=small)
                if bd.bias is not None:
                    nn.init.zeros_(bd.bias)
            nn.init.zeros_(cell.igate.weight)
            nn.init.normal_(cell.igate.bias, std=0.1)
            nn.init.zeros_(cell.fgate.weight)
            with torch.no_grad():
                cell.fgate.bias.copy_(torch.linspace(3.0, 6.0, self.num_heads))
            nn.init.ones_(cell.norm_weight)
            if cell.norm_bias is not None:
                nn.init.zeros_(cell.norm_bias)
        nn.init.ones_(self.skip)

    @classmethod
    def is_causal(cls, params: MLSTMParams) -> bool:
        return True

    @classmethod
    def causal_along_path(cls, params: MLSTMParams) -> bool:
        return params.conv == "causal1d"  # the v2 dw2d conv sees grid neighbours on both sides of the path

    def _causal_conv(self, x: Tensor) -> Tensor:  # (B, L, E) in path order
        y = F.conv1d(F.pad(x.transpose(1, 2), (self.conv_size - 1, 0)), self.conv.weight, self.conv.bias,
                     groups=self.inner)
        return y.transpose(1, 2)

    def _project(self, cell: _PathCell, xm: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """q, k, v (B, L, E) and the gate pre-activations (B, L, 2H: input gates, then forget gates).

        Dense (CUDA, or `dense_qkv=True`): q and k come from one GEMM of c with their stacked block-diagonal matrices
        (c is read once), the biases ride in the GEMMs, and both gates are two GEMMs, over [q k] and over v, with the
        gate matrices stacked and split by columns: the same sums as ViL's separate maps over cat(q, k, v), without
        writing that (B, L, 3E) concatenation or its gradient."""
        E, H = self.inner, self.num_heads
        dense = self.dense_qkv if self.dense_qkv is not None else c.is_cuda
        gate_w = torch.cat((cell.igate.weight, cell.fgate.weight))  # (2H, 3E): columns for q, k, v
        gate_b = torch.cat((cell.igate.bias, cell.fgate.bias))
        if dense:
            qk_bias = torch.cat((cell.q.bias, cell.k.bias)) if cell.q.bias is not None else None
            qk = F.linear(c, torch.cat((cell.q.dense_weight(), cell.k.dense_weight())), qk_bias)
            v = cell.v(xm, dense=True)
            q, k = qk.split(E, dim=-1)  # split's backward is one cat (slices' would zero-fill two 2E-wide grads)
            gates = F.linear(qk, gate_w[:, :2 * E], gate_b) + F.linear(v, gate_w[:, 2 * E:])
        else:
            q, k, v = cell.q(c, dense=False), cell.k(c, dense=False), cell.v(xm, dense=False)
            gates = F.linear(torch.cat((q, k, v), dim=-1), gate_w, gate_b)
        return q, k, v, gates

    def _run_cell(self, cell: _PathCell, xm: Tensor, c: Tensor, reverse: bool = False) -> Tensor:
        """xm, c: (B, L, E) in the cell's order (or canonical with `reverse`: the cell then runs from the last token
        to the first) → the cell output as a (B, L, H, DH) view, in the same order as xm."""
        B, L, E = xm.shape
        H, DH = self.num_heads, self.head_dim
        q, k, v, gates = self._project(cell, xm, c)

        # The cell and everything after it run in the autocast dtype, as ViL's kernels do (a float32 cell runs its
        # dots in exact fp32, ~16x slower); the fp32 parameters of the output norm and the skip are cast to it, so the
        # (B, L, E) tensors after the cell are not promoted to fp32.
        cell_dtype = self._cell_dtype(q)

        def heads(t: Tensor) -> Tensor:  # (B, L, E) → (B, H, L, DH), a view: the Triton cell reads any strides
            return t.to(cell_dtype).view(B, L, H, DH).transpose(1, 2)

        backend = None if self.kernel_backend in (None, "auto") else self.kernel_backend
        ig, fg = (g.transpose(1, 2) for g in gates.split(H, dim=-1))  # (B, H, L) views
        h = mlstm_cell(heads(q), heads(k), heads(v), ig, fg, reverse=reverse, backend=backend)  # (B, H, L, DH)
        return h.transpose(1, 2)  # (B, L, H, DH): the Triton cell writes this memory order (v's), so no copy

    @staticmethod
    def _cell_dtype(t: Tensor) -> torch.dtype:
        autocast = torch.is_autocast_enabled(t.device.type)
        return torch.get_autocast_dtype(t.device.type) if autocast else t.dtype

    def _use_fused_tail(self, c: Tensor) -> bool:
        if self.kernel_backend == "reference":
            return False
        return self.fused_tail if self.fused_tail is not None else c.is_cuda

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:
        if not ctx.paths:
            raise ValueError("mlstm needs at least one path in the MixContext")
        if len(self.cells) > 1 and len(ctx.paths) != len(self.cells):
            raise ValueError(f"mlstm was built for n_paths={len(self.cells)} but got {len(ctx.paths)} paths")
        xm, z = self.proj_up(x).chunk(2, dim=-1)
        c_canon = F.silu(grid_apply(xm, ctx.layout, self.conv)) if self.params.conv == "dw2d" else None
        native = c_canon is not None and self.native_paths
        out = None
        for j, path in enumerate(ctx.paths):
            cell = self.cells[j if len(self.cells) > 1 else 0]
            # an identity or reversed path needs no copies: the projections are per token, so q/k/v and the gates come
            # from the canonical order and the cell runs the path itself (ViL's alternating route)
            in_place = native and path.kind in ("identity", "reverse")
            if in_place:
                xm_p, c_p = xm, c_canon
            else:
                xm_p = path.gather(xm)
                c_p = path.gather(c_canon) if c_canon is not None else F.silu(self._causal_conv(xm_p))
            h = self._run_cell(cell, xm_p, c_p, reverse=in_place and path.kind == "reverse")
            if in_place and len(ctx.paths) == 1 and self._use_fused_tail(c_p):  # norm, skip and gate in one kernel
                return self.proj_down(mlstm_tail_fused(h, c_p, z, cell.norm_weight, cell.norm_bias, self.skip))
            h = mlstm_tail_ref(h, c_p, None, cell.norm_weight, cell.norm_bias, self.skip)
            h = h if in_place else path.scatter(h)
            out = h if out is None else out + h
        if len(ctx.paths) > 1:
            out = out / len(ctx.paths)
        return self.proj_down(out * F.silu(z))


def mlstm_tail_fused(h: Tensor, c: Tensor, z: Tensor, w: Tensor, b: Tensor | None, skip: Tensor) -> Tensor:
    """`kernels.triton.mlstm_tail.mlstm_tail_triton`, imported on first use (Triton is optional on CPU machines)."""
    from kernels.triton.mlstm_tail import mlstm_tail_triton

    return mlstm_tail_triton(h, c, z, w, b, skip)


MIXERS.register("mlstm", MLSTM)
