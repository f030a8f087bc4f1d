"""gated_conv (MambaOut), attention (DeiT/timm) and mlstm (ViL) mixers: parameter counts, equivalence with timm /
direct computations, gradients, and causality along single paths. CPU only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from blocks.layout import MixContext, TokenLayout
from blocks.mixers.attention import Attention
from blocks.mixers.base import MIXERS
from blocks.mixers.gated_conv import GatedConv
from blocks.mixers.mlstm import MLSTM, BlockDiagonal
from blocks.routes import path_index
from kernels.dispatch import record_kernel_paths

LAYOUT = TokenLayout(segments=((4, 4),), cls_slots=(8,))
PATHS = ("raster", "raster_rev", "column", "snake")


def ctx_for(layout: TokenLayout, *paths: str) -> MixContext:
    return MixContext(layout=layout, paths=tuple(path_index(p, layout) for p in paths))


def build(name: str, dim: int, n_paths: int = 1, dtype=torch.float32, **params):
    cls = MIXERS.get(name)
    return cls(dim, params=cls.Params(**params), n_paths=n_paths, dtype=dtype)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- registration, counts


def test_registered_and_causality_flags():
    assert MIXERS.get("gated_conv") is GatedConv
    assert MIXERS.get("attention") is Attention
    assert MIXERS.get("mlstm") is MLSTM
    assert not GatedConv.is_causal(GatedConv.Params())
    assert not Attention.is_causal(Attention.Params())
    assert Attention.is_causal(Attention.Params(causal=True))
    assert MLSTM.is_causal(MLSTM.Params())


@pytest.mark.parametrize("dim", [48, 96])
def test_gated_conv_param_count(dim):
    m = build("gated_conv", dim)
    h, c, k = int(8 / 3 * dim), dim, 7
    assert h == {48: 128, 96: 256}[dim]
    assert n_params(m) == dim * 2 * h + 2 * h + k * k * c + c + h * dim + dim


def test_gated_conv_matches_timm_mambaout_block_count():
    mambaout = pytest.importorskip("timm.models.mambaout")
    for dim in (48, 96):
        blk = mambaout.GatedConvBlock(dim)
        ln = sum(p.numel() for p in blk.norm.parameters())
        assert n_params(build("gated_conv", dim)) == n_params(blk) - ln


def test_attention_param_count_deit_tiny():
    D = 192
    m = build("attention", D)
    assert m.num_heads == 3
    assert n_params(m) == 4 * D * D + 4 * D


def test_attention_rejects_bad_head_dim():
    with pytest.raises(ValueError, match=r"dim=100.*head_dim=64"):
        build("attention", 100)


def test_mlstm_param_counts():
    D = 192
    assert n_params(build("mlstm", D)) == 6 * D * D + 109 * D + 8  # ViL v2 block minus its LN (2D)
    # ViL v1 (no biases, causal conv1d k=4): 6D² + 87D + 8 including its weight-only LN (D)
    assert n_params(build("mlstm", D, conv="causal1d", bias=False)) == 6 * D * D + 86 * D + 8
    # parallel route: q/k/v (15E), gates (24E + 8) and out-norm (2E) per path, E = 2D
    assert n_params(build("mlstm", D, n_paths=2)) == 6 * D * D + 109 * D + 8 + 82 * D + 8


def test_mlstm_init():
    m = build("mlstm", 32)
    cell = m.cells[0]
    assert torch.allclose(cell.fgate.bias, torch.linspace(3.0, 6.0, 4))
    assert cell.fgate.weight.abs().sum() == 0 and cell.igate.weight.abs().sum() == 0
    assert torch.all(m.skip == 1) and torch.all(cell.norm_weight == 1)


# ---------------------------------------------------------------------------------------------- forward, gradients


CASES = [
    ("gated_conv", {}, ("raster",), 1),
    ("attention", {"head_dim": 8}, ("raster",), 1),
    ("attention", {"head_dim": 8, "causal": True}, ("raster", "raster_rev"), 1),
    ("mlstm", {}, ("raster",), 1),
    ("mlstm", {"conv": "causal1d", "bias": False}, ("raster_rev",), 1),
    ("mlstm", {}, ("raster", "raster_rev", "column", "column_rev"), 4),
]


@pytest.mark.parametrize("name,params,paths,n_paths", CASES)
def test_shapes_finite_and_all_params_get_grads(name, params, paths, n_paths):
    torch.manual_seed(0)
    m = build(name, 32, n_paths=n_paths, **params)
    x = torch.randn(2, LAYOUT.length, 32, requires_grad=True)
    y = m(x, ctx_for(LAYOUT, *paths))
    assert y.shape == x.shape and torch.isfinite(y).all()
    (y.square().sum()).backward()
    for pname, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches {pname}"


@pytest.mark.parametrize("dim,block,bias", [(24, 4, True), (12, 12, False), (8, 1, True)])
def test_block_diagonal_dense_product_is_the_grouped_one(dim, block, bias):
    """The dense matmul with the blocks on the diagonal (what CUDA runs) equals the grouped product in float64:
    output and the gradients of x, the blocks and the bias; the dense matrix is zero off the blocks."""
    torch.manual_seed(0)
    bd = BlockDiagonal(dim, block, bias, dtype=torch.float64)
    torch.nn.init.normal_(bd.weight)
    if bias:
        torch.nn.init.normal_(bd.bias)
    x = torch.randn(3, 5, dim, dtype=torch.float64)
    dy = torch.randn(3, 5, dim, dtype=torch.float64)
    runs = []
    for dense in (False, True):
        xx = x.clone().requires_grad_(True)
        bd.zero_grad()
        y = bd(xx, dense=dense)
        y.backward(dy)
        runs.append([y, xx.grad, bd.weight.grad.clone()] + ([bd.bias.grad.clone()] if bias else []))
    for grouped, dense in zip(*runs):
        torch.testing.assert_close(dense, grouped, rtol=1e-12, atol=1e-12)
    w = bd.dense_weight().detach().view(dim // block, block, dim // block, block)
    off = ~torch.eye(dim // block, dtype=torch.bool)
    assert (w.permute(0, 2, 1, 3)[off] == 0).all()


def test_mlstm_uses_dispatched_cell():
    m = build("mlstm", 16)
    with record_kernel_paths() as used:
        m(torch.randn(1, LAYOUT.length, 16), ctx_for(LAYOUT, "raster"))
    assert used == {"mlstm": "reference"}


# ---------------------------------------------------------------------------------------------- equivalences


def test_attention_matches_timm():
    timm_layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    D = 192
    ours = build("attention", D)
    ref = timm_layers.Attention(D, num_heads=3, qkv_bias=True)
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, LAYOUT.length, D)
    # the route is ignored by non-causal attention
    y = ours(x, ctx_for(LAYOUT, "column_rev"))
    torch.testing.assert_close(y, ref(x), rtol=0, atol=1e-6)


def test_causal_attention_averages_paths():
    torch.manual_seed(0)
    m = build("attention", 16, head_dim=4, causal=True, dtype=torch.float64)
    x = torch.randn(2, LAYOUT.length, 16, dtype=torch.float64)
    both = m(x, ctx_for(LAYOUT, "raster", "column_rev"))
    single = (m(x, ctx_for(LAYOUT, "raster")) + m(x, ctx_for(LAYOUT, "column_rev"))) / 2
    torch.testing.assert_close(both, single)


def _gated_conv_nhwc(m: GatedConv, x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The MambaOut block body written on an NHWC image (no LN, no residual)."""
    B, L, C = x.shape
    img = x.reshape(B, h, w, C)
    g, i, c = torch.split(F.linear(img, m.fc1.weight, m.fc1.bias), m.split_sizes, dim=-1)
    c = F.conv2d(c.permute(0, 3, 1, 2), m.conv.weight, m.conv.bias, padding=m.conv.padding,
                 groups=m.conv_channels).permute(0, 2, 3, 1)
    y = F.linear(F.gelu(g) * torch.cat((i, c), dim=-1), m.fc2.weight, m.fc2.bias)
    return y.reshape(B, L, C)


