"""Parameter-budget matching: every mixer family lands within the tolerance on its mixer's width grid, only the
chosen knob changes, the result validates and builds, and an unreachable budget says what to do."""

from __future__ import annotations

import pytest
import torch

from blocks import ArchSpec, build_backbone, count_parameters, get_preset
from nas.budget import BudgetMatch, match_budget
from nas.errors import BudgetError, StudyConfigError

SPECS = {
    "ssm": ("test_vim", {}),
    "attention": ("test_deit", {"mixer.params.head_dim": 2}),
    "gated_conv_hierarchical": ("test_mambaout", {}),
    "mlstm": ("test_vil", {}),
}


def _spec(kind: str) -> ArchSpec:
    name, overrides = SPECS[kind]
    return get_preset(name).with_overrides(overrides) if overrides else get_preset(name)


def _check(m: BudgetMatch, spec: ArchSpec, budget: int, tol: float = 0.02) -> None:
    assert abs(m.params - budget) <= tol * budget, m
    assert m.params == count_parameters(m.spec) and m.relative_error == pytest.approx((m.params - budget) / budget)
    assert ArchSpec.from_json(m.spec.to_json()) == m.spec  # validates and is already normalised
    changed = {k for k, v in m.spec.to_dict().items() if spec.to_dict()[k] != v}
    assert changed <= {m.knob.split("[")[0]}, changed  # exactly one knob moved
    out = build_backbone(m.spec)(torch.randn(1, 3, 32, 32))
    assert out.shape == (1, 10)


@pytest.mark.parametrize("budget", [200_000, 1_000_000])
@pytest.mark.parametrize("kind", list(SPECS))
def test_width_matches_budget(kind, budget):
    spec = _spec(kind)
    m = match_budget(spec, budget)
    _check(m, spec, budget)
    assert m.knob == "dims" and m.value == m.spec.dims
    if spec.layout == "hierarchical":  # every stage scaled by one factor
        assert m.spec.dims[1] == 2 * m.spec.dims[0]


@pytest.mark.parametrize("spec, multiple", [
    (get_preset("test_deit"), 16),  # attention: dim % head_dim
    (get_preset("test_vil").with_overrides({"mixer.params.heads": 3, "dims": [36]}), 6),  # mLSTM: 2·dim % 3 and % 4
])
def test_width_stays_on_the_mixer_grid(spec, multiple):
    m = match_budget(spec, 1_000_000, tolerance=0.2)
    assert m.spec.dims[0] % multiple == 0 and abs(m.relative_error) <= 0.2


def test_depth_plain_and_third_stage():
    spec = _spec("ssm")
    m = match_budget(spec, 200_000, solve="depth")
    _check(m, spec, 200_000)
    assert m.knob == "depths[0]" and m.value == m.spec.depths[0] > spec.depths[0]

    four = get_preset("test_mambaout").with_overrides({"dims": [8, 16, 24, 32], "depths": [1, 1, 1, 1]})
    m = match_budget(four, 200_000, solve="depth")
    _check(m, four, 200_000)
    assert m.knob == "depths[2]" and m.spec.depths[:2] == (1, 1) and m.spec.depths[3] == 1


def test_coarse_width_grid_is_refused_with_a_hint_and_depth_solves_it():
    spec = get_preset("test_deit")  # head_dim 16: width moves in steps of 16, ~10% of the count at this size
    with pytest.raises(BudgetError) as e:
        match_budget(spec, 200_000)
    msg = str(e.value)
    assert isinstance(e.value, StudyConfigError)
    for words in ("budget 200,000 parameters", "±2.0%", "dims = (", "solve='depth'"):
        assert words in msg, msg
    _check(match_budget(spec, 200_000, solve="depth"), spec, 200_000)


@pytest.mark.parametrize("solve, knob, other", [("width", "dims", "depth"), ("depth", "depths[0]", "width")])
def test_impossible_budget(solve, knob, other):
    spec = _spec("ssm")
    with pytest.raises(BudgetError) as e:
        match_budget(spec, 100, solve=solve)
    closest = count_parameters(spec.with_overrides({"dims": [1]} if solve == "width" else {"depths": [1]}))
    for words in ("budget 100 parameters", f"{knob} = ", f"{closest:,}", f"solve={other!r}"):
        assert words in str(e.value), str(e.value)


def test_depth_beyond_reason_is_refused_without_building_it():
    with pytest.raises(BudgetError, match=r"would need depths\[0\] ≈ [\d,]+, more than 1024 blocks; try solve='wid"):
        match_budget(_spec("ssm"), 10**9, solve="depth")


def test_bad_arguments():
    with pytest.raises(BudgetError, match="positive"):
        match_budget(_spec("ssm"), 0)
    with pytest.raises(BudgetError, match="'width' or 'depth'"):
        match_budget(_spec("ssm"), 1000, solve="height")  # type: ignore[arg-type]
