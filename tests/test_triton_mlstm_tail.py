"""The fused ViL tail after the mLSTM cell (per-head LayerNorm, affine, skip, SiLU gate) against the same ops in
PyTorch in float64: output and the gradients of h, c, z and the three parameters, on the strided views the mixer hands
it. Tolerance rule as in tests/test_triton_scan.py: e(kernel) ≤ 2 · e(same-dtype PyTorch) + atol against float64."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed")

from _scan_oracle import rel_err  # noqa: E402
from kernels.mlstm import mlstm_tail_ref  # noqa: E402
from kernels.triton.mlstm_tail import mlstm_tail_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3}


def _inputs(bsz, length, heads, dh, bias, seed=0):
    """Leaves: h as (B, H, L, DH) memory (the reference cell's layout; the kernel gets its (B, L, H, DH) view), c, and
    proj_up's (B, L, 2E) output whose second half is z; parameters away from their init."""
    g = torch.Generator().manual_seed(seed)
    e = heads * dh
    h = torch.randn(bsz, heads, length, dh, generator=g) * 2 + 0.5
    c = torch.randn(bsz, length, e, generator=g)
    up = torch.randn(bsz, length, 2 * e, generator=g)
    w, skip = 1 + 0.3 * torch.randn(e, generator=g), 1 + 0.3 * torch.randn(e, generator=g)
    b = 0.2 * torch.randn(e, generator=g) if bias else None
    return [h, c, up, w, b, skip]


def _run(fn, leaves, dtype, param_dtype, dy):
    h, c, up, w, b, skip = [None if x is None else x.detach().to(DEV, dtype if i < 3 else param_dtype)
                            .requires_grad_(True) for i, x in enumerate(leaves)]
    e = c.shape[-1]
    y = fn(h.transpose(1, 2), c, up[..., e:], w, b, skip)
    y.backward(dy.to(DEV, y.dtype))
    named = dict(h=h, c=c, up=up, w=w, b=b, skip=skip)
    return y, {k: v.grad for k, v in named.items() if v is not None}


@pytest.mark.parametrize("dtype,bias", [(torch.float32, True), (torch.float32, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("shape", [(2, 7, 2, 12), (1, 45, 4, 16)])
def test_tail_matches_pytorch(dtype, bias, shape):
    bsz, length, heads, dh = shape
    leaves = _inputs(bsz, length, heads, dh, bias)
    dy = torch.randn(bsz, length, heads * dh, generator=torch.Generator().manual_seed(5))
    y, grads = _run(mlstm_tail_triton, leaves, dtype, torch.float32, dy)
    y_same, grads_same = _run(mlstm_tail_ref, leaves, dtype, dtype, dy)
    y_ref, grads_ref = _run(mlstm_tail_ref, leaves, torch.float64, torch.float64, dy)
    assert y.dtype == dtype and y.is_contiguous()
    assert set(grads) == set(grads_ref)
    assert grads["up"][..., : heads * dh].abs().max() == 0  # proj_up's x_m half gets no gradient from the tail
    for name, got, base, want in [("y", y, y_same, y_ref)] + [(n, grads[n], grads_same[n], grads_ref[n])
                                                               for n in grads_ref]:
        e_kernel, e_same = rel_err(got, want), rel_err(base, want)
        assert e_kernel <= 2 * e_same + ATOL[dtype], f"{name}: {e_kernel:.2e} > 2 × {e_same:.2e} + {ATOL[dtype]}"


def test_tail_refuses_mismatched_shapes():
    h = torch.zeros(1, 3, 2, 4)
    with pytest.raises(ValueError, match="H·DH"):
        mlstm_tail_triton(h, torch.zeros(1, 3, 9), torch.zeros(1, 3, 9), torch.ones(8), None, torch.ones(8))
