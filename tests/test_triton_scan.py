"""Route-fused Triton selective scan against the float64 loop oracle: outputs and every gradient.

Tolerance rule (stated once, never loosened to pass): with e(x) = ‖x − oracle‖ / ‖oracle‖ against the float64 oracle,
a kernel output or gradient passes when e(kernel) ≤ 2 · e(same-dtype PyTorch loop) + atol, where the same-dtype loop is
the oracle's own code run in the inputs' dtype, and atol = 1e-5 for float32, 1e-3 for bfloat16/float16 inputs.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1) on small shapes; the `gpu` tests run the
compiled kernels on Vim-Ti and VMamba-T stage-1 shapes in float32 and bfloat16.
"""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton builds the kernels
triton = pytest.importorskip("triton", reason="triton is not installed")

from _scan_oracle import rel_err, scan_loop, scan_paths_loop  # noqa: E402
from kernels.triton.selective_scan import (BWD_GRID_CANDIDATES, bc_vector_width,  # noqa: E402
                                           selective_scan_paths_triton, selective_scan_triton)

ATOL = {torch.float32: 1e-5, torch.bfloat16: 1e-3, torch.float16: 1e-3}
NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


def make_inputs(bsz, n_paths, dim, n_state, length, dtype=torch.float32, device=DEV, *, with_d=True, with_z=True,
                with_bias=True, seed=0):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).to(device)

    u = rnd(bsz, n_paths, dim, length).to(dtype)
    delta = rnd(bsz, n_paths, dim, length, scale=0.5).to(dtype)
    A = -(torch.rand(n_paths, dim, n_state, generator=g) + 0.5).to(device)
    B = rnd(bsz, n_paths, n_state, length).to(dtype)
    C = rnd(bsz, n_paths, n_state, length).to(dtype)
    D = rnd(n_paths, dim) if with_d else None
    z = rnd(bsz, dim, length).to(dtype) if with_z else None
    bias = rnd(n_paths, dim, scale=0.3) if with_bias else None
    return [u, delta, A, B, C, D, z, bias]


def route(kind, n_paths, length, side=None):
    if kind == "identity":
        return None
    if kind == "bi":
        return torch.stack([torch.arange(length), torch.arange(length).flip(0)])
    if kind == "cross":  # rows, columns, and both reversed: VMamba's four routes on a side×side grid
        rows = torch.arange(length)
        cols = torch.arange(length).view(side, side).t().reshape(-1)
        return torch.stack([rows, cols, rows.flip(0), cols.flip(0)])
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randperm(length, generator=g) for _ in range(n_paths)])


def check_against_oracle(inputs, softplus, paths, merge, dtype, config=None):
    """Run kernel, same-dtype loop and float64 oracle with one upstream gradient; assert the stated rule."""
    leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
    out = selective_scan_paths_triton(*leaves, delta_softplus=softplus, paths=paths, merge=merge, config=config)
    assert out.dtype == inputs[0].dtype
    assert out.shape == (inputs[0].shape[0], inputs[0].shape[2], inputs[0].shape[3])
    ref_leaves = [x.detach().double().requires_grad_(True) if x is not None else None for x in inputs]
    ref = scan_paths_loop(*ref_leaves, delta_softplus=softplus, paths=paths, merge=merge)
    same_leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
    same = scan_paths_loop(*same_leaves, delta_softplus=softplus, paths=paths, merge=merge, dtype=dtype)
    dout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)).to(ref.device)
    out.backward(dout.to(out.dtype))
    ref.backward(dout)
    same.backward(dout.to(same.dtype))
    atol = ATOL[dtype]
    results = [("out", out, same, ref)]
    results += [(n, a.grad, s.grad, r.grad) for n, a, s, r in zip(NAMES, leaves, same_leaves, ref_leaves)
                if a is not None]
    for name, got, base, want in results:
        assert got is not None, f"no gradient for {name}"
        e_kernel, e_same = rel_err(got, want), rel_err(base, want)
        assert e_kernel <= 2 * e_same + atol, f"{name}: kernel error {e_kernel:.2e} > 2 × {e_same:.2e} + {atol}"


