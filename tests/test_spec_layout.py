"""ArchSpec identity (JSON round trip, hash stable across processes, normalisation), layouts and route paths."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from blocks import ORDERS, ROUTES, ArchSpec, TokenLayout, get_preset, list_presets
from blocks.routes import path_index, readout_sees_grid


@pytest.mark.parametrize("name", list_presets())
def test_json_round_trip(name):
    spec = get_preset(name)
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec and again.id == spec.id


def test_hash_is_stable_across_processes():
    names = ["vim_tiny", "vmamba_tiny", "test_vil"]
    code = "import blocks, json; print(json.dumps([blocks.get_preset(n).id for n in %r]))" % names
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}).stdout
    assert json.loads(out) == [get_preset(n).id for n in names]


def test_equal_models_have_equal_ids():
    base = get_preset("test_deit")  # fully visible attention: the route cannot change the model
    assert base.route is None
    assert base.with_overrides({"route": "cross4"}).id == base.id
    vim = get_preset("test_vim")
    explicit = vim.with_overrides({"mixer.params": {"d_state": 16}, "route": {"paths": ["raster", "raster_rev"]}})
    assert explicit.id == vim.id  # defaults filled in, shorthand expanded
    assert vim.with_overrides({"readout": "head"}).id != vim.id
    vm = get_preset("test_vmamba")  # 2-D conv: conv_per_path cannot change the model
    assert vm.with_overrides({"mixer.params.conv_per_path": False}).id == vm.id


def test_changing_a_component_name_drops_its_old_params():
    vim = get_preset("test_vim")
    swapped = vim.with_overrides({"mixer.name": "mlstm"})
    assert swapped.mixer.name == "mlstm" and "d_state" not in swapped.mixer.params


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 6), w=st.integers(1, 6), slots=st.sampled_from(["none", "head", "middle", "tail", "double"]),
       path=st.sampled_from([o + r for o in ORDERS.names() for r in ("", "_rev")]))
def test_paths_are_permutations_and_invert(h, w, slots, path):
    J = h * w
    cls = {"none": (), "head": (0,), "middle": (J // 2,), "tail": (J,), "double": (0, J)}[slots]
    layout = TokenLayout(((h, w),), cls)
    p = path_index(path, layout)
    assert sorted(p.index.tolist()) == list(range(layout.length))
    x = torch.randn(1, layout.length, 3)
    assert torch.equal(p.scatter(p.gather(x)), x)
    # the identity / flip shortcuts are the index permutation itself, along any dim
    assert torch.equal(p.gather(x), x.index_select(1, p.index))
    xt = x.transpose(1, 2).contiguous()
    assert torch.equal(p.scatter(xt, 2), xt.index_select(2, p.inverse))
    positions = p.index.tolist()
    want = ("identity" if positions == sorted(positions) else
            "reverse" if positions == sorted(positions, reverse=True) else "permutation")
    assert p.kind == want


def test_path_kinds_of_a_plain_grid():
    layout = TokenLayout(((3, 4),), (6,))
    kinds = {n: path_index(n, layout).kind for n in ("raster", "raster_rev", "snake")}
    assert kinds == {"raster": "identity", "raster_rev": "reverse", "snake": "permutation"}
    rev = path_index("raster_rev", layout)
    x = torch.randn(2, layout.length, 3, requires_grad=True)
    (rev.gather(x) * torch.arange(layout.length).view(1, -1, 1)).sum().backward()
    assert torch.equal(x.grad[0, :, 0], torch.arange(layout.length - 1, -1, -1, dtype=torch.float32))


def test_class_tokens_keep_their_slot_on_every_order():
    layout = TokenLayout(((3, 4),), (6,))  # middle token after 6 grid tokens
    for order in ORDERS.names():
        fwd = path_index(order, layout).index.tolist()
        rev = path_index(order + "_rev", layout).index.tolist()
        assert fwd.index(6) == 6 and rev == fwd[::-1]  # Vim: the reversed path reads the same sequence backwards


def test_column_order_with_segments():
    layout = TokenLayout(((1, 1), (2, 2)))
    assert path_index("column", layout).index.tolist() == [0, 1, 3, 2, 4]
    assert path_index("snake", layout).index.tolist() == [0, 1, 2, 4, 3]


def test_readout_visibility():
    layout = TokenLayout(((2, 2),), (0,))
    assert readout_sees_grid(ROUTES.get("uni"), layout, 4) == [False]
    assert readout_sees_grid(ROUTES.get("bi"), layout, 4) == [True]
    assert readout_sees_grid(ROUTES.get("alternating"), layout, 2) == [True]
    assert readout_sees_grid(ROUTES.get("alternating"), layout, 1) == [False]


def test_stage_layouts_match_the_tokens_each_stage_sees():
    from blocks import build_backbone

    spec = get_preset("test_mambaout").with_overrides({"img_size": 36, "dims": [8, 16, 16], "depths": [1, 1, 1]})
    model = build_backbone(spec)
    seen = []
    for stage in model.stages:
        stage.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    model(torch.randn(1, 3, 36, 36))
    assert seen == [layout.length for layout in model.stage_layouts] == [81, 25, 9]


@pytest.mark.parametrize("segments,cls_slots", [(((3, 4),), ()), (((3, 4), (2, 2)), ()), (((3, 4),), (5,))])
def test_grid_apply_is_the_image_conv_and_hands_it_a_view(segments, cls_slots):
    """`grid_apply` equals a plain NCHW conv of each segment's image (class tokens pass through), and without class
    tokens the conv gets a channels-last view of the tokens' memory, not a copy."""
    from blocks.layout import grid_apply

    torch.manual_seed(0)
    layout = TokenLayout(segments=segments, cls_slots=cls_slots)
    conv = torch.nn.Conv2d(6, 6, 3, padding=1, groups=6, dtype=torch.float64)
    x = torch.randn(2, layout.length, 6, dtype=torch.float64)
    seen = []

    def fn(img: torch.Tensor) -> torch.Tensor:
        seen.append(img.untyped_storage().data_ptr() == x.untyped_storage().data_ptr())
        return conv(img)

    got = grid_apply(x, layout, fn)
    want = x.clone()
    grid_pos = torch.tensor(layout.grid_positions)
    grid = x[:, grid_pos]
    for (h, w), start in zip(layout.segments, layout.segment_offsets()):
        img = grid[:, start:start + h * w].transpose(1, 2).contiguous().view(2, 6, h, w)
        want[:, grid_pos[start:start + h * w]] = conv(img).flatten(2).transpose(1, 2)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert seen == [not cls_slots] * len(segments)
