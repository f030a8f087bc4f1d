"""benchmarks/bench_step_graph.py's scan variants: a bad `--scan` is refused before any row runs, and a variant
changes the scan's default tile choice only inside its block and only where the default is the lane forward."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture()
def bench(import_bench):
    return import_bench("bench_step_graph")


def test_parse_variant_types_and_refusals(bench):
    assert bench.parse_variant("rs=bwd_bc:scatter,steps:4") == ("rs", {"bwd_bc": "scatter", "steps": 4})
    for bad, words in (("rs", "NAME=FIELD:VALUE"), ("rs=", "NAME=FIELD:VALUE"), ("rs=stretch:4", "ScanConfig field"),
                       ("rs=steps:four", "steps wants int")):
        with pytest.raises(ValueError, match=words):
            bench.parse_variant(bad)


def test_scan_variant_changes_the_lane_default_only_inside(bench, monkeypatch):
    from kernels.triton import selective_scan as scan
    from kernels.triton.scan_config import default_config

    monkeypatch.setenv("TRITON_INTERPRET", "0")  # the GPU's tile choice, asked without a GPU
    lane, chunk = default_config(16, 5, 2), default_config(16, 5, 1)  # the bi route's and one path's
    assert (lane.variant, chunk.variant) == ("lane", "chunk")
    u_bi, u_one = torch.zeros(2, 2, 5, 64), torch.zeros(2, 1, 5, 64)  # (batch, paths, dim, L)
    with bench.scan_variant({"bwd_bc": "atomic", "steps": 8}) as applied:
        assert scan._default_for(u_bi, 16) == lane._replace(bwd_bc="atomic", steps=8)
        assert scan._default_for(u_one, 16) == chunk  # not the lane forward: left alone
        assert applied == [1]
    assert scan._default_for(u_bi, 16) == lane