CASES = [  # (P, dim, N, L, route, softplus, merge, with D/z/bias)
    (1, 5, 3, 37, "identity", True, "sum", True),
    (1, 4, 16, 70, "identity", False, "sum", False),  # several chunks, no optional inputs
    (2, 5, 4, 23, "bi", True, "mean", True),
    (4, 6, 1, 16, "cross", True, "sum", True),  # N = 1, VMamba-style cross route on a 4×4 grid
    (3, 3, 5, 19, "random", False, "mean", True),
]


# Interpreter tiles are small so that several channel blocks and stretches are exercised; None = the default tiles.
# "lane": the lane-owned forward (tile 4 steps, checkpoints every 8) with the lane backward (2 steps in registers,
# the state every 2 steps through the scratch); "lane_seg": the lane forward cut into segments of 8 steps (summary
# launch + segment launch; several paths then merge by atomics) with the chunk backward reading its checkpoints.
VARIANTS = {"seq": ("seq", 8, 8, 1), "chunk": ("chunk", 4, 8, 1),
            "lane": ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 1, "grid", "lane", 2),
            "lane_seg": ("lane", 8, 8, 1, 4, 1, "input", "grid", 4, 3)}
GPU_VARIANTS = {"seq": ("seq", 16, 16, 2), "chunk": ("chunk", 4, 32, 2, 4, 2, "input", "grid"),
                "lane": ("lane", 32, 16, 1, 0, 0, "input", "grid", 8, 0, "grid", "lane", 2, 32),
                "lane_seg": ("lane", 32, 32, 1, 0, 0, "input", "grid", 8, 6)}
# every case runs the chunk and lane kernels (forward and backward); the variants that are no default anywhere (seq)
# or that reuse those kernels in another arrangement (lane_seg) run two cases, to keep the interpreter's minutes low
FULL, SOME = ("chunk", "lane"), ("seq", "lane_seg")


def variant_config(variant):
    return GPU_VARIANTS[variant] if torch.cuda.is_available() else VARIANTS[variant]


@pytest.mark.parametrize("n_paths,dim,n_state,length,kind,softplus,merge,opt,variant",
                         [c + (v,) for c in CASES for v in FULL] + [c + (v,) for c in CASES[2:4] for v in SOME])
def test_paths_match_oracle(n_paths, dim, n_state, length, kind, softplus, merge, opt, variant):
    inputs = make_inputs(2, n_paths, dim, n_state, length, with_d=opt, with_z=opt, with_bias=opt)
    config = variant_config(variant)
    check_against_oracle(inputs, softplus, route(kind, n_paths, length, side=4), merge, torch.float32, config)


@pytest.mark.parametrize("variant", ["chunk", "lane"])
def test_strided_inputs_match_contiguous(variant):
    """u shared by every path (an expanded view, stride 0) and channel-last memory need no copies."""
    config = variant_config(variant)
    bsz, n_paths, dim, n_state, length = 2, 2, 4, 4, 33
    u_base = torch.randn(bsz, length, dim, device=DEV)  # (B, L, C) memory
    u = u_base.transpose(1, 2).unsqueeze(1).expand(bsz, n_paths, dim, length)
    rest = make_inputs(bsz, n_paths, dim, n_state, length)[1:]
    paths = route("bi", n_paths, length)
    got = selective_scan_paths_triton(u, *rest, delta_softplus=True, paths=paths, config=config)
    want = selective_scan_paths_triton(u.contiguous(), *rest, delta_softplus=True, paths=paths, config=config)
    assert torch.allclose(got, want, rtol=1e-6, atol=1e-6)
    leaf = u_base.clone().requires_grad_(True)
    selective_scan_paths_triton(leaf.transpose(1, 2).unsqueeze(1).expand_as(u), *rest, delta_softplus=True,
                                paths=paths, config=config).sum().backward()
    ref_leaf = u_base.double().requires_grad_(True)
    scan_paths_loop(ref_leaf.transpose(1, 2).unsqueeze(1).expand_as(u), *[x.double() if x is not None else None
                                                                           for x in rest],
                    delta_softplus=True, paths=paths).sum().backward()
    assert rel_err(leaf.grad, ref_leaf.grad) < 1e-5