def _perturb_biases(m: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.1)


def test_gated_conv_matches_nhwc_without_class_tokens():
    torch.manual_seed(0)
    layout = TokenLayout(segments=((5, 6),))
    m = build("gated_conv", 24, dtype=torch.float64)
    _perturb_biases(m)
    x = torch.randn(2, layout.length, 24, dtype=torch.float64)
    torch.testing.assert_close(m(x, ctx_for(layout, "snake")), _gated_conv_nhwc(m, x, 5, 6))


def test_gated_conv_matches_timm_mambaout_block():
    mambaout = pytest.importorskip("timm.models.mambaout")
    torch.manual_seed(0)
    dim, h, w = 48, 5, 6
    blk = mambaout.GatedConvBlock(dim).double().eval()
    m = build("gated_conv", dim, dtype=torch.float64)
    _perturb_biases(m)
    blk.load_state_dict({**m.state_dict(), **{f"norm.{k}": v for k, v in blk.norm.state_dict().items()}})
    img = torch.randn(2, h, w, dim, dtype=torch.float64)
    layout = TokenLayout(segments=((h, w),))
    ours = m(blk.norm(img).reshape(2, h * w, dim), ctx_for(layout, "raster"))
    torch.testing.assert_close(ours, (blk(img) - img).reshape(2, h * w, dim))


