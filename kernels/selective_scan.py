r"""Selective scan (Mamba S6), pure-PyTorch reference with mamba-ssm's conventions.

Math, per batch b, channel d, state n (zero initial state, A real, B discretised by Euler as in mamba-ssm):

    delta   <- delta + delta_bias[d]            (if delta_bias)
    delta   <- softplus(delta)                  (if delta_softplus)
    h_t     = exp(delta_t * A[d, n]) * h_{t-1} + delta_t * B_t[n] * u_t
    y_t     = sum_n C_t[n] * h_t[n]
    out     = y + D[d] * u                      (if D)
    out     = out * silu(z)                     (if z)

Shapes: u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or grouped (batch, G, N, L), where group g
serves channels g*dim/G .. (g+1)*dim/G - 1; D, delta_bias: (dim,). Computed in float32 (float64 if any input is
float64); ``out`` has u's dtype, ``last_state`` (batch, dim, N) the compute dtype (as mamba-ssm).

Why this chunked form.  The sequence is cut into ``nc`` chunks of ``T`` steps and the recurrence runs *across all
chunks at once*: (1) a T-step pass from a zero state gives each chunk's local end state, (2) an nc-step pass carries
the true state across chunk boundaries, h_c = prod_t(a_t) * h_{c-1} + local_c, (3) a second T-step pass restarts every
chunk from its carried state and emits y.  That is 2T + nc Python steps instead of L, on tensors nc times larger, and
every factor is a product of exp(delta*A) <= 1 (for delta >= 0, A <= 0), so nothing can overflow.  We measured the
alternative "log-space cumsum + causal mask" form: it needs a (batch, dim, T, T, N) decay tensor per chunk (T times
the exp work of a scan) and loses float32 accuracy to the cancellation S_t - S_s (about 10x the error here); it was
2-6x slower on CPU (fwd+bwd, batch 8, dim 64-192, L 64-1024).  Against the per-step loop this form is 1.4-2.6x faster
on 2 CPU cores (benchmarks/RESULTS.md); both are bound by the same batch*dim*L*N exps at large sizes.
Autograd memory is O(batch*dim*L*N), like the per-step loop; no L x L or T x T x N intermediate is kept.
Per-step slices are taken with ``unbind`` (whose backward is one ``stack``), not indexing: indexing a big tensor
inside a loop makes backward allocate a full-size zero tensor per step, which is quadratic in L.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["selective_scan_naive", "selective_scan_ref", "selective_scan_segsum"]

ScanResult = Tensor | tuple[Tensor, Tensor]


def _compute_dtype(*tensors: Tensor | None) -> torch.dtype:
    return torch.float64 if any(t is not None and t.dtype == torch.float64 for t in tensors) else torch.float32


def _check_and_group(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> int:
    """Validate shapes; return the number of B/C groups G."""
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"u and delta must both be (batch, dim, L); got {tuple(u.shape)} and {tuple(delta.shape)}")
    batch, dim, length = u.shape
    if A.is_complex() or A.dim() != 2 or A.shape[0] != dim:
        raise ValueError(f"A must be real (dim={dim}, N); got {tuple(A.shape)} {A.dtype}")
    n = A.shape[1]
    groups = 1 if B.dim() == 3 else B.shape[1]
    for name, t in (("B", B), ("C", C)):
        ok = t.shape == (batch, n, length) if t.dim() == 3 else t.dim() == 4 and t.shape == (batch, groups, n, length)
        if not ok:
            raise ValueError(
                f"{name} must be (batch={batch}, N={n}, L={length}) or (batch, G, N, L) with the same G for B and C; "
                f"got {tuple(t.shape)}"
            )
    if B.dim() != C.dim():
        raise ValueError(f"B and C must both be grouped or both ungrouped; got {B.dim()}-D and {C.dim()}-D")
    if dim % groups:
        raise ValueError(f"dim={dim} must be divisible by the number of B/C groups G={groups}")
    return groups


def _prepare(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, z: Tensor | None,
             delta_bias: Tensor | None, delta_softplus: bool) -> tuple[int, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Shared preamble of both paths: cast, add the bias, softplus; B, C as (batch, G, N, L)."""
    groups = _check_and_group(u, delta, A, B, C)
    dt = _compute_dtype(u, delta, A, B, C, D, z, delta_bias)
    u, delta, A, B, C = (t.to(dt) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dt)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    if B.dim() == 3:
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    return groups, u, delta, A, B, C