def mixer_layout(inputs, pad=0):
    """The SSM mixer's memory: u, Δ, z channel-last, and B, C two column blocks of one (P, batch, L, 2N + pad) x_proj
    output (N contiguous, B first), which the lane kernels read with vector loads when the strides allow."""
    u, delta, A, B, C, D, z, bias = channel_last_inputs(inputs)
    bsz, n_paths, n, length = B.shape
    xdbl = torch.zeros(n_paths, bsz, length, 2 * n + pad, device=B.device, dtype=B.dtype)
    xdbl[..., :n] = B.permute(1, 0, 3, 2)
    xdbl[..., n:2 * n] = C.permute(1, 0, 3, 2)
    return [u, delta, A, xdbl[..., :n].permute(1, 0, 3, 2), xdbl[..., n:2 * n].permute(1, 0, 3, 2), D, z, bias]


LANE_OPTIONS = {  # the lane backward's other arrangements: state kept for the whole stretch, whole-warp Σ_d
    "ck_eq_tile": ("lane", 8, 4, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 4),
    "red32": ("lane", 8, 8, 1, 0, 0, "input", "grid", 4, 0, "grid", "lane", 2, 32),
    "tile1": ("lane", 8, 8, 1, 0, 0, "input", "grid", 4, 0, "grid", "lane", 1, 8),
    "chunk_fwd": ("chunk", 4, 8, 1, 8, 1, "input", "grid", 8, 0, "auto", "lane", 4),
    # dB/dC without atomics: a slot per program (Σ_d over its 8 lanes) or per group of 4 lanes (2 slots a program)
    "partial": ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8, "partial"),
    "partial_groups": ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 4, "partial"),
    # lane_hint "channels": A, dA and the checkpoints at unit channel stride ((NP, dim) checkpoints from either forward)
    "channels": ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8, "atomic", "channels"),
    "channels_chunk_fwd": ("chunk", 4, 8, 1, 8, 1, "input", "grid", 8, 0, "auto", "lane", 4, 8, "atomic", "channels"),
    # the hinted lane forward before the chunk backward ((dim, NP) checkpoints), in one piece and in three segments:
    # what the default runs where the lane backward's programs would not fill the GPU (Vim-Ti at 1248²)
    "channels_chunk_bwd": ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "chunk", 2, 8, "atomic", "channels"),
    "channels_segments": ("lane", 8, 4, 1, 8, 1, "input", "grid", 4, 3, "grid", "chunk", 2, 8, "atomic", "channels"),
    # dB/dC summed over the program's lanes by reduce-scatter (one value a lane, then one atomic instruction), with
    # and without the hint
    "scatter": ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8, "scatter"),
    "scatter_channels": ("lane", 8, 4, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8, "scatter", "channels"),
}


@pytest.mark.parametrize("option", sorted(LANE_OPTIONS))
def test_lane_backward_options_with_vector_rows(option):
    """B and C in the mixer's layout (8-element rows: 16-byte vector loads of fp32 in both lane kernels)."""
    inputs = mixer_layout(make_inputs(2, 2, 6, 8, 21))
    assert bc_vector_width(inputs[3], inputs[4]) == 4
    check_against_oracle(inputs, True, route("bi", 2, 21), "mean", torch.float32, LANE_OPTIONS[option])


@pytest.mark.parametrize("n_state, hint", [(16, "channels"), (5, "channels"), (16, "none")])
def test_scatter_backward_one_warp_of_channels(n_state, hint):
    """The GPU's arrangement: 32 channels a program, 16 states (or 5, padded to 8: lanes of the padding states are
    masked) summed over the 32 lanes by reduce-scatter; a channel count that leaves the last block partly empty."""
    inputs = mixer_layout(make_inputs(1, 2, 40, n_state, 11))
    cfg = ("lane", 32, 4, 1, 32, 1, "input", "grid", 4, 0, "grid", "lane", 2, 32, "scatter", hint)
    check_against_oracle(inputs, True, route("bi", 2, 11), "mean", torch.float32, cfg)


@pytest.mark.parametrize("option", ["scatter_channels", "channels_chunk_bwd"])
def test_lane_tiles_on_one_direction(option):
    """One path and no route (a one-direction Mamba scan) through the lane kernels the bi route takes by default
    (benchmarks/bench_scan.py times this row against the chunk kernels one direction gets by default)."""
    inputs = mixer_layout(make_inputs(2, 1, 6, 8, 21))
    check_against_oracle(inputs, True, None, "sum", torch.float32, LANE_OPTIONS[option])


