"""DCT-II / inverse and GlobalMamba masks (route index maps are tested with the paths, tests/test_spec_layout.py).

Tolerance rule: float64 transforms are compared at atol 1e-12 (the brief's exact-inverse bound; matmul rounding is
~1e-15 at these sizes); float32 at 1e-5 (~ n * eps32 with n <= 16, scaled by the data's O(1) magnitude).
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.dct import anti_diagonal_lowpass_masks, dct2, dct_matrix, idct2


def naive_dct2(x: torch.Tensor) -> torch.Tensor:
    """Textbook orthonormal 2-D DCT-II, O(n^4), one coefficient at a time."""
    h, w = x.shape
    out = torch.zeros_like(x)
    s = lambda k, n: math.sqrt((1 if k == 0 else 2) / n)  # noqa: E731
    for u in range(h):
        for v in range(w):
            acc = 0.0
            for j in range(h):
                for l in range(w):  # noqa: E741
                    acc += x[j, l].item() * math.cos(math.pi * (2 * j + 1) * u / (2 * h)) * math.cos(
                        math.pi * (2 * l + 1) * v / (2 * w))
            out[u, v] = s(u, h) * s(v, w) * acc
    return out


def test_dct2_matches_naive_formula():
    x = torch.randn(5, 7, dtype=torch.float64)
    torch.testing.assert_close(dct2(x), naive_dct2(x), rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 16, 16), (2, 1, 9, 4), (1, 1)])
def test_round_trip_and_parseval_float64(shape):
    x = torch.randn(*shape, dtype=torch.float64)
    torch.testing.assert_close(idct2(dct2(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(dct2(idct2(x)), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(dct2(x).square().sum((-1, -2)), x.square().sum((-1, -2)), rtol=1e-12, atol=1e-12)


def test_matrix_orthonormal_and_cached():
    m = dct_matrix(12)
    torch.testing.assert_close(m @ m.T, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-12)
    assert dct_matrix(12) is m


def test_float32_and_gradient():
    x = torch.randn(2, 16, 16)
    torch.testing.assert_close(idct2(dct2(x)), x, rtol=0, atol=1e-5)
    xd = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(dct2, (xd,))


def test_globalmamba_mask_counts():
    masks = anti_diagonal_lowpass_masks(224, 4)
    assert masks.shape == (4, 224, 224) and masks.dtype == torch.bool
    assert masks.sum((1, 2)).tolist() == [1596, 6328, 25200, 50176]
    assert masks[0, 0, 55] and not masks[0, 0, 56] and masks[2, 223, 0] and not masks[2, 1, 223]
    assert bool((masks[:-1] <= masks[1:]).all())  # cumulative low-pass
    with pytest.raises(ValueError, match="divisible"):
        anti_diagonal_lowpass_masks(100, 4)


def test_band_images_last_is_identity():
    x = torch.randn(3, 32, 32, dtype=torch.float64)
    masks = anti_diagonal_lowpass_masks(32, 3)
    torch.testing.assert_close(idct2(dct2(x) * masks[-1]), x, rtol=0, atol=1e-12)