def test_gated_conv_class_tokens_bypass_conv():
    """Grid tokens match the NHWC computation (no class token in their neighbourhood); class tokens skip the conv."""
    torch.manual_seed(0)
    layout = TokenLayout(segments=((4, 4), (2, 3)), cls_slots=(0, 8, 22))
    m = build("gated_conv", 24, dtype=torch.float64)
    _perturb_biases(m)
    x = torch.randn(2, layout.length, 24, dtype=torch.float64)
    y = m(x, ctx_for(layout, "raster"))
    grid = torch.tensor(layout.grid_positions)
    xg = x[:, grid]
    torch.testing.assert_close(y[:, grid[:16]], _gated_conv_nhwc(m, xg[:, :16], 4, 4))
    torch.testing.assert_close(y[:, grid[16:]], _gated_conv_nhwc(m, xg[:, 16:], 2, 3))
    cls = list(layout.cls_positions)
    g, i, c = torch.split(m.fc1(x[:, cls]), m.split_sizes, dim=-1)
    torch.testing.assert_close(y[:, cls], m.fc2(F.gelu(g) * torch.cat((i, c), dim=-1)))


def test_mlstm_dw2d_class_tokens_bypass_conv():
    """With the 2-D conv a class token's c is SiLU(x_m) of itself, and grid tokens do not see it through the conv."""
    torch.manual_seed(0)
    m = build("mlstm", 16, dtype=torch.float64)
    _perturb_biases(m)
    # a head class token is first on the raster path: the causal cell sees only itself, so if the conv left it alone
    # no grid token can reach it
    head = TokenLayout(segments=((4, 4),), cls_slots=(0,))
    ctx = ctx_for(head, "raster")
    x = torch.randn(1, head.length, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 1:] += torch.randn_like(x2[:, 1:])
    assert torch.equal(m(x2, ctx)[:, 0], m(x, ctx)[:, 0])
    # a middle class token reaches grid tokens only through the cell (after it), never via a conv neighbourhood
    ctx = ctx_for(LAYOUT, "raster")
    cls_pos = LAYOUT.cls_positions[0]
    x = torch.randn(1, LAYOUT.length, 16, dtype=torch.float64)
    x3 = x.clone()
    x3[:, cls_pos] += 1.0
    d = (m(x3, ctx) - m(x, ctx)).abs().amax(dim=(0, 2))
    assert torch.all(d[:cls_pos] == 0) and torch.all(d[cls_pos:] > 0)


# ---------------------------------------------------------------------------------------------- causality


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("name,params", [
    ("attention", {"head_dim": 4, "causal": True}),
    ("mlstm", {"conv": "causal1d"}),  # dw2d mlstm is causal only in its cell (its 2-D conv sees both sides)
])
def test_causal_along_path(name, params, path):
    torch.manual_seed(0)
    m = build(name, 16, dtype=torch.float64, **params)
    _perturb_biases(m)
    ctx = ctx_for(LAYOUT, path)
    pidx = ctx.paths[0]
    x = torch.randn(1, LAYOUT.length, 16, dtype=torch.float64)
    y = pidx.gather(m(x, ctx))
    for t in (0, 5, 8, 12, LAYOUT.length - 1):
        x2 = x.clone()
        x2[:, pidx.index[t]] += torch.randn(16, dtype=torch.float64)
        d = (pidx.gather(m(x2, ctx)) - y).abs().amax(dim=(0, 2))
        assert torch.all(d[:t] == 0), f"{name} {path}: perturbing step {t} changed earlier steps"
        assert torch.all(d[t:] > 0), f"{name} {path}: perturbing step {t} did not reach later steps"


def test_mlstm_dw2d_is_not_causal_along_path():
    """Documented: the v2 2-D conv lets a token see its grid neighbours on both sides of the path."""
    torch.manual_seed(0)
    m = build("mlstm", 16, dtype=torch.float64)
    layout = TokenLayout(segments=((4, 4),))
    ctx = ctx_for(layout, "raster")
    x = torch.randn(1, layout.length, 16, dtype=torch.float64)
    x2 = x.clone()
    x2[:, 5] += 1.0
    assert (m(x2, ctx) - m(x, ctx))[:, 1].abs().max() > 0  # token 1 sees its lower neighbour 5 through the conv