def test_lane_tiles_on_cross4_with_one_state():
    """VMamba's scan (four cross routes, one state, sum merge) through the bi route's lane tiles, reduce-scatter of the
    single state's dB/dC over the warp (benchmarks/bench_scan.py times this row against the chunk kernels N = 1 gets
    by default)."""
    inputs = mixer_layout(make_inputs(2, 4, 6, 1, 16))
    cfg = ("lane", 8, 4, 1, 0, 0, "input", "grid", 4, 0, "grid", "lane", 2, 8, "scatter", "channels")
    check_against_oracle(inputs, True, route("cross", 4, 16, 4), "sum", torch.float32, cfg)


@pytest.mark.parametrize("segments, bc, hint, length", [(2, "scatter", "channels", 29), (3, "atomic", "none", 29),
                                                       (3, "partial", "channels", 24), (9, "scatter", "channels", 13)])
def test_segmented_lane_backward(segments, bc, hint, length):
    """The lane backward cut into sequence segments (a summary launch hands each the adjoint from the later ones):
    same gradients as the float64 oracle, with every dB/dC mode, a last segment shorter than the others, and more
    segments asked for than there are checkpoint stretches (clipped)."""
    inputs = mixer_layout(make_inputs(2, 2, 6, 8, length))
    cfg = ("lane", 8, 4, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8, bc, hint, segments)
    check_against_oracle(inputs, True, route("bi", 2, length), "mean", torch.float32, cfg)


def test_segmented_lane_backward_one_direction_and_refusal():
    """One path without a route, three segments; a negative segment count is refused."""
    inputs = mixer_layout(make_inputs(2, 1, 6, 8, 21))
    cfg = ("lane", 8, 4, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8, "scatter", "channels", 3)
    check_against_oracle(inputs, True, None, "sum", torch.float32, cfg)
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 2, 4, 8, 9)]
    out = selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 9), merge="mean",
                                      config=cfg[:-1] + (-1,))
    with pytest.raises(ValueError, match="segments"):
        out.sum().backward()
    with pytest.raises(ValueError, match="bwd_segments=3 needs the lane backward"):
        selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 9), merge="mean",
                                    config=cfg[:11] + ("chunk", 2, 8, "atomic") + cfg[15:])


def test_segments_choose_the_lane_backward(monkeypatch):
    """bwd_segments ≠ 1 selects the lane backward even where "auto" would take the chunk one (a small batch on the
    GPU), as bwd_bc="partial" does; 1 leaves "auto" to the batch."""
    from kernels.triton import scan_config

    monkeypatch.setattr(scan_config, "lane_bwd_fills", lambda warps, device: False)
    base = scan_config.ScanConfig("lane", 32, 4, 1, bwd="auto", bwd_bc="scatter", lane_hint="channels")
    cuda = torch.device("cuda")
    assert scan_config.backward_tiles(base, 16, 96, cuda)[0].bwd == "chunk"
    assert scan_config.backward_tiles(base._replace(bwd_segments=0), 16, 96, cuda)[0].bwd == "lane"


def test_scatter_needs_a_state_per_lane():
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 2, 4, 16, 9)]
    out = selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 9), merge="mean",
                                      config=("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "lane", 2, 8,
                                              "scatter"))
    with pytest.raises(ValueError, match="scatter"):
        out.sum().backward()


def test_vector_width_follows_strides_and_alignment():
    B = mixer_layout(make_inputs(2, 2, 3, 8, 9, dtype=torch.bfloat16))[3]
    assert bc_vector_width(B, B) == 8  # 8 bf16 = 16 bytes: rows of 16, every offset a multiple of 8
    odd = mixer_layout(make_inputs(2, 2, 3, 8, 9, dtype=torch.bfloat16), pad=4)[3]  # rows of 20 elements
    assert bc_vector_width(odd, odd) == 4
    plain = make_inputs(2, 2, 3, 8, 9)[3]  # (batch, P, N, L) contiguous: N is not the unit stride
    assert bc_vector_width(plain, plain) == 1
    shifted = torch.zeros(2 * 2 * 9 * 16 + 1)[1:].view(2, 2, 9, 16)[..., :8].transpose(-1, -2)  # 4-byte aligned
    assert bc_vector_width(shifted, shifted) == 1


