"""Chunkwise mLSTM (Triton forward, chunkwise-PyTorch backward) against the float64 parallel form.

Tolerance rule (as in tests/test_triton_scan.py): e(x) = ‖x − oracle‖ / ‖oracle‖ against the float64 parallel form;
a kernel output or gradient passes when e(kernel) ≤ 2 · e(same-dtype parallel PyTorch) + atol, atol = 1e-5 (float32)
or 1e-3 (bfloat16). Under the interpreter tl.dot is exact float32, so float32 needs no tf32 allowance.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
triton = pytest.importorskip("triton", reason="triton is not installed")

from _scan_oracle import mlstm_parallel_loop, rel_err  # noqa: E402
from kernels.triton.mlstm import mlstm_chunkwise_torch, mlstm_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3}


def make_inputs(bsz, heads, length, dqk, dv, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k = (torch.randn(bsz, heads, length, dqk, generator=g) for _ in range(2))
    v = torch.randn(bsz, heads, length, dv, generator=g)
    i = torch.randn(bsz, heads, length, generator=g)
    f = torch.randn(bsz, heads, length, generator=g) + 3.0  # ViL's forget-gate bias range
    return [x.to(DEV).to(dtype) for x in (q, k, v, i, f)]


def check(inputs, dtype, backward="recompute", forward=None, bwd_tile=None):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    ref_leaves = [x.detach().double().requires_grad_(True) for x in inputs]
    same_leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = mlstm_triton(*leaves, backward=backward, forward=forward, bwd_tile=bwd_tile)
    ref = mlstm_parallel_loop(*ref_leaves)
    same = mlstm_parallel_loop(*same_leaves, dtype=dtype)
    dh = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(ref.device)
    out.backward(dh.to(out.dtype))
    ref.backward(dh)
    same.backward(dh.to(same.dtype))
    rows = [("h", out, same, ref)] + [(n, a.grad, s.grad, r.grad)
                                      for n, a, s, r in zip("qkvif", leaves, same_leaves, ref_leaves)]
    for name, got, base, want in rows:
        e_kernel, e_same = rel_err(got, want), rel_err(base, want)
        assert e_kernel <= 2 * e_same + ATOL[dtype], f"{name}: {e_kernel:.2e} > 2 × {e_same:.2e} + {ATOL[dtype]}"


@pytest.mark.parametrize("backward", ["recompute", "triton"])
@pytest.mark.parametrize("length,dqk,dv", [(45, 12, 20), (16, 8, 8), (70, 16, 24)])
def test_mlstm_matches_parallel(length, dqk, dv, backward):
    check(make_inputs(2, 2, length, dqk, dv), torch.float32, backward)


@pytest.mark.parametrize("forward", ["walk", "two_phase"])
def test_forward_modes_match_parallel(forward):
    """The chunk walk and the two-phase forward (states first, then every chunk in parallel) on three chunks of 64,
    the last one partial, with the Triton backward reading the statistics either forward saved."""
    check(make_inputs(1, 2, 150, 8, 12), torch.float32, "triton", forward)


@pytest.mark.parametrize("bwd_tile", [(16, 4), (32, 2)])
def test_backward_tiles_match_parallel(bwd_tile):
    check(make_inputs(1, 2, 70, 8, 12), torch.float32, "triton", None, bwd_tile)


def test_bad_forward_mode_is_refused():
    with pytest.raises(ValueError, match="two_phase"):
        mlstm_triton(*make_inputs(1, 1, 8, 8, 8), forward="parallel")


def test_chunkwise_torch_twin_is_exact():
    inputs = [x.double() for x in make_inputs(1, 2, 50, 8, 8)]
    assert rel_err(mlstm_chunkwise_torch(*inputs, chunk=16), mlstm_parallel_loop(*inputs)) < 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
@pytest.mark.parametrize("backward", ["recompute", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_vil_tiny_shape_gpu(dtype, backward):
    check(make_inputs(8, 4, 197, 96, 96, dtype=dtype), dtype, backward)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
def test_vil_tiny_default_smoke_gpu():
    """The defaults (Triton forward and tile backward) at ViL-T's shape in bfloat16, as training runs them."""
    check(make_inputs(8, 4, 145, 96, 96, dtype=torch.bfloat16), torch.bfloat16, "triton")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_phase_long_sequence_gpu(dtype):
    """ViL-T heads at 1,000 tokens, batch 1: the shape where the two-phase forward is chosen."""
    check(make_inputs(1, 4, 1000, 96, 96, dtype=dtype), dtype, "triton", "two_phase")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bwd_tile", [(32, 8), (32, 4), (16, 4)])
def test_backward_tiles_gpu(dtype, bwd_tile):
    check(make_inputs(4, 4, 300, 96, 96, dtype=dtype), dtype, "triton", None, bwd_tile)
