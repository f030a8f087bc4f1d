"""Selective-SSM (Mamba-1 / S6) token mixer run along the paths of a route: Vim's bidirectional block and VMamba's SS2D.

Math (E = d_inner = int(expand·dim), N = d_state, R = dt_rank, P = number of paths, K = conv width):

    [x ; z] = in_proj(u)                                   x, z: (B, L, E)   (z only when gated)
    per path p, in canonical order:
        causal1d: x'_p = scatter_p( SiLU( causal_dwconv1d_p( gather_p(x) ) ) )   (Vim v2: a conv per path;
                  Vim v1, conv_per_path=False: ONE conv run along the first path, its output shared by all paths)
        dw2d:     x'_p = SiLU( dwconv2d(x) ) for every p   (one 3×3 depthwise conv on each token grid, VMamba;
                  class tokens have no neighbours and pass through the conv unchanged)
        [δ ; B ; C] = x'_p · W_x,p                         δ: R channels, B, C: N (shared by all E channels)
        Δ = softplus(δ · W_dt,p + b_dt,p)                  (the bias and softplus are applied inside the scan)
        y_p = S6 scan of x'_p along path p with A_p = −exp(A_log,p), skip D_p, scattered back to canonical order
    y = mean_p y_p (Vim, `merge="mean"`: the code's /2) or Σ_p y_p (VMamba, `merge="sum"`)
    y = LayerNorm(y) if out_norm;   y = y ⊙ SiLU(z) if gated;   out = out_proj(y)

Gating commutes with the merge (z is per canonical token), so without out_norm the gate is fused into the scan call.
`path_params="shared_except_A"` (Vim v1) keeps one x_proj/dt_proj/D for all paths and an A per path.

Initialisation follows Vim / Mamba: dt_proj.weight ~ U(±R^−½); dt_proj.bias = softplus⁻¹(Δ₀), Δ₀ log-uniform in
[1e-3, 1e-1] clamped ≥ 1e-4 (for every path; Vim's official code zeroes the *backward* dt bias by accident, so its
backward Δ starts at softplus(0) ≈ 0.69 — not reproduced here); A_log = log(1..N); D = 1; in_proj / x_proj / convs
use PyTorch's default bounds (U(±1/√fan_in)); Linear biases 0; out_proj.weight ~ U(±1/√E) / √depth.

Parameters are stacked per path (leading dim P, or 1 when shared), so the per-block count is exactly
in_proj + out_proj + per path [conv E·K + E, x_proj E(R+2N), dt_proj RE + E, A_log EN, D E] (+ 2E for out_norm).

`is_causal` is True: with `conv="causal1d"` every output at path step t depends only on steps ≤ t of that path. The
`dw2d` conv mixes 3×3 grid neighbours before the scan, so that variant is causal only up to the conv's footprint
(as in VMamba).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from kernels.dispatch import causal_conv1d_paths, selective_scan_paths

from ..layout import MixContext, grid_apply
from .base import MIXERS, MixerParams, TokenMixer


class SSMParams(MixerParams):
    """Defaults are Vim's block (bimamba v2, divide-out)."""

    d_state: int = Field(16, ge=1)
    expand: float = Field(2.0, gt=0)
    dt_rank: int | Literal["auto"] = "auto"
    conv: Literal["causal1d", "dw2d"] = "causal1d"
    conv_size: int | None = None
    conv_bias: bool = True
    conv_per_path: bool = True
    path_params: Literal["separate", "shared_except_A"] = "separate"
    gate: bool = True
    out_norm: bool = False
    merge: Literal["mean", "sum"] = "mean"
    proj_bias: bool = False