def channel_last_inputs(inputs):
    """The same values with (…, L, channels) memory for u, Δ, B, C, z (what token-wise Linear layers produce)."""
    def cl(x):
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)
    return [cl(x) if x is not None and i in (0, 1, 3, 4, 6) else x for i, x in enumerate(inputs)]


# backward tiles differing from the forward's and both gradient layouts (ScanConfig's optional fields)
BWD_VARIANTS = {"bwd8_input": ("chunk", 4, 8, 1, 8, 2, "input"),
                "bwd2_first": ("chunk", 4, 8, 1, 2, 1, "channel_first"),
                "grid_input": ("chunk", 4, 8, 1, 4, 1, "input", "grid")}


@pytest.mark.parametrize("name", sorted(BWD_VARIANTS))
def test_backward_tiles_and_gradient_layouts(name):
    inputs = channel_last_inputs(make_inputs(2, 4, 6, 3, 16))
    check_against_oracle(inputs, True, route("cross", 4, 16, side=4), "sum", torch.float32, BWD_VARIANTS[name])


def test_bad_gradient_layout_is_refused():
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 1, 4, 2, 9)]
    out = selective_scan_paths_triton(*leaves, config=("chunk", 4, 8, 1, 0, 0, "rows"))
    with pytest.raises(ValueError, match="grad_layout"):
        out.sum().backward()


def test_bad_backward_variant_is_refused():
    """Refused by the forward already: it resolves the backward to lay its checkpoints out for it."""
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 1, 4, 2, 9)]
    with pytest.raises(ValueError, match="bwd must be"):
        selective_scan_paths_triton(*leaves, config=("chunk", 4, 8, 1, 0, 0, "input", "grid", 4, 0, "auto", "rows"))


@pytest.mark.parametrize("variant, hint, match", [("seq", "channels", "seq variant"),
                                                   ("lane", "rows", "lane_hint must be")])
def test_bad_lane_hint_use_is_refused(variant, hint, match):
    """The (NP, dim) checkpoints of lane_hint "channels" come from the lane or chunk forward only; unknown hints are
    refused before any kernel runs."""
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 2, 4, 2, 9)]
    with pytest.raises(ValueError, match=match):
        selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 9), merge="mean",
                                    config=(variant, 4, 8, 1, 4, 1, "input", "grid", 4, 0, "grid", "lane", 2, 4,
                                            "atomic", hint))


@pytest.mark.parametrize("bwd, bc, match", [("lane", "shared", "bwd_bc must be"), ("chunk", "shared", "bwd_bc must be"),
                                           ("chunk", "partial", "needs the lane backward"),
                                           ("chunk", "scatter", "needs the lane backward")])
def test_bad_lane_bc_mode_is_refused(bwd, bc, match):
    """An unknown dB/dC mode is refused whichever backward runs; the slots need the lane backward. The lane forward
    resolves the backward too (it writes the checkpoints in that backward's layout), so the error comes before any
    kernel runs."""
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 2, 4, 2, 9)]
    with pytest.raises(ValueError, match=match):
        selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 9), merge="mean",
                                    config=("lane", 4, 8, 1, 4, 1, "input", "grid", 4, 0, "grid", bwd, 2, 4, bc))


def test_register_cap_of_the_lane_backward():
    """`bwd_regs` reaches the lane backward's launch (the interpreter ignores the cap itself; the GPU smoke test checks
    the spilling kernel) and is refused where it cannot apply: out of range, or with the chunk backward."""
    inputs = mixer_layout(make_inputs(2, 2, 6, 8, 13))
    cfg = ("lane", 8, 4, 1, 0, 0, "input", "grid", 4, 0, "grid", "lane", 2, 8, "scatter", "channels", 1, 168)
    check_against_oracle(inputs, True, route("bi", 2, 13), "mean", torch.float32, cfg)
    leaves = [x.requires_grad_(True) if x is not None else None for x in make_inputs(1, 2, 4, 2, 9)]
    for bwd, regs, match in (("lane", 8, "bwd_regs must be"), ("lane", 300, "bwd_regs must be"),
                             ("chunk", 168, "applies to the lane backward")):
        with pytest.raises(ValueError, match=match):
            selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 9), merge="mean",
                                        config=("lane", 4, 8, 1, 4, 1, "input", "grid", 4, 0, "grid", bwd, 2, 4,
                                                "atomic", "none", 1, regs))