# ---------------------------------------------------------------------------------------------- ViL oracle


def _vil_layer(m: MLSTM, x: torch.Tensor, h: int, w: int, reverse: bool, conv_weight: torch.Tensor) -> torch.Tensor:
    """ViL v2's ViLLayer written from the reference notes: flip for reversed blocks, 2-D conv on the grid view of the
    (flipped) sequence, full block-diagonal matrices, GroupNorm output norm and the plain (unstabilised) xLSTM loop."""
    cell = m.cells[0]
    B, L, _ = x.shape
    E, NH = m.inner, m.num_heads
    DH = E // NH
    if reverse:
        x = x.flip(1)
    xm, z = F.linear(x, m.proj_up.weight, m.proj_up.bias).chunk(2, dim=-1)
    c = F.conv2d(xm.transpose(1, 2).reshape(B, E, h, w), conv_weight, m.conv.bias, padding=1, groups=E)
    c = F.silu(c.reshape(B, E, L).transpose(1, 2))

    def bd(mod, t):
        return t @ torch.block_diag(*mod.weight).T + mod.bias

    q, k, v = bd(cell.q, c), bd(cell.k, c), bd(cell.v, xm)
    qkv = torch.cat((q, k, v), dim=-1)
    ig, fg = cell.igate(qkv), cell.fgate(qkv)
    out = torch.zeros(B, L, NH, DH, dtype=x.dtype)
    for b in range(B):
        for hd in range(NH):
            sl = slice(hd * DH, (hd + 1) * DH)
            mem, nrm = torch.zeros(DH, DH, dtype=x.dtype), torch.zeros(DH, dtype=x.dtype)
            for t in range(L):
                i_t, f_t = torch.exp(ig[b, t, hd]), torch.sigmoid(fg[b, t, hd])
                kt = k[b, t, sl] / DH**0.5
                mem = f_t * mem + i_t * torch.outer(kt, v[b, t, sl])
                nrm = f_t * nrm + i_t * kt
                qt = q[b, t, sl]
                out[b, t, hd] = mem.T @ qt / torch.clamp(torch.abs(nrm @ qt), min=1.0)
    ht = F.group_norm(out.reshape(B * L, E), NH, cell.norm_weight, cell.norm_bias, eps=1e-5).reshape(B, L, E)
    y = F.linear((ht + m.skip * c) * F.silu(z), m.proj_down.weight, m.proj_down.bias)
    return y.flip(1) if reverse else y


def _vil_ready_mlstm(D: int = 16, n_paths: int = 1) -> MLSTM:
    """A float64 ViL layer with every parameter away from its special init (gates, output norm, skip, biases)."""
    torch.manual_seed(0)
    m = build("mlstm", D, n_paths=n_paths, dtype=torch.float64)
    _perturb_biases(m)
    with torch.no_grad():
        for cell in m.cells:
            cell.igate.weight.normal_(0, 0.1)
            cell.fgate.weight.normal_(0, 0.1)
            cell.norm_weight.normal_(1, 0.1)
        m.skip.normal_(1, 0.1)
    return m


@pytest.mark.parametrize("reverse", [False, True])
def test_mlstm_matches_vil_layer(reverse):
    """raster = ViL's forward block exactly; raster_rev = ViL's reversed block with the 3×3 kernel rotated by 180°
    (ViL convolves the flipped grid; we convolve the canonical one)."""
    h, w, D = 3, 4, 16
    m = _vil_ready_mlstm(D)
    layout = TokenLayout(segments=((h, w),))
    x = torch.randn(2, h * w, D, dtype=torch.float64)
    vil_kernel = m.conv.weight.detach().clone()
    if reverse:
        with torch.no_grad():
            m.conv.weight.copy_(vil_kernel.flip(2, 3))
    ours = m(x, ctx_for(layout, "raster_rev" if reverse else "raster"))
    torch.testing.assert_close(ours, _vil_layer(m, x, h, w, reverse, vil_kernel), rtol=1e-5, atol=1e-5)


