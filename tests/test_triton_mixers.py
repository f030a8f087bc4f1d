"""The SSM and mLSTM mixers with the fast kernels against the same mixers on the float64 reference path: output and the
gradients of the input and of every parameter (the views, strides and layouts the mixers hand to the kernels).

Under the CPU interpreter the scan runs its lane forward and lane backward (the GPU default for Vim's bi route) on a
tiny Vim block and a tiny SS2D (VMamba) block; on the GPU the same comparison runs at Vim-Ti's width and length, and a
vim_tiny / vil_tiny train step checks that the recorded kernel paths are the fast ones. Tolerance rule as in
tests/test_triton_scan.py: e(fast) ≤ 2 · e(same-dtype reference) + atol against float64.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed")

from _scan_oracle import rel_err  # noqa: E402
from blocks.layout import MixContext, TokenLayout  # noqa: E402
from blocks.routes import ROUTES, path_index  # noqa: E402
from kernels.triton import scan_config  # noqa: E402

DEV = "cuda" if torch.cuda.is_available() else "cpu"
ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3}
# the GPU default's kernels and layout hint (default_config) at interpreter-sized tiles
LANE = scan_config.ScanConfig("lane", 8, 4, 1, 0, 0, "input", "grid", 4, 0, "grid", "lane", 2, 8, "atomic", "channels")


def _ctx(layout, route):
    return MixContext(layout, tuple(path_index(n, layout) for n in ROUTES.get(route).paths))


def _ssm(dim, n_paths, **kw):
    from blocks.mixers.ssm import SSMMixer

    torch.manual_seed(0)
    return SSMMixer(dim, params=SSMMixer.Params(**kw), n_paths=n_paths)


def compare(module, ctx, x, backend, dtype):
    """Run `module` on `backend` in `dtype`, on "reference" in `dtype` and in float64; assert the rule."""
    results = {}
    for name, be, dt in (("fast", backend, dtype), ("same", "reference", dtype), ("ref", "reference", torch.float64)):
        m = module.to(DEV, dt)
        m.kernel_backend = be
        m.zero_grad(set_to_none=True)
        xi = x.detach().to(DEV, dt).requires_grad_(True)
        out = m(xi, ctx)
        out.backward(torch.ones_like(out) + torch.linspace(0, 1, out.numel(), device=DEV, dtype=dt).view_as(out))
        results[name] = [("out", out.detach()), ("x", xi.grad)] + [(n, p.grad) for n, p in m.named_parameters()]
    for (name, got), (_, base), (_, want) in zip(results["fast"], results["same"], results["ref"]):
        assert got is not None, f"no gradient for {name}"
        e_fast, e_same = rel_err(got, want), rel_err(base, want)
        assert e_fast <= 2 * e_same + ATOL[dtype], f"{name}: fast {e_fast:.2e} > 2 × {e_same:.2e} + {ATOL[dtype]}"


@pytest.mark.parametrize("kw,route,side", [
    (dict(d_state=8), "bi", 3),  # Vim v2: a conv per direction, the gate fused into the scan
    (dict(conv="dw2d", conv_bias=False, gate=False, out_norm=True, merge="sum", d_state=1, expand=1.0), "cross4", 3),
])
def test_ssm_mixer_fast_path_matches_reference(monkeypatch, kw, route, side):
    if not torch.cuda.is_available():  # the lane kernels, not the interpreter's default tiles
        monkeypatch.setattr(scan_config, "default_config", lambda *a: LANE)
        monkeypatch.setattr("kernels.triton.selective_scan.default_config", lambda *a: LANE)
    layout = TokenLayout(((side, side),), (side * side // 2,))
    ctx = _ctx(layout, route)
    m = _ssm(8, len(ctx.paths), **kw)
    x = torch.randn(2, layout.length, 8, generator=torch.Generator().manual_seed(1))
    compare(m, ctx, x, "triton", torch.float32)


@pytest.mark.parametrize("route,n_paths", [("uni_rev", 1), ("bi", 2), ("snake", 2)])
def test_mlstm_mixer_fast_path_matches_reference(route, n_paths):
    """The ViL layer on the Triton cell (the dense q|k / v GEMMs, strided head views, the cell's `reverse` for a
    reversed path, a gathered path for a snake; the fused norm/skip/gate tail for the one-path route) against the
    float64 reference path, gradients included."""
    from blocks.mixers.mlstm import MLSTM

    torch.manual_seed(0)
    layout = TokenLayout(((4, 5),), ())
    m = MLSTM(16, params=MLSTM.Params(heads=2), n_paths=n_paths)
    with torch.no_grad():  # the norm's and skip's parameters away from 1 / 0, so their gradients test the tail
        for p in (m.skip, m.cells[0].norm_weight, m.cells[0].norm_bias):
            p.add_(0.3 * torch.randn(p.shape))
    m.dense_qkv, m.fused_tail = True, True
    compare(m, _ctx(layout, route), torch.randn(2, layout.length, 16), "triton", torch.float32)


def test_mlstm_cell_gets_the_autocast_dtype(monkeypatch):
    """Under autocast the mixer hands the cell q, k, v in the autocast dtype (a float32 cell is ~16x slower), as
    views of the projections (the Triton cell reads their strides: no per-head copies)."""
    import blocks.mixers.mlstm as mod

    seen = []

    def cell(q, k, v, i, f, reverse=False, backend=None):
        seen.append((q.dtype, k.dtype, v.dtype, q._is_view() and k._is_view() and v._is_view()))
        return v.float()

    monkeypatch.setattr(mod, "mlstm_cell", cell)
    m = mod.MLSTM(8, params=mod.MLSTM.Params(heads=2))
    layout = TokenLayout(((2, 2),), ())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        m(torch.randn(1, 4, 8), _ctx(layout, "uni"))
    m(torch.randn(1, 4, 8), _ctx(layout, "uni"))
    assert seen == [(torch.bfloat16,) * 3 + (True,), (torch.float32,) * 3 + (True,)]


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
def test_vim_ti_mixer_gpu():
    """Vim-Ti's block width (192 → E = 384, N = 16) at 224² (197 tokens): the defaults (lane kernels, path conv)."""
    layout = TokenLayout(((14, 14),), (98,))
    ctx = _ctx(layout, "bi")
    compare(_ssm(192, 2), ctx, torch.randn(4, layout.length, 192), "auto", torch.float32)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