def test_partial_bc_is_bitwise_repeatable():
    """dB and dC through the slots: two backward passes give the same bits (the lane backward, chosen by 'partial'
    from 'auto'). Under the interpreter atomics are repeatable too, so here this checks that the path runs; on the
    GPU it is the property the atomics lack."""
    cfg = ("lane", 8, 8, 1, 8, 1, "input", "grid", 4, 0, "grid", "auto", 2, 4, "partial")
    inputs = mixer_layout(make_inputs(2, 2, 16, 8, 13))
    grads = []
    for _ in range(2):
        leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
        out = selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 13), merge="mean",
                                          config=cfg)
        out.backward(torch.ones_like(out))
        grads.append((leaves[3].grad, leaves[4].grad))
    assert all(torch.equal(a, b) for a, b in zip(grads[0], grads[1]))


def test_default_lane_backward_is_segmented_where_it_would_not_fill(monkeypatch):
    """On the GPU (interpreter off) Vim's bi route takes the lane backward at every batch, checkpointing every 4
    steps: whole where its programs fill the GPU, in sequence segments (as many as fill it) where they would not
    (session 22: 1.99× the chunk backward's fwd+bwd at Vim-Ti 1248² × 4, which the default took before)."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from kernels.triton.scan_config import default_config

    whole, segmented = default_config(16, 384, 2, lane_bwd=True), default_config(16, 384, 2, lane_bwd=False)
    assert (whole.variant, whole.steps, whole.bwd, whole.bwd_segments) == ("lane", 4, "auto", 1)
    assert segmented == whole._replace(bwd_segments=0)
    # both lane kernels one lane a channel under Triton 3.6 too (session 16); dB/dC by reduce-scatter (session 20)
    assert whole.lane_hint == segmented.lane_hint == "channels"
    assert whole.bwd_bc == segmented.bwd_bc == "scatter"
    # (test_segments_choose_the_lane_backward: the segments take the lane backward where "auto" would not)
    # reduce-scatter needs a lane per padded state: 64 states keep the atomics rather than fail
    assert default_config(64, 384, 2, lane_bwd=True).bwd_bc == "atomic"
    assert default_config(64, 384, 2, lane_bwd=False).bwd_bc == "atomic"
    assert default_config(1, 96, 4).variant == "chunk"  # VMamba's cross4 (N = 1) keeps the chunked kernels


def test_bad_lane_path_mode_is_refused():
    leaves = make_inputs(1, 2, 4, 2, 8)
    with pytest.raises(ValueError, match="fwd_paths"):
        selective_scan_paths_triton(*leaves, paths=route("bi", 2, 8),
                                    config=("lane", 4, 8, 1, 4, 1, "input", "grid", 4, 1, "rows"))


def test_single_path_wrapper_and_last_state():
    bsz, dim, n_state, length = 2, 4, 8, 40
    u, delta, A, B, C, D, z, bias = make_inputs(bsz, 1, dim, n_state, length)
    args = (u[:, 0], delta[:, 0], A[0], B[:, 0], C[:, 0], D[0], z, bias[0])
    out, last = selective_scan_triton(*args, delta_softplus=True, return_last_state=True)
    ref = scan_loop(*args, delta_softplus=True)
    assert rel_err(out, ref) < 1e-5
    # last state: the state after the final step, from the oracle's recurrence
    dt = torch.nn.functional.softplus(args[1].double() + args[7].double()[:, None])
    h = torch.zeros(bsz, dim, n_state, dtype=torch.float64, device=u.device)
    for t in range(length):
        h = torch.exp(dt[..., t, None] * args[2].double()) * h + dt[..., t, None] * args[3].double()[:, None, :, t] \
            * args[0].double()[..., t, None]
    assert rel_err(last, h) < 1e-5


gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [
    pytest.param((16, 2, 384, 16, 197, "bi"), id="vim_ti_bi"),
    pytest.param((4, 4, 96, 1, 3136, "cross"), id="vmamba_t_stage1_cross4"),
])
@pytest.mark.parametrize("variant", sorted(GPU_VARIANTS))
def test_real_shapes_gpu(shape, dtype, variant):
    bsz, n_paths, dim, n_state, length, kind = shape
    inputs = make_inputs(bsz, n_paths, dim, n_state, length, dtype=dtype)
    check_against_oracle(inputs, True, route(kind, n_paths, length, side=56), "mean", dtype, GPU_VARIANTS[variant])


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind,config", [(k, c) for k, n in (("vim_ti_bi", 16), ("cross4_16x16", 1))
                                         for c in [None] + [c for c in BWD_GRID_CANDIDATES[n] if c.bwd_paths == "grid"]],
                         ids=lambda c: c if isinstance(c, str) else "default" if c is None else "-".join(map(str, c)))
def test_default_and_grid_tiles_channel_last_gpu(kind, config, dtype):
    """The default tiles and the backward path-loop/grid candidates on the SSM mixer's layout (channel-last u, Δ, z;
    B and C as column blocks of one x_proj output; gradients come back in the inputs' layout): Vim-Ti's bi route,
    and a 16×16 cross4 route with N = 1 (VMamba's)."""
    if kind == "vim_ti_bi":
        inputs, paths = mixer_layout(make_inputs(16, 2, 384, 16, 197, dtype=dtype)), route("bi", 2, 197)
    else:
        inputs, paths = make_inputs(8, 4, 96, 1, 256, dtype=dtype, with_z=False), route("cross", 4, 256, side=16)
        inputs = channel_last_inputs(inputs)
    check_against_oracle(inputs, True, paths, "mean", dtype, config)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("kind", ["vim_ti_bi", "cross4_16x16"])
def test_default_tiles_smoke_gpu(kind):
    """The default tiles (Vim-Ti bi: the lane kernels with vector B/C rows, at this batch of 16 the backward in
    sequence segments on an H100/H200; cross4 N = 1: the chunk kernels) on the mixer's bfloat16 layout."""
    test_default_and_grid_tiles_channel_last_gpu(kind, None, torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stretch, tile, red, bc", [(8, 2, 32, "atomic"), (16, 2, 32, "atomic"), (16, 2, 8, "atomic"),
                                                 (8, 1, 32, "atomic"), (8, 2, 32, "partial"), (8, 2, 8, "partial")])