class SSMMixer(TokenMixer):
    Params = SSMParams
    no_weight_decay_names = frozenset({"A_log", "D"})  # as Mamba marks them (_no_weight_decay)
    test_params = ({"d_state": 4},
                   {"d_state": 2, "expand": 1.0, "conv": "dw2d", "conv_bias": False, "gate": False, "out_norm": True,
                    "merge": "sum"})

    def __init__(self, dim: int, *, params: SSMParams, n_paths: int = 1, layer_idx: int = 0, depth: int = 1,
                 kernel_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, params=params, n_paths=n_paths, layer_idx=layer_idx, depth=depth,
                         kernel_backend=kernel_backend, device=device, dtype=dtype)
        if n_paths < 1:
            raise ValueError(f"n_paths must be >= 1, got {n_paths}")
        if isinstance(params.dt_rank, int) and params.dt_rank < 1:
            raise ValueError(f"dt_rank must be >= 1 or 'auto', got {params.dt_rank}")
        fk = {"device": device, "dtype": dtype}
        p = params
        E = self.d_inner = int(p.expand * dim)
        if E < 1:
            raise ValueError(f"expand={p.expand} gives d_inner={E} for dim={dim}")
        N = self.d_state = p.d_state
        R = self.dt_rank = math.ceil(dim / 16) if p.dt_rank == "auto" else p.dt_rank
        K = self.conv_size = p.conv_size if p.conv_size is not None else (4 if p.conv == "causal1d" else 3)
        if K < 1 or (p.conv == "dw2d" and K % 2 == 0):
            raise ValueError(f"conv_size must be >= 1 (and odd for dw2d to keep the grid size); got {K}")
        P = n_paths
        Pq = P if p.path_params == "separate" else 1  # paths holding their own x_proj / dt_proj / D

        self.in_proj = nn.Linear(dim, E * (2 if p.gate else 1), bias=p.proj_bias, **fk)
        if p.conv == "causal1d":
            Pc = P if p.conv_per_path else 1
            self.conv_weight = nn.Parameter(torch.empty(Pc, E, K, **fk))
            self.conv_bias = nn.Parameter(torch.empty(Pc, E, **fk)) if p.conv_bias else None
            self.conv2d = None
        else:
            self.conv_weight = self.conv_bias = None
            self.conv2d = nn.Conv2d(E, E, K, padding=K // 2, groups=E, bias=p.conv_bias, **fk)
        self.x_proj_weight = nn.Parameter(torch.empty(Pq, R + 2 * N, E, **fk))
        self.dt_proj_weight = nn.Parameter(torch.empty(Pq, E, R, **fk))
        self.dt_proj_bias = nn.Parameter(torch.empty(Pq, E, **fk))
        self.A_log = nn.Parameter(torch.empty(P, E, N, **fk))
        self.D = nn.Parameter(torch.empty(Pq, E, **fk))
        self.out_norm = nn.LayerNorm(E, **fk) if p.out_norm else None
        self.out_proj = nn.Linear(E, dim, bias=p.proj_bias, **fk)
        self.reset_parameters()

    @classmethod
    def canonical_params(cls, params: MixerParams) -> MixerParams:
        # conv_per_path only applies to the 1-D conv; the 2-D conv is shared by construction.
        return params.model_copy(update={"conv_per_path": True}) if params.conv == "dw2d" else params

    @classmethod
    def is_causal(cls, params: MixerParams) -> bool:
        return True

    @classmethod
    def causal_along_path(cls, params: SSMParams) -> bool:
        return params.conv == "causal1d"  # the dw2d conv sees grid neighbours on both sides of the path

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1, dt_floor: float = 1e-4) -> None:
        if self.A_log.is_meta:
            return  # no values to set; its pointwise math would load torch's Python decompositions (~1.5 s, once)
        E, N, R, K = self.d_inner, self.d_state, self.dt_rank, self.conv_size
        self.in_proj.reset_parameters()
        if self.in_proj.bias is not None:
            self.in_proj.bias.zero_()
        if self.conv_weight is not None:
            bound = 1.0 / math.sqrt(K)  # PyTorch's Conv1d default for a depthwise conv (fan_in = K)
            self.conv_weight.uniform_(-bound, bound)
            if self.conv_bias is not None:
                self.conv_bias.uniform_(-bound, bound)
        else:
            self.conv2d.reset_parameters()
        self.x_proj_weight.uniform_(-(E ** -0.5), E ** -0.5)
        self.dt_proj_weight.uniform_(-(R ** -0.5), R ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_proj_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_proj_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        a = torch.arange(1, N + 1, dtype=torch.float32, device=self.A_log.device)
        self.A_log.copy_(torch.log(a).expand_as(self.A_log))
        self.D.fill_(1.0)
        if self.out_norm is not None:
            self.out_norm.reset_parameters()
        bound = E ** -0.5
        self.out_proj.weight.uniform_(-bound, bound)
        self.out_proj.weight.div_(math.sqrt(self.depth))
        if self.out_proj.bias is not None:
            self.out_proj.bias.zero_()

    def _conv_paths(self, x: Tensor, ctx: MixContext) -> tuple[Tensor, Tensor | None]:
        """Conv outputs in canonical order, stacked over paths, channel-last: (B, P, L, E) (a stride-0 broadcast over
        P when one conv output serves every path, which is then also returned as (B, L, E), else None). The 1-D conv
        runs along each path without gathered copies (kernels.path_conv: one Triton launch on CUDA, whose output
        memory is (P, B, L, E))."""
        P = self.n_paths
        if self.conv2d is not None:
            shared = F.silu(grid_apply(x, ctx.layout, self.conv2d))
            return shared.unsqueeze(1).expand(-1, P, -1, -1), shared
        n_conv = P if self.params.conv_per_path else 1  # Vim v1: one conv along the first path, shared
        paths = torch.stack([p.index.to(x.device) for p in ctx.paths[:n_conv]])
        backend = self.kernel_backend if self.kernel_backend in ("triton", "reference") else None  # no mamba_ssm conv
        u = causal_conv1d_paths(x, self.conv_weight, self.conv_bias, paths, backend=backend)
        return (u, None) if n_conv == P else (u.expand(-1, P, -1, -1), u.squeeze(1))

    def _project(self, u: Tensor, shared: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """x_proj and dt_proj of every path as batched matmuls over paths: Δ (P, B, L, E) and B, C (P, B, L, N) views.

        x_proj's rows are reordered (the parameter keeps Mamba's [δ ; B ; C]) and padded with zero rows so that every
        row of the product and dt_proj's operand start on 16 bytes, which cuBLAS needs for its fast kernels (Vim's
        unpadded 2N + R = 44 columns sent it to 16×16-tile wmma kernels, 12 % of a study step on an H100): with 2N a
        multiple of 8, [B ; C ; δ ; 0] (B and C first, so the scan reads a step's N values of B or C as whole
        16-byte vectors), else [δ ; 0 ; B ; C ; 0]. δ's zero rows (up to R' = R rounded up to 8) meet R' − R zero
        columns of dt_proj's weight. The zeros add nothing to Δ and take no gradient from the parameters (the
        padding's own gradient is dropped). With u's memory (P, B, L, E) (the path conv's) or one u shared by every
        path (one matmul for all paths), no copy of u is made. `shared`: the (B, L, E) tensor u broadcasts when one
        conv output serves every path; the product reads it directly (selecting a path of the broadcast instead made
        the backward zero-fill and add a (B, P, L, E) gradient)."""
        Bsz, P, L, E = u.shape
        N, R = self.d_state, self.dt_rank
        pad_r = -R % 8
        w = self.x_proj_weight
        zeros = lambda n: [w.new_zeros(w.shape[0], n, E)] if n else []  # noqa: E731
        if (2 * N) % 8 == 0:
            parts, order = [w[:, R:], w[:, :R], *zeros(pad_r)], "bcd"
        else:
            parts, order = [w[:, :R], *zeros(pad_r), w[:, R:], *zeros(-(R + pad_r + 2 * N) % 8)], "dbcz"
        w = torch.cat(parts, 1).expand(P, -1, -1)  # (P, J, E), J a multiple of 8
        J = w.shape[1]
        if shared is not None:  # one u for all paths: one (B·L, E) × (E, P·J) product
            x_dbl = (shared.reshape(Bsz * L, E) @ w.reshape(P * J, E).t()).view(Bsz, L, P, J).permute(2, 0, 1, 3)
        else:
            x_dbl = torch.bmm(u.transpose(0, 1).reshape(P, Bsz * L, E), w.transpose(1, 2)).view(P, Bsz, L, J)
        dt_w = F.pad(self.dt_proj_weight, (0, pad_r)) if pad_r else self.dt_proj_weight
        # split, not slices: its backward writes x_dbl's gradient once (each slice's would zero-fill a whole copy)
        sizes = {"b": N, "c": N, "d": R + pad_r, "z": J - 2 * N - R - pad_r}
        cols = dict(zip(order, x_dbl.split([sizes[k] for k in order], dim=-1)))
        delta = torch.bmm(cols["d"].reshape(P, Bsz * L, R + pad_r),
                          dt_w.expand(P, -1, -1).transpose(1, 2)).view(P, Bsz, L, E)
        return delta, cols["b"], cols["c"]

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:
        if len(ctx.paths) != self.n_paths:
            raise ValueError(f"this SSM mixer was built for {self.n_paths} path(s); the context gives "
                             f"{len(ctx.paths)} ({[p.name for p in ctx.paths]})")
        if x.dim() != 3 or x.shape[1] != ctx.layout.length:
            raise ValueError(f"x must be (batch, {ctx.layout.length}, {self.dim}); got {tuple(x.shape)}")
        P = self.n_paths
        xz = self.in_proj(x)
        E = self.d_inner
        x_in, z = xz.split(E, dim=-1) if self.params.gate else (xz, None)  # split: one cat in the backward
        # Everything stays channel-last in memory ((…, L, E), what token-wise Linear layers produce); the scan gets
        # (…, E, L) views of it, which the fused kernel reads through strides (much faster for column routes).
        u, shared = self._conv_paths(x_in, ctx)  # (B, P, L, E)
        delta, Bm, Cm = self._project(u, shared)  # (P, B, L, ·) views
        A = -torch.exp(_atleast_f32(self.A_log))
        D = _atleast_f32(self.D.expand(P, -1))
        delta_bias = _atleast_f32(self.dt_proj_bias.expand(P, -1))
        paths = torch.stack([p.index.to(x.device) for p in ctx.paths])
        fuse_gate = self.params.gate and self.out_norm is None
        y = selective_scan_paths(
            u.transpose(-1, -2), delta.permute(1, 0, 3, 2), A, Bm.permute(1, 0, 3, 2), Cm.permute(1, 0, 3, 2), D,
            z=z.transpose(1, 2) if fuse_gate else None,
            delta_bias=delta_bias, delta_softplus=True, paths=paths, merge=self.params.merge,
            backend=None if self.kernel_backend == "auto" else self.kernel_backend,
        ).transpose(1, 2)  # (B, L, E)
        if self.out_norm is not None:
            y = self.out_norm(y)
            if self.params.gate:
                y = y * F.silu(z)
        return self.out_proj(y)


def _atleast_f32(t: Tensor) -> Tensor:
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


MIXERS.register("ssm", SSMMixer)

__all__ = ["SSMMixer", "SSMParams"]