def _grads(m: torch.nn.Module, x: torch.Tensor, dy: torch.Tensor, run) -> dict[str, torch.Tensor]:
    m.zero_grad()
    xx = x.clone().requires_grad_(True)
    run(xx).backward(dy)
    return {"x": xx.grad, **{n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("dense", [False, True])
def test_mlstm_gradients_match_vil_layer(dense, reverse, monkeypatch):
    """The input's and every parameter's gradient equal the ViL oracle's (float64, autograd through its loop), with
    the q/k/v maps grouped (the CPU default) and dense with q and k stacked in one GEMM (the CUDA default), on ViL's
    forward block and on its reversed one (which our cell runs with `reverse`, no flipped copies). The cell runs with
    eps = 0 here, as the oracle has none (eps = 1e-6 moves some gradients by ~1e-5)."""
    import blocks.mixers.mlstm as mlstm_module
    from kernels.dispatch import mlstm as dispatched_cell

    monkeypatch.setattr(mlstm_module, "mlstm_cell", lambda q, k, v, i, f, reverse=False, backend=None:
                        dispatched_cell(q, k, v, i, f, eps=0.0, reverse=reverse, backend=backend))
    h, w = 3, 4
    m = _vil_ready_mlstm()
    m.dense_qkv = dense
    vil_kernel = m.conv.weight.detach().clone()
    if reverse:
        with torch.no_grad():
            m.conv.weight.copy_(vil_kernel.flip(2, 3))
    layout = TokenLayout(segments=((h, w),))
    x = torch.randn(2, h * w, 16, dtype=torch.float64)
    dy = torch.randn_like(x)
    ours = _grads(m, x, dy, lambda t: m(t, ctx_for(layout, "raster_rev" if reverse else "raster")))
    vil_weight = (lambda: m.conv.weight.flip(2, 3)) if reverse else (lambda: m.conv.weight)
    ref = _grads(m, x, dy, lambda t: _vil_layer(m, t, h, w, reverse, vil_weight()))
    assert set(ours) == set(ref) and len(ref) == len(list(m.parameters())) + 1
    for name in ref:
        torch.testing.assert_close(ours[name], ref[name], rtol=1e-9, atol=1e-10)


def _assert_switch_is_exact(m: MLSTM, ctx: MixContext, attr: str) -> None:
    """Output and all gradients with `m.<attr>` False and True agree to float64 rounding."""
    x = torch.randn(2, ctx.layout.length, m.dim, dtype=torch.float64)
    dy = torch.randn_like(x)
    runs = []
    for value in (False, True):
        setattr(m, attr, value)
        runs.append((m(x, ctx), _grads(m, x, dy, lambda t: m(t, ctx))))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-12, atol=1e-12)
    for name, g in runs[0][1].items():
        torch.testing.assert_close(runs[1][1][name], g, rtol=1e-10, atol=1e-12, msg=name)


def test_mlstm_native_paths_equal_gathered_copies():
    """Identity and reversed paths run by the cell's `reverse` (no gathers) give the gathered-copy route's output and
    gradients to float64 rounding, on a parallel route (a cell per path) and on the alternating one."""
    for paths, n_cells in ((PATHS, 4), (("raster_rev",), 1)):
        ctx = ctx_for(LAYOUT, *paths)
        assert {p.kind for p in ctx.paths} & {"identity", "reverse"}
        _assert_switch_is_exact(_vil_ready_mlstm(n_paths=n_cells), ctx, "native_paths")


def test_mlstm_dense_and_grouped_projections_agree_on_a_parallel_route():
    """Four paths with their own cells: the dense projection (q|k stacked, biases in the GEMMs) gives the grouped
    one's output and gradients to float64 rounding."""
    _assert_switch_is_exact(_vil_ready_mlstm(n_paths=4), ctx_for(LAYOUT, *PATHS), "dense_qkv")


@pytest.mark.parametrize("dense", [False, True])
def test_mlstm_under_autocast_makes_no_float32_activations(dense):
    """Under bf16 autocast the layer's (B, L, E)-sized tensors stay bf16, the per-head output norm's included (it
    runs outside autocast, fp32 inside the kernel). The fp32 biases of the q/k/v maps once promoted q, k, v and every
    tensor after the cell to fp32 (session 12's op count on vil_tiny), and autocast's fp32 layer_norm wrote an fp32
    copy of its input and output."""
    from torch.utils._python_dispatch import TorchDispatchMode

    B, L, E = 2, LAYOUT.length, 32

    class Float32Outputs(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            name = func.overloadpacket.__name__
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.numel() == B * L * E:
                    self.ops.append(name)
            return out

    torch.manual_seed(0)
    m = build("mlstm", 16)
    m.dense_qkv = dense
    x = torch.randn(B, L, 16)
    ctx = ctx_for(LAYOUT, "raster_rev")
    with Float32Outputs() as seen:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x, ctx)
        y.float().sum().backward()  # the backward too: no fp32 (B, L, E) gradients on the way
    assert y.dtype == torch.bfloat16
    assert seen.ops == [], f"float32 (B, L, E) tensors made by {seen.ops}"