def test_lane_backward_smoke_gpu(dtype, stretch, tile, red, bc):
    """The lane backward (forced; "auto" takes it only when the batch fills the GPU) at Vim-Ti's bi shape in the
    mixer's layout: checkpoints every 8 steps with Σ_d over the whole warp and 2 or 1 steps in registers, the
    earlier 16-step stretch, the 8-lane Σ_d, and dB/dC through per-group slots instead of atomics."""
    cfg = GPU_VARIANTS["lane"][:2] + (stretch,) + GPU_VARIANTS["lane"][3:-2] + (tile, red, bc)
    inputs = mixer_layout(make_inputs(16, 2, 384, 16, 197, dtype=dtype))
    check_against_oracle(inputs, True, route("bi", 2, 197), "mean", dtype, cfg)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("fwd, bc", [("lane", "atomic"), ("chunk", "atomic"), ("lane", "scatter")])
def test_lane_hint_channels_smoke_gpu(dtype, fwd, bc):
    """lane_hint "channels" (the lane-per-channel layout under the GPU machine's Triton): the lane backward after the
    lane or the chunk forward, both writing (NP, dim) checkpoints, at Vim-Ti's bi shape in the mixer's layout; dB/dC
    by atomics after an 8-lane Σ_d or by reduce-scatter over the warp."""
    head = GPU_VARIANTS["lane"][:2] + (8,) if fwd == "lane" else ("chunk", 4, 8)
    cfg = head + (1, 0, 0, "input", "grid", 8, 0, "grid", "lane", 2, 32, bc, "channels")
    inputs = mixer_layout(make_inputs(16, 2, 384, 16, 197, dtype=dtype))
    check_against_oracle(inputs, True, route("bi", 2, 197), "mean", dtype, cfg)


@pytest.mark.gpu
@pytest.mark.gpu_smoke
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("segments, bsz, length, regs", [(1, 16, 197, 0), (6, 2, 600, 0), (1, 16, 197, 168)],
                         ids=["whole", "segmented", "capped"])
