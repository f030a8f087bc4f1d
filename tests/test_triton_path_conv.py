"""Route-ordered causal conv1d + SiLU (Triton) against the float64 gather/conv1d/scatter reference: output and every
gradient (x, weight, bias), under the CPU interpreter on small shapes and on the GPU at Vim-Ti's shape.

Tolerance rule as in tests/test_triton_scan.py: e(kernel) ≤ 2 · e(same-dtype reference) + atol against float64.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed")

from _scan_oracle import rel_err  # noqa: E402
from kernels.dispatch import causal_conv1d_paths  # noqa: E402
from kernels.path_conv import causal_conv1d_paths_ref  # noqa: E402
from kernels.triton.path_conv import causal_conv1d_paths_triton  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3}


def routes(kind: str, n_conv: int, length: int) -> torch.Tensor:
    if kind == "bi":
        return torch.stack([torch.arange(length), torch.arange(length).flip(0)])[:n_conv]
    g = torch.Generator().manual_seed(2)
    return torch.stack([torch.randperm(length, generator=g) for _ in range(n_conv)])


def check(bsz, length, dim, n_conv, k, kind, dtype, with_bias=True, strided_x=False, backward="steps"):
    g = torch.Generator().manual_seed(0)
    width = 2 * dim if strided_x else dim  # x as the first half of in_proj's output (a row stride of 2E)
    x = torch.randn(bsz, length, width, generator=g)[..., :dim].to(DEV, dtype)
    w = (torch.randn(n_conv, dim, k, generator=g) * 0.5).to(DEV)
    b = (torch.randn(n_conv, dim, generator=g) * 0.3).to(DEV) if with_bias else None
    paths = routes(kind, n_conv, length).to(DEV)
    dout = torch.randn(bsz, n_conv, length, dim, generator=torch.Generator().manual_seed(5)).to(DEV)
    runs = {}
    kernel = (lambda *a: causal_conv1d_paths(*a, backend="triton")) if backward == "steps" else (
        lambda *a: causal_conv1d_paths_triton(*a, backward=backward))
    for name, fn, cast in (("kernel", kernel, dtype),
                           ("same", causal_conv1d_paths_ref, dtype), ("ref", causal_conv1d_paths_ref, torch.float64)):
        leaves = [t.detach().to(cast if t is x else (torch.float64 if cast == torch.float64 else t.dtype))
                  .requires_grad_(True) if t is not None else None for t in (x, w, b)]
        out = fn(*leaves, paths)
        out.backward(dout.to(out.dtype))
        runs[name] = [out] + [t.grad for t in leaves if t is not None]
    assert runs["kernel"][0].shape == (bsz, n_conv, length, dim) and runs["kernel"][0].dtype == dtype
    for i, name in enumerate(["out", "dx", "dw", "db"][:len(runs["ref"])]):
        e_k, e_s = rel_err(runs["kernel"][i], runs["ref"][i]), rel_err(runs["same"][i], runs["ref"][i])
        assert e_k <= 2 * e_s + ATOL[dtype], f"{name}: kernel {e_k:.2e} > 2 × {e_s:.2e} + {ATOL[dtype]}"


@pytest.mark.parametrize("n_conv,k,kind,with_bias,strided_x", [
    (2, 4, "bi", True, True),  # Vim v2: a conv per direction, x a half of in_proj's output
    (1, 3, "random", False, False),  # Vim v1: one conv along one (random) path, no bias
    (3, 2, "random", True, False),
])
def test_conv_matches_reference(n_conv, k, kind, with_bias, strided_x):
    check(2, 37, 70, n_conv, k, kind, torch.float32, with_bias, strided_x)


def test_one_pass_backward_matches_reference():
    """The one-pass backward (each dpre recomputed K times), kept as the measured alternative, stays exact."""
    check(2, 37, 70, 2, 4, "random", torch.float32, True, True, backward="tokens")


def test_unknown_backward_is_refused():
    x = torch.randn(1, 5, 4, device=DEV)
    with pytest.raises(ValueError, match="steps"):
        causal_conv1d_paths_triton(x, torch.randn(1, 4, 2, device=DEV), None, routes("bi", 1, 5).to(DEV),
                                   backward="fused")


def test_reference_is_the_mixer_composition():
    """The reference equals the explicit gather → causal conv → SiLU → scatter, path by path."""
    x, w, b = torch.randn(2, 9, 4), torch.randn(2, 4, 3), torch.randn(2, 4)
    paths = routes("random", 2, 9)
    out = causal_conv1d_paths_ref(x, w, b, paths)
    for c in range(2):
        xp = x[:, paths[c]]  # path order
        pad = torch.cat([torch.zeros(2, 2, 4), xp], 1)
        y = sum(w[c, :, i] * pad[:, i:i + 9] for i in range(3)) + b[c]
        assert torch.allclose(out[:, c, paths[c]], torch.nn.functional.silu(y), atol=1e-6)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
@pytest.mark.parametrize("dtype,backward", [(torch.float32, "steps"), (torch.bfloat16, "steps"),
                                            (torch.bfloat16, "tokens")])
def test_vim_tiny_shape_gpu(dtype, backward):
    check(16, 197, 384, 2, 4, "bi", dtype, True, True, backward)