def test_vmamba_t_stage1_mixer_gpu():
    layout = TokenLayout(((56, 56),), ())
    ctx = _ctx(layout, "cross4")
    kw = dict(conv="dw2d", conv_bias=False, gate=False, out_norm=True, merge="sum", d_state=1, expand=1.0)
    compare(_ssm(96, 4, **kw), ctx, torch.randn(2, layout.length, 96), "auto", torch.float32)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("route,n_paths", [("uni_rev", 1), ("bi", 2)])
def test_vil_t_mixer_gpu(route, n_paths):
    """ViL-T's layer width (192 → E = 384, 4 heads) on its 12 × 12 grid, on CUDA's dense q|k / v / gate GEMMs and the
    Triton cell, against the float64 reference; one reversed path (ViL's odd blocks) and a parallel route."""
    from blocks.mixers.mlstm import MLSTM

    torch.manual_seed(0)
    layout = TokenLayout(((12, 12),), ())
    m = MLSTM(192, params=MLSTM.Params(), n_paths=n_paths)
    compare(m, _ctx(layout, route), torch.randn(4, layout.length, 192), "auto", torch.float32)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("preset,paths", [("vim_tiny", {"causal_conv1d_paths": "triton", "selective_scan_paths": "triton"}),
                                          ("vil_tiny", {"mlstm": "triton"})])
def test_train_step_records_fast_kernels_gpu(preset, paths):
    """One bf16 train step of the real preset at batch 4: finite loss and gradients, the fast kernels recorded."""
    from blocks import build_backbone, get_preset
    from kernels.dispatch import record_kernel_paths

    spec = get_preset(preset)
    model = build_backbone(spec).to(DEV)
    x = torch.randn(4, 3, spec.img_size, spec.img_size, device=DEV)
    with record_kernel_paths() as used, torch.autocast("cuda", dtype=torch.bfloat16):
        loss = model(x).float().logsumexp(-1).mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert used == paths
