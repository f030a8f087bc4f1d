"""The ViL layer's tail after the mLSTM cell as one Triton kernel each way:

    y = (LN_head(h) ⊙ w + b + skip ⊙ c) ⊙ SiLU(z)          per token; LN_head normalises each head's DH channels

h is the cell output ((B, L, H, DH) memory from the Triton cell), c the conv branch and z the gate half of proj_up
((B, L, E) views), w, b, skip (E,) parameters. In PyTorch this is a layer_norm, two addcmuls, a SiLU and a product
forward, and their backwards: ~13 passes over (B, L, E) tensors a block and fp32 copies under autocast. Here the
forward reads h, c, z once and writes y (plus a mean and 1/std per token and head); the backward reads dy, h, c, z
once and writes dh, dc, dz, with the parameters' gradients as per-program partial sums. All math is fp32; the outputs
are rounded to the inputs' dtype once.
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl

from .memory_order import like_layout


@triton.jit
def _rows_and_cols(pid, R, L, HEAD, BR: tl.constexpr, DHP: tl.constexpr, DH):
    r = pid * BR + tl.arange(0, BR)
    d = tl.arange(0, DHP)
    return r, r // L, r % L, d, HEAD * DH + d, (r < R)[:, None] & (d < DH)[None, :]


@triton.jit
def _normed(Hp, bi, li, HEAD, d, mask, sh_b, sh_l, sh_h, sh_d, DH, eps):
    """One head's normalised rows (fp32), their mean and 1/std."""
    h = tl.load(Hp + bi[:, None] * sh_b + li[:, None] * sh_l + HEAD * sh_h + d[None, :] * sh_d, mask=mask,
                other=0.0).to(tl.float32)
    mean = tl.sum(h, 1) / DH
    hc = tl.where(mask, h - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(hc * hc, 1) / DH + eps)
    return hc * rstd[:, None], mean, rstd


@triton.jit
def _tail_fwd_kernel(Hp, C, Z, W, Bv, S, Y, MEAN, RSTD, R, L, NH, DH, eps,
                     sh_b, sh_l, sh_h, sh_d, sc_b, sc_l, sc_e, sz_b, sz_l, sz_e, sy_b, sy_l, sy_e,
                     BR: tl.constexpr, DHP: tl.constexpr, HAS_B: tl.constexpr):
    pid = tl.program_id(0)
    for head in range(0, NH):
        r, bi, li, d, e, mask = _rows_and_cols(pid, R, L, head, BR, DHP, DH)
        hn, mean, rstd = _normed(Hp, bi, li, head, d, mask, sh_b, sh_l, sh_h, sh_d, DH, eps)
        dmask = d < DH
        w = tl.load(W + e, mask=dmask, other=0.0).to(tl.float32)
        s = tl.load(S + e, mask=dmask, other=0.0).to(tl.float32)
        c = tl.load(C + bi[:, None] * sc_b + li[:, None] * sc_l + e[None, :] * sc_e, mask=mask, other=0.0)
        z = tl.load(Z + bi[:, None] * sz_b + li[:, None] * sz_l + e[None, :] * sz_e, mask=mask, other=0.0)
        a = hn * w[None, :] + s[None, :] * c.to(tl.float32)
        if HAS_B:
            a += tl.load(Bv + e, mask=dmask, other=0.0).to(tl.float32)[None, :]
        zf = z.to(tl.float32)
        y = a * zf * tl.sigmoid(zf)
        tl.store(Y + bi[:, None] * sy_b + li[:, None] * sy_l + e[None, :] * sy_e, y.to(Y.dtype.element_ty), mask=mask)
        tl.store(MEAN + r * NH + head, mean, mask=r < R)
        tl.store(RSTD + r * NH + head, rstd, mask=r < R)


