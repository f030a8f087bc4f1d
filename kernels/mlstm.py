r"""mLSTM cell (xLSTM / Vision-LSTM), pure-PyTorch references: parallel, recurrent and chunkwise forms.

Per batch and head, with q.k scaled by 1/sqrt(dqk), exponential input gate exp(i~), sigmoid forget gate used as
log f = logsigmoid(f~), and eps added after the normaliser's max:

    recurrent:  m_t = max(log f_t + m_{t-1}, i~_t);  i'_t = exp(i~_t - m_t);  f'_t = exp(log f_t + m_{t-1} - m_t)
                C_t = f'_t C_{t-1} + i'_t k_t v_t^T;   n_t = f'_t n_{t-1} + i'_t k_t      (C_0 = n_0 = m_0 = 0)
                h_t = C_t^T q_t / (max(|n_t^T q_t|, exp(-m_t)) + eps)
    parallel:   F_t = sum_{tau<=t} log f_tau;  log D_ts = F_t - F_s + i~_s (s <= t, else -inf)
                m_t = max_s log D_ts;  C~_ts = (q_t.k_s/sqrt(dqk)) exp(log D_ts - m_t)
                h_t = sum_s C~_ts v_s / (max(|sum_s C~_ts|, exp(-m_t)) + eps)

The stabiliser m cancels between numerator and normaliser, so the forms agree exactly at eps = 0.  With eps > 0
they differ by O(eps / normaliser): eps is added to a normaliser scaled by exp(-m), and the recurrent form's running
m_t (m_0 = 0, so m_t = max(F_t, row max)) can differ from the parallel row max.  The chunkwise form uses the row max
and equals the parallel form for any eps.
Shapes: q, k (batch, heads, L, dqk); v (batch, heads, L, dv); i, f (batch, heads, L); h like v.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mlstm_parallel_ref", "mlstm_recurrent_ref", "mlstm_chunkwise_ref", "mlstm_tail_ref"]


def _check(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor) -> None:
    if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3] or v.dim() != 4:
        raise ValueError(f"q, k must be (batch, heads, L, dqk) and v (batch, heads, L, dv); "
                         f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    if i.shape != q.shape[:3] or f.shape != q.shape[:3]:
        raise ValueError(f"i and f must be (batch, heads, L) = {tuple(q.shape[:3])}; got {tuple(i.shape)}, {tuple(f.shape)}")


def mlstm_parallel_ref(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, eps: float = 1e-6,
                       reverse: bool = False) -> Tensor:
    """Stabilised quadratic form (what ViL runs): O(L^2) memory per head, no sequential dependency. `reverse`: the
    cell runs from the last row to the first (the fast kernel does it by addressing; here by flipping)."""
    _check(q, k, v, i, f)
    if reverse:
        return mlstm_parallel_ref(q.flip(2), k.flip(2), v.flip(2), i.flip(2), f.flip(2), eps).flip(2)
    length = q.shape[2]
    log_f = F.logsigmoid(f).cumsum(-1)  # F_t: (batch, heads, L)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_d = (log_f[..., :, None] - log_f[..., None, :] + i[..., None, :]).masked_fill(~causal, float("-inf"))
    m = log_d.amax(-1, keepdim=True)  # (batch, heads, L, 1); finite: the diagonal is always kept
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1]) * torch.exp(log_d - m)  # (batch, heads, L, L)
    norm = torch.maximum(scores.sum(-1, keepdim=True).abs(), torch.exp(-m)) + eps
    return (scores / norm) @ v


def mlstm_recurrent_ref(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, eps: float = 1e-6) -> Tensor:
    """Stabilised step loop with a (dqk, dv) matrix memory: the form a causal decoder or a kernel would stream."""
    _check(q, k, v, i, f)
    batch, heads, _, dqk = q.shape
    k = k / math.sqrt(dqk)
    mem = q.new_zeros(batch, heads, dqk, v.shape[-1])
    nrm = q.new_zeros(batch, heads, dqk)
    m = q.new_zeros(batch, heads)
    hs = []
    steps = zip(q.unbind(2), k.unbind(2), v.unbind(2), i.unbind(2), F.logsigmoid(f).unbind(2))
    for q_t, k_t, v_t, i_t, lf_t in steps:
        m_new = torch.maximum(lf_t + m, i_t)
        f_g = torch.exp(lf_t + m - m_new)[..., None]
        i_g = torch.exp(i_t - m_new)[..., None]
        mem = f_g[..., None] * mem + (i_g * k_t)[..., :, None] * v_t[..., None, :]
        nrm = f_g * nrm + i_g * k_t
        m = m_new
        denom = torch.maximum((nrm * q_t).sum(-1).abs(), torch.exp(-m)) + eps
        hs.append(torch.einsum("bhkv,bhk->bhv", mem, q_t) / denom[..., None])
    return torch.stack(hs, dim=2)


def mlstm_chunkwise_ref(
    q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, eps: float = 1e-6, chunk_size: int = 64
) -> Tensor:
    """Chunkwise form: parallel inside chunks of ``chunk_size``, a stabilised matrix state between them.

    Memory O(L * chunk_size) instead of O(L^2); equals ``mlstm_parallel_ref`` (same row-max stabiliser, computed
    jointly over the inter-chunk and intra-chunk terms).  L need not be a multiple of ``chunk_size``.
    """
    _check(q, k, v, i, f)
    batch, heads, length, dqk = q.shape
    qs = q / math.sqrt(dqk)
    log_f = F.logsigmoid(f)
    mem = q.new_zeros(batch, heads, dqk, v.shape[-1])  # stabilised by exp(-m_state)
    nrm = q.new_zeros(batch, heads, dqk)
    m_state = q.new_full((batch, heads), float("-inf"))  # empty state: no contribution
    outs = []
    for start in range(0, length, chunk_size):
        sl = slice(start, start + chunk_size)
        q_c, k_c, v_c, i_c = qs[:, :, sl], k[:, :, sl], v[:, :, sl], i[:, :, sl]
        b = log_f[:, :, sl].cumsum(-1)  # decay from the chunk start, inclusive: (batch, heads, T)
        t_len = b.shape[-1]
        causal = torch.ones(t_len, t_len, dtype=torch.bool, device=q.device).tril()
        log_d = (b[..., :, None] - b[..., None, :] + i_c[..., None, :]).masked_fill(~causal, float("-inf"))
        inter_log = b + m_state[..., None]  # (batch, heads, T)
        m = torch.maximum(log_d.amax(-1), inter_log)  # joint row stabiliser, always finite
        scores = (q_c @ k_c.transpose(-1, -2)) * torch.exp(log_d - m[..., None])
        w_inter = torch.exp(inter_log - m)[..., None]  # 0 for the first chunk
        num = scores @ v_c + w_inter * (q_c @ mem)
        den = scores.sum(-1) + w_inter[..., 0] * (q_c * nrm[..., None, :]).sum(-1)
        outs.append(num / (torch.maximum(den.abs(), torch.exp(-m)) + eps)[..., None])
        # state update to the chunk end: weights exp(b_last - b_s + i_s) on k_s v_s^T, exp(b_last) on the old state
        a = b[..., -1:] - b + i_c  # (batch, heads, T)
        m_new = torch.maximum(b[..., -1] + m_state, a.amax(-1))
        w_old = torch.exp(b[..., -1] + m_state - m_new)
        w_new = torch.exp(a - m_new[..., None])
        mem = w_old[..., None, None] * mem + (k_c * w_new[..., None]).transpose(-1, -2) @ v_c
        nrm = w_old[..., None] * nrm + (k_c * w_new[..., None]).sum(-2)
        m_state = m_new
    return torch.cat(outs, dim=2)


def mlstm_tail_ref(h: Tensor, c: Tensor, z: Tensor | None, w: Tensor, b: Tensor | None, skip: Tensor,
                   eps: float = 1e-5) -> Tensor:
    """ViL's layer after the cell: (LN_head(h) * w + b + skip * c) * SiLU(z) per token (no gate when z is None).
    h (B, L, H, DH), c and z (B, L, H*DH), w, b, skip (H*DH,). Runs in h's dtype (the cell's: under autocast its
    dtype, with the per-head LayerNorm kept out of autocast's fp32 copies; fp32 inside its kernel)."""
    bsz, length, heads, dh = h.shape
    dt = h.dtype
    with torch.autocast(h.device.type, enabled=False):
        hn = F.layer_norm(h, (dh,), eps=eps).reshape(bsz, length, heads * dh)
    a = torch.addcmul(b.to(dt), hn, w.to(dt)) if b is not None else hn * w.to(dt)
    a = torch.addcmul(a, skip.to(dt), c.to(dt))
    return a if z is None else a * F.silu(z.to(dt))
