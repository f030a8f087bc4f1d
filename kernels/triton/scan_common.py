"""Triton helpers shared by the two selective-scan variants."""

import triton
import triton.language as tl


@triton.jit
def _combine(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _softplus(x):
    # max(x, 0) + log1p(exp(-|x|)), with log1p(w) = log(1 + w) · w / ((1 + w) − 1) (exact where 1 + w rounds).
    w = tl.exp(-tl.abs(x))
    one_w = 1.0 + w
    denom = tl.where(one_w == 1.0, 1.0, one_w - 1.0)
    l1p = tl.where(one_w == 1.0, w, tl.log(one_w) * (w / denom))
    return tl.maximum(x, 0.0) + l1p