def test_default_lane_backward_smoke_gpu(dtype, segments, bsz, length, regs):
    """The default's lane backward (checkpoints every 4 steps, dB/dC by reduce-scatter) forced into each of its
    forms at these small batches: whole (what a training batch that fills the GPU gets), cut into sequence segments
    at a long sequence and a small batch (what Vim-Ti at 1248² gets), and with its registers capped at 168
    (spilling)."""
    from kernels.triton.scan_config import default_config

    cfg = default_config(16, 384, 2, lane_bwd=True)._replace(bwd="lane", bwd_segments=segments, bwd_regs=regs)
    assert (cfg.steps, cfg.bwd_bc) == (4, "scatter")
    inputs = mixer_layout(make_inputs(bsz, 2, 384, 16, length, dtype=dtype))
    check_against_oracle(inputs, True, route("bi", 2, length), "mean", dtype, tuple(cfg))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind", ["vim_ti_bi", "cross4_16x16", "vim_ti_one"])
@pytest.mark.parametrize("config", [("lane", 32, 32, 1, 0, 0, "input", "grid", 8, 0),
                                    ("lane", 64, 32, 2, 0, 0, "input", "grid", 4, 3),
                                    ("lane", 32, 32, 1, 0, 0, "input", "grid", 8, 0, "grid")],
                         ids=["loop", "segments3", "paths_grid"])
def test_lane_forward_channel_last_gpu(kind, config, dtype):
    """The lane-owned forward (one path loop, three segments, one program per path) on channel-last inputs, with
    the chunk backward reading its checkpoints: Vim-Ti's bi route, one direction, and a 16×16 cross4 route (N = 1)."""
    if kind == "vim_ti_bi":
        inputs, paths = make_inputs(16, 2, 384, 16, 197, dtype=dtype), route("bi", 2, 197)
    elif kind == "vim_ti_one":
        inputs, paths = make_inputs(16, 1, 384, 16, 197, dtype=dtype), None
    else:
        inputs, paths = make_inputs(8, 4, 96, 1, 256, dtype=dtype, with_z=False), route("cross", 4, 256, side=16)
    check_against_oracle(channel_last_inputs(inputs), True, paths, "mean", dtype, config)


def test_lane_defaults_change_the_lane_choice_inside_only(monkeypatch):
    """`lane_defaults` changes the GPU's lane tile choice (not the chunk one) within its block; a bad field is refused
    before anything changes."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    from kernels.triton.scan_config import default_config, lane_defaults

    lane, one_path = default_config(16, 384, 2), default_config(16, 384, 1)
    with lane_defaults(steps=8):
        assert default_config(16, 384, 2) == lane._replace(steps=8)
        with lane_defaults(bwd_bc="partial"):  # nested blocks add up
            assert default_config(16, 384, 2) == lane._replace(steps=8, bwd_bc="partial")
        assert default_config(16, 384, 1) == one_path
    assert default_config(16, 384, 2) == lane
    with pytest.raises(ValueError, match="stretch"):
        with lane_defaults(stretch=8):
            pass
    assert default_config(16, 384, 2) == lane


def test_backward_takes_the_forwards_tile_choice(monkeypatch):
    """The backward runs with the config its forward resolved, even when the default changes in between (a
    `lane_defaults` block around the forward only): gradients as when both ran under one choice."""
    import kernels.triton.selective_scan as scan

    inputs = make_inputs(1, 2, 4, 4, 12)
    first, second = ("seq", 4, 4, 1), ("seq", 4, 6, 1)
    picks = [first]
    monkeypatch.setattr(scan, "_default_for", lambda u, n: scan.ScanConfig(*picks[0]))
    grads = []
    for switch in (False, True):
        picks[0] = first
        leaves = [x.detach().clone().requires_grad_(True) if x is not None else None for x in inputs]
        out = selective_scan_paths_triton(*leaves, delta_softplus=True, paths=route("bi", 2, 12), merge="mean")
        if switch:
            picks[0] = second  # a different checkpoint stretch: the backward would refuse the forward's states
        out.backward(torch.ones_like(out))
        grads.append([x.grad for x in leaves if x is not None])
    assert all(torch.equal(a, b) for a, b in zip(*grads))
