"""mLSTM references: parallel, recurrent and chunkwise forms against a plain unstabilised xLSTM loop (float64).

Tolerance rules (float64):
- Forms that are algebraically identical (all forms at eps = 0; parallel vs chunkwise at any eps): rtol = atol =
  1e-10, rounding is ~1e-14 here, a wrong formula is O(1e-2).
- Parallel vs recurrent at eps = 1e-6: they place eps against differently stabilised normalisers, so they may
  differ by O(eps * |h| / normaliser); bound 1e-4 * (1 + max|h|) with the normaliser >= exp(-m) >~ 1e-2 here.
"""

from __future__ import annotations

import math

import pytest
import torch

from kernels.mlstm import mlstm_chunkwise_ref, mlstm_parallel_ref, mlstm_recurrent_ref

TIGHT = dict(rtol=1e-10, atol=1e-10)


def naive_xlstm(q, k, v, i, f):
    """The xLSTM recurrence as written, no stabiliser: i = exp(i~), f = sigmoid(f~), h = C^T q / max(|n^T q|, 1)."""
    batch, heads, length, dqk = q.shape
    out = torch.zeros(batch, heads, length, v.shape[-1], dtype=q.dtype)
    for b in range(batch):
        for h in range(heads):
            mem = torch.zeros(dqk, v.shape[-1], dtype=q.dtype)
            nrm = torch.zeros(dqk, dtype=q.dtype)
            for t in range(length):
                i_t, f_t = torch.exp(i[b, h, t]), torch.sigmoid(f[b, h, t])
                k_t = k[b, h, t] / math.sqrt(dqk)
                mem = f_t * mem + i_t * torch.outer(k_t, v[b, h, t])
                nrm = f_t * nrm + i_t * k_t
                q_t = q[b, h, t]
                out[b, h, t] = mem.T @ q_t / torch.clamp((nrm @ q_t).abs(), min=1.0)
    return out


def make(batch=2, heads=2, length=19, dqk=4, dv=3, gate_scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return (r(batch, heads, length, dqk), r(batch, heads, length, dqk), r(batch, heads, length, dv),
            r(batch, heads, length) * gate_scale, r(batch, heads, length) * gate_scale + 1.0)


FORMS = {
    "parallel": mlstm_parallel_ref,
    "recurrent": mlstm_recurrent_ref,
    "chunkwise4": lambda *a, **kw: mlstm_chunkwise_ref(*a, chunk_size=4, **kw),
    "chunkwise64": mlstm_chunkwise_ref,
}


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("length", [1, 19])
def test_forms_match_naive_loop_at_eps0(form, length):
    args = make(length=length)
    torch.testing.assert_close(FORMS[form](*args, eps=0.0), naive_xlstm(*args), **TIGHT)


@pytest.mark.parametrize("form", ["recurrent", "chunkwise4"])
def test_gradients_match_parallel(form):
    args = make(length=13)
    w = torch.randn(2, 2, 13, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)

    def grads(fn):
        leaves = [a.clone().requires_grad_(True) for a in args]
        (fn(*leaves, eps=0.0) * w).sum().backward()
        return [x.grad for x in leaves]

    for name, g_form, g_par in zip("qkvif", grads(FORMS[form]), grads(mlstm_parallel_ref)):
        torch.testing.assert_close(g_form, g_par, **TIGHT, msg=f"grad {name}")


@pytest.mark.parametrize("form", ["parallel", "chunkwise4"])
def test_gradcheck(form):
    args = [a.requires_grad_(True) for a in make(batch=1, heads=1, length=6, dqk=2, dv=2)]
    assert torch.autograd.gradcheck(lambda *a: FORMS[form](*a), args, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_default_eps_parallel_vs_chunkwise_exact_and_recurrent_close():
    args = make(length=37)
    par = mlstm_parallel_ref(*args)
    torch.testing.assert_close(mlstm_chunkwise_ref(*args, chunk_size=8), par, **TIGHT)
    diff = (mlstm_recurrent_ref(*args) - par).abs().max().item()
    assert diff <= 1e-4 * (1 + par.abs().max().item())


def test_large_gates_stay_finite_where_unstabilised_overflows():
    """Input-gate pre-activations of ~800 overflow exp() even in float64; the stabilised forms must not."""
    q, k, v, i, f = make(length=11, gate_scale=1.0)
    i = i * 50 + 800.0
    f = f * 50
    with torch.no_grad():
        assert not torch.isfinite(naive_xlstm(q, k, v, i, f)).all()
        outs = {name: fn(q, k, v, i, f, eps=0.0) for name, fn in FORMS.items()}
    for name, out in outs.items():
        assert torch.isfinite(out).all(), name
        torch.testing.assert_close(out, outs["parallel"], **TIGHT, msg=name)
    for name, fn in FORMS.items():
        leaves = [a.clone().requires_grad_(True) for a in (q, k, v, i, f)]
        fn(*leaves).sum().backward()
        assert all(torch.isfinite(x.grad).all() for x in leaves), f"{name}: non-finite gradient at large gates"


def test_shape_errors():
    q, k, v, i, f = make()
    with pytest.raises(ValueError, match="i and f"):
        mlstm_parallel_ref(q, k, v, i[..., :-1], f)
