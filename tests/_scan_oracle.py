"""Private loop oracles for the Triton kernel tests: tiny, obviously correct, in any dtype on any device.

`dtype=torch.float64` gives the oracle; the same code in the inputs' own dtype gives "the same-dtype PyTorch
computation" that the tolerance rule compares against (see tests/test_triton_scan.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rel_err(x: torch.Tensor, ref: torch.Tensor) -> float:
    """‖x − ref‖ / ‖ref‖ in float64; NaN anywhere gives inf."""
    x, ref = x.double(), ref.double()
    if not torch.isfinite(x).all():
        return float("inf")
    return ((x - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def scan_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, dtype=torch.float64):
    """One path: u, delta (b, d, L); A (d, n); B, C (b, n, L). Returns y (b, d, L) computed in `dtype`."""
    u, delta, A, B, C = (x.to(dtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[..., t, None] * A) * h + delta[..., t, None] * B[:, None, :, t] * u[..., t, None]
        ys.append((h * C[:, None, :, t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.to(dtype)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(dtype))
    return y


def scan_paths_loop(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, paths=None,
                    merge="sum", dtype=torch.float64):
    """Multi-path oracle: gather by paths[p], scan, scatter back, merge, gate."""
    n_paths, length = u.shape[1], u.shape[-1]
    out = 0
    for p in range(n_paths):
        idx = paths[p].long().to(u.device) if paths is not None else torch.arange(length, device=u.device)
        inv = torch.argsort(idx)
        y = scan_loop(u[:, p][..., idx], delta[:, p][..., idx], A[p], B[:, p][..., idx], C[:, p][..., idx],
                      None if D is None else D[p], None, None if delta_bias is None else delta_bias[p],
                      delta_softplus, dtype)
        out = out + y[..., inv]
    if merge == "mean":
        out = out / n_paths
    if z is not None:
        out = out * F.silu(z.to(dtype))
    return out


def mlstm_parallel_loop(q, k, v, i, f, eps=1e-6, dtype=torch.float64):
    """Parallel stabilised mLSTM (the ViL form); q, k (b, h, L, dqk), v (b, h, L, dv), i, f (b, h, L)."""
    q, k, v, i, f = (x.to(dtype) for x in (q, k, v, i, f))
    length, dqk = q.shape[-2], q.shape[-1]
    cum = F.logsigmoid(f).cumsum(-1)
    logd = cum[..., :, None] - cum[..., None, :] + i[..., None, :]
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    logd = logd.masked_fill(~causal, float("-inf"))
    m = logd.amax(-1, keepdim=True)
    c = (q @ k.transpose(-1, -2)) / dqk ** 0.5 * torch.exp(logd - m)
    n = torch.maximum(c.sum(-1, keepdim=True).abs(), torch.exp(-m))
    return (c / (n + eps)) @ v