@triton.jit
def _tail_bwd_kernel(DY, Hp, C, Z, W, Bv, S, MEAN, RSTD, DHo, DC, DZ, PART, R, L, NH, DH, E,
                     sdy_b, sdy_l, sdy_e, sh_b, sh_l, sh_h, sh_d, sc_b, sc_l, sc_e, sz_b, sz_l, sz_e,
                     sdh_b, sdh_l, sdh_h, sdh_d, sdc_b, sdc_l, sdc_e, sdz_b, sdz_l, sdz_e,
                     BR: tl.constexpr, DHP: tl.constexpr, HAS_B: tl.constexpr):
    pid = tl.program_id(0)
    for head in range(0, NH):
        r, bi, li, d, e, mask = _rows_and_cols(pid, R, L, head, BR, DHP, DH)
        dmask = d < DH
        h = tl.load(Hp + bi[:, None] * sh_b + li[:, None] * sh_l + head * sh_h + d[None, :] * sh_d, mask=mask,
                    other=0.0).to(tl.float32)
        mean = tl.load(MEAN + r * NH + head, mask=r < R, other=0.0)
        rstd = tl.load(RSTD + r * NH + head, mask=r < R, other=0.0)
        hn = tl.where(mask, (h - mean[:, None]) * rstd[:, None], 0.0)
        w = tl.load(W + e, mask=dmask, other=0.0).to(tl.float32)
        s = tl.load(S + e, mask=dmask, other=0.0).to(tl.float32)
        c = tl.load(C + bi[:, None] * sc_b + li[:, None] * sc_l + e[None, :] * sc_e, mask=mask, other=0.0).to(
            tl.float32)
        z = tl.load(Z + bi[:, None] * sz_b + li[:, None] * sz_l + e[None, :] * sz_e, mask=mask, other=0.0).to(
            tl.float32)
        dy = tl.load(DY + bi[:, None] * sdy_b + li[:, None] * sdy_l + e[None, :] * sdy_e, mask=mask, other=0.0).to(
            tl.float32)
        a = hn * w[None, :] + s[None, :] * c
        if HAS_B:
            a += tl.load(Bv + e, mask=dmask, other=0.0).to(tl.float32)[None, :]
        sig = tl.sigmoid(z)
        dz = dy * a * sig * (1.0 + z * (1.0 - sig))
        ga = dy * z * sig  # ∂/∂a
        dhn = ga * w[None, :]
        dh = rstd[:, None] * (dhn - (tl.sum(dhn, 1) / DH)[:, None] - hn * (tl.sum(dhn * hn, 1) / DH)[:, None])
        tl.store(DHo + bi[:, None] * sdh_b + li[:, None] * sdh_l + head * sdh_h + d[None, :] * sdh_d,
                 dh.to(DHo.dtype.element_ty), mask=mask)
        tl.store(DC + bi[:, None] * sdc_b + li[:, None] * sdc_l + e[None, :] * sdc_e,
                 (ga * s[None, :]).to(DC.dtype.element_ty), mask=mask)
        tl.store(DZ + bi[:, None] * sdz_b + li[:, None] * sdz_l + e[None, :] * sdz_e, dz.to(DZ.dtype.element_ty),
                 mask=mask)
        part = PART + pid * 3 * E + e
        tl.store(part, tl.sum(ga * hn, 0), mask=dmask)  # ∂/∂w
        tl.store(part + E, tl.sum(ga, 0), mask=dmask)  # ∂/∂b
        tl.store(part + 2 * E, tl.sum(ga * c, 0), mask=dmask)  # ∂/∂skip


_BLOCK_ROWS = 32


class MLSTMTail(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: torch.Tensor, c: torch.Tensor, z: torch.Tensor, w: torch.Tensor,
                b: torch.Tensor | None, skip: torch.Tensor, eps: float) -> torch.Tensor:
        bsz, length, heads, dh = h.shape
        rows = bsz * length
        y = torch.empty(c.shape, device=c.device, dtype=c.dtype)
        stats = torch.empty((2, rows, heads), device=c.device, dtype=torch.float32)
        dhp = max(16, triton.next_power_of_2(dh))
        _tail_fwd_kernel[(triton.cdiv(rows, _BLOCK_ROWS),)](
            h, c, z, w, b if b is not None else w, skip, y, stats[0], stats[1], rows, length, heads, dh, eps,
            *h.stride(), *c.stride(), *z.stride(), *y.stride(), BR=_BLOCK_ROWS, DHP=dhp, HAS_B=b is not None)
        ctx.save_for_backward(h, c, z, w, b, skip, stats)
        return y

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        h, c, z, w, b, skip, stats = ctx.saved_tensors
        bsz, length, heads, dh = h.shape
        rows, width = bsz * length, heads * dh
        dhp = max(16, triton.next_power_of_2(dh))
        n_prog = triton.cdiv(rows, _BLOCK_ROWS)
        d_h, d_c, d_z = like_layout(h), like_layout(c), like_layout(z)
        part = torch.empty((n_prog, 3, width), device=c.device, dtype=torch.float32)
        _tail_bwd_kernel[(n_prog,)](
            dy, h, c, z, w, b if b is not None else w, skip, stats[0], stats[1], d_h, d_c, d_z, part, rows, length,
            heads, dh, width, *dy.stride(), *h.stride(), *c.stride(), *z.stride(), *d_h.stride(), *d_c.stride(),
            *d_z.stride(), BR=_BLOCK_ROWS, DHP=dhp, HAS_B=b is not None)
        sums = part.sum(0)
        return (d_h, d_c, d_z, sums[0].to(w.dtype), None if b is None else sums[1].to(b.dtype), sums[2].to(skip.dtype),
                None)


def mlstm_tail_triton(h: torch.Tensor, c: torch.Tensor, z: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None,
                      skip: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """y = (LN_head(h) ⊙ w + b + skip ⊙ c) ⊙ SiLU(z): h (B, L, H, DH), c and z (B, L, E = H·DH), any strides; w, b,
    skip (E,) in any float dtype (their gradients come back in it). y (B, L, E) contiguous in c's dtype. The same
    as `kernels.mlstm.mlstm_tail_ref`, which is its test oracle."""
    if h.dim() != 4 or c.shape != z.shape or c.shape != (*h.shape[:2], h.shape[2] * h.shape[3]):
        raise ValueError(f"h must be (B, L, H, DH) and c, z (B, L, H·DH); got {tuple(h.shape)}, {tuple(c.shape)}, "
                         f"{tuple(z.shape)}")
    return MLSTMTail.apply(h, c, z, w, b, skip, eps)


__all__ = ["mlstm_tail_triton", "MLSTMTail"]
