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


def check(inputs, dtype, backward="recompute", forward=None, bwd_tile=None, chunk=64):
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    ref_leaves = [x.detach().double().requires_grad_(True) for x in inputs]
    same_leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    out = mlstm_triton(*leaves, backward=backward, forward=forward, bwd_tile=bwd_tile, chunk=chunk)
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


@pytest.mark.parametrize("forward", ["walk", "two_phase"])
def test_forward_chunk_size_matches_parallel(forward):
    """Chunks of 16 rows (70 rows: 5 chunks, the last partial) in either forward, with the Triton backward reading
    the statistics that forward saved."""
    check(make_inputs(1, 2, 70, 8, 12), torch.float32, "triton", forward, chunk=16)


@pytest.mark.parametrize("chunk", [8, 48])
def test_bad_chunk_is_refused(chunk):
    with pytest.raises(ValueError, match="chunk must be"):
        mlstm_triton(*make_inputs(1, 1, 8, 8, 8), chunk=chunk)


@pytest.mark.parametrize("bwd_tile", [(16, 4), (32, 2)])
def test_backward_tiles_match_parallel(bwd_tile):
    check(make_inputs(1, 2, 70, 8, 12), torch.float32, "triton", None, bwd_tile)


def strided_views(inputs):
    """The layouts the ViL mixer hands the cell: q and k as (b, h, L, d) views of one (b, L, 2·h·d) [q k] GEMM output,
    v of a (b, L, h·d) one, the gates of one (b, L, 2h) output. Returns (leaf buffers, views)."""
    q, k, v, i, f = inputs
    bsz, heads, length, dqk = q.shape
    dv = v.shape[-1]
    qk = torch.cat((q, k), dim=1).transpose(1, 2).reshape(bsz, length, 2 * heads * dqk).detach().requires_grad_(True)
    vb = v.transpose(1, 2).reshape(bsz, length, heads * dv).detach().requires_grad_(True)
    gates = torch.cat((i, f), dim=1).transpose(1, 2).detach().requires_grad_(True)  # (b, L, 2h)

    def views():
        qv, kv = (x.view(bsz, length, heads, dqk).transpose(1, 2) for x in qk.split(heads * dqk, dim=-1))
        iv, fv = (g.transpose(1, 2) for g in gates.split(heads, dim=-1))
        return qv, kv, vb.view(bsz, length, heads, dv).transpose(1, 2), iv, fv

    return (qk, vb, gates), views


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("backward", ["recompute", "triton"])
@pytest.mark.parametrize("forward", ["walk", "two_phase"])
def test_strided_and_reversed_inputs_match_parallel(reverse, backward, forward):
    """Inputs as strided views (no copies) and `reverse` (rows from last to first, by addressing): h and every
    gradient against the float64 parallel form on the flipped sequence, flipped back; h comes back in v's memory
    order, so the mixer's reshape to (b, L, h·d) is a view."""
    inputs = make_inputs(2, 2, 150 if forward == "two_phase" else 45, 12, 20)
    leaves, views = strided_views(inputs)
    out = mlstm_triton(*views(), reverse=reverse, backward=backward, forward=forward)
    assert out.transpose(1, 2).is_contiguous()  # (b, L, h, dv) memory, like v
    ref_in = [x.detach().double().requires_grad_(True) for x in inputs]
    flip = (lambda x: x.flip(2)) if reverse else (lambda x: x)
    ref = flip(mlstm_parallel_loop(*[flip(x) for x in ref_in]))
    same_in = [x.detach().clone().requires_grad_(True) for x in inputs]
    same = flip(mlstm_parallel_loop(*[flip(x) for x in same_in], dtype=torch.float32))
    dh = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3)).to(ref.device)
    out.backward(dh.to(out.dtype))
    ref.backward(dh)
    same.backward(dh.float())
    heads, dqk = inputs[0].shape[1], inputs[0].shape[-1]
    got = dict(h=out, q=leaves[0].grad[..., :heads * dqk], k=leaves[0].grad[..., heads * dqk:], v=leaves[1].grad,
               i=leaves[2].grad[..., :heads], f=leaves[2].grad[..., heads:])

    def as_buffer(name, x):  # an oracle tensor in the leaf buffers' (b, L, ...) layout
        return x if name == "h" else x.transpose(1, 2).reshape(*got[name].shape)

    for name, r, s_ in [("h", ref, same)] + [(n, a.grad, b.grad) for n, a, b in zip("qkvif", ref_in, same_in)]:
        want, base = as_buffer(name, r), as_buffer(name, s_)
        e_kernel, e_same = rel_err(got[name], want), rel_err(base, want)
        assert e_kernel <= 2 * e_same + ATOL[torch.float32], f"{name}: {e_kernel:.2e} > 2 × {e_same:.2e}"


def test_reverse_differs_from_forward_order():
    """The flag changes the result (a check that cannot pass by ignoring it)."""
    inputs = make_inputs(1, 2, 20, 8, 8)
    assert rel_err(mlstm_triton(*inputs, reverse=True), mlstm_triton(*inputs)) > 0.1


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
@pytest.mark.gpu_smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
def test_vil_tiny_chunk32_smoke_gpu():
    """Chunks of 32 rows at vil_tiny's train length (144 rows: the two-phase forward over 5 chunks), bfloat16."""
    check(make_inputs(8, 4, 144, 96, 96, dtype=torch.bfloat16), torch.bfloat16, "triton", chunk=32)


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