def _finish(y: Tensor, u: Tensor, D: Tensor | None, z: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    out = y if D is None else y + u * D.to(y.dtype)[:, None]
    if z is not None:
        out = out * F.silu(z.to(y.dtype))
    return out.to(out_dtype)


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int | None = 8,
) -> ScanResult:
    """Chunked selective scan (see module docstring); the oracle for every fast path.

    ``chunk_size`` (T) trades Python steps (2T + L/T) against tensor size; 8 was fastest on CPU for L = 64..1024,
    ``None`` picks ceil(sqrt(L)).  The result does not depend on it beyond rounding.
    """
    out_dtype = u.dtype
    groups, u, delta, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    n, h_per_g = A.shape[1], dim // groups
    t_len = chunk_size or max(1, math.ceil(math.sqrt(length)))
    t_len = max(1, min(t_len, length))
    nc = -(-length // t_len)
    pad = nc * t_len - length
    # Zero padding at the end: delta = 0 there, so padded steps neither decay nor feed the state (last_state is
    # still the state after step L).
    ud, dl, Bp, Cp = (F.pad(t, (0, pad)) if pad else t for t in (u, delta, B, C))

    # time-major, chunk-batched views: (T, nc, batch, G, H) and (T, nc, batch, G, N)
    def tm(t: Tensor, mid: int) -> Tensor:
        return t.reshape(batch, groups, mid, nc, t_len).permute(4, 3, 0, 1, 2)

    d_t, u_t = tm(dl, h_per_g), tm(ud, h_per_g)
    b_t, c_t = tm(Bp, n), tm(Cp, n)
    decay = torch.exp(d_t[..., None] * A.view(groups, h_per_g, n)).unbind(0)  # T x (nc, batch, G, H, N)
    drive = ((d_t * u_t)[..., None] * b_t[..., None, :]).unbind(0)  # T x (nc, batch, G, H, N)
    c_steps = c_t.unbind(0)  # T x (nc, batch, G, N)

    # (1) local end state of each chunk from a zero start, and the chunk's total decay
    local, total = drive[0], decay[0]
    for a_j, x_j in zip(decay[1:], drive[1:]):
        local = torch.addcmul(x_j, a_j, local)
        total = total * a_j
    # (2) carry the true state across chunk boundaries: start[c] = state entering chunk c
    starts = [torch.zeros_like(local[0])]
    for loc_c, tot_c in zip(local.unbind(0)[:-1], total.unbind(0)[:-1]):
        starts.append(torch.addcmul(loc_c, tot_c, starts[-1]))
    h = torch.stack(starts)  # (nc, batch, G, H, N)
    # (3) rerun every chunk from its true start and read out y
    ys = []
    for a_j, x_j, c_j in zip(decay, drive, c_steps):
        h = torch.addcmul(x_j, a_j, h)
        ys.append(torch.einsum("cbghn,cbgn->bghc", h, c_j))
    y = torch.stack(ys, -1).reshape(batch, dim, nc * t_len)[..., :length]  # (batch, dim, L)
    out = _finish(y, u, D, z, out_dtype)
    if not return_last_state:
        return out
    return out, h[-1].reshape(batch, dim, n)


def selective_scan_segsum(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    chunk_size: int = 16,
) -> ScanResult:
    """The loop-free form for graph export (ONNX): the same result as ``selective_scan_ref`` with no Python loop.

    With S_t = cumsum of delta*A inside a chunk of T steps, h_t = sum_{s<=t} exp(S_t - S_s) delta_s B_s u_s plus the
    chunk's carried start state times exp(S_t); the start states are the same sum one level up, over chunks (their
    total log-decays summed). A traced graph therefore has a fixed ~20 ops per scan instead of ~4 per step, at the
    cost the module docstring names (a (T x T) decay per chunk and the S_t - S_s cancellation, bounded by eps*|S|
    per chunk): a form for export, not for training.
    """
    out_dtype = u.dtype
    groups, u, delta, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    n, h_per_g = A.shape[1], dim // groups
    t_len = max(1, min(chunk_size, length))
    nc = -(-length // t_len)
    pad = nc * t_len - length
    ud, dl, Bp, Cp = (F.pad(t, (0, pad)) if pad else t for t in (u, delta, B, C))  # delta = 0: no decay, no input
    d = dl.reshape(batch, groups, h_per_g, 1, nc, t_len)  # (b, g, h, 1, c, t)
    x = (dl * ud).reshape(batch, groups, h_per_g, nc, t_len)  # (b, g, h, c, t)
    b_, c_ = Bp.reshape(batch, groups, n, nc, t_len), Cp.reshape(batch, groups, n, nc, t_len)  # (b, g, n, c, t)
    s_log = torch.cumsum(d * A.view(groups, h_per_g, n, 1, 1), dim=-1)  # S: (b, g, h, n, c, t)
    causal = torch.ones(t_len, t_len, dtype=torch.bool, device=u.device).tril()
    seg = torch.where(causal, s_log[..., :, None] - s_log[..., None, :], float("-inf")).exp()  # (b,g,h,n,c,t,s)
    y = torch.einsum("bgnct,bghncts,bgncs,bghcs->bghct", c_, seg, b_, x)  # inside each chunk, from a zero state
    last = s_log[..., -1]  # total log-decay of each chunk: (b, g, h, n, c)
    local = torch.einsum("bghncs,bgncs,bghcs->bghnc", (last[..., None] - s_log).exp(), b_, x)  # chunk end states
    ends = torch.cumsum(last, dim=-1)  # log-decay from the start to each chunk's end
    chunks = torch.ones(nc, nc, dtype=torch.bool, device=u.device).tril(-1)  # chunk c' feeds chunk c > c'
    carry = torch.where(chunks, (ends - last)[..., :, None] - ends[..., None, :], float("-inf")).exp()
    start = torch.einsum("bghnck,bghnk->bghnc", carry, local)  # state entering each chunk
    y = y + torch.einsum("bgnct,bghnct,bghnc->bghct", c_, s_log.exp(), start)
    out = _finish(y.reshape(batch, dim, nc * t_len)[..., :length], u, D, z, out_dtype)
    if not return_last_state:
        return out
    return out, (start[..., -1] * last[..., -1].exp() + local[..., -1]).reshape(batch, dim, n)


def selective_scan_naive(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
) -> ScanResult:
    """The recurrence written one step at a time: the test oracle for ``selective_scan_ref``."""
    out_dtype = u.dtype
    groups, u, delta, A, B, C = _prepare(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    batch, dim, _ = u.shape
    # per-channel B/C: (batch, dim, N, L)
    B = B.repeat_interleave(dim // groups, dim=1)
    C = C.repeat_interleave(dim // groups, dim=1)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for u_t, d_t, B_t, C_t in zip(u.unbind(-1), delta.unbind(-1), B.unbind(-1), C.unbind(-1)):
        h = torch.exp(d_t[..., None] * A) * h + (d_t * u_t)[..., None] * B_t
        ys.append((h * C_t).sum(-1))
    y = torch.stack(ys, dim=-1)  # (batch, dim, L)
    out = _finish(y, u, D, z, out_dtype)
    return (out, h) if return_last_state else out
