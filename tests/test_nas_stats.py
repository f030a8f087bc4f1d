"""Ablation statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from nas import stats
from nas.errors import NasError
from nas.stats import mean_ci, paired_differences, summarize, t_critical

ROWS = [
    {"readout": "head", "seed": 0, "val_acc": 0.70},
    {"readout": "head", "seed": 1, "val_acc": 0.74},
    {"readout": "head", "seed": 2, "val_acc": 0.72},
    {"readout": "middle", "seed": 0, "val_acc": 0.75},
    {"readout": "middle", "seed": 1, "val_acc": 0.78},
    {"readout": "middle", "seed": 2, "val_acc": 0.80},
    {"readout": "tail", "seed": 0, "val_acc": 0.60},
    {"readout": "tail", "seed": 1, "val_acc": None},  # a failed trial
    {"readout": "tail", "seed": 2, "val_acc": float("nan")},
]


def test_t_critical_values_and_table_agree():
    assert t_critical(1) == pytest.approx(12.706205, abs=1e-5)
    assert t_critical(2) == pytest.approx(4.302653, abs=1e-5)
    assert t_critical(30) == pytest.approx(2.042272, abs=1e-5)
    for df in (1, 2, 5, 10, 29, 30):
        assert stats._t975_table(df) == pytest.approx(t_critical(df), abs=1e-5)
    assert t_critical(35) <= stats._t975_table(35) < stats._t975_table(30) + 1e-12  # conservative above 30
    assert stats._t975_table(10_000) == pytest.approx(1.979930) and t_critical(10_000) < 1.979930
    with pytest.raises(ValueError):
        t_critical(0)


def test_level_summaries_by_hand():
    head, middle, tail = summarize(ROWS, "readout", "val_acc")
    # head: mean 0.72, deviations −0.02, 0.02, 0 → s² = 0.0008/2 → s = 0.02; half = 4.302653·0.02/√3
    assert (head.level, head.n, head.n_missing) == ("head", 3, 0)
    assert head.mean == pytest.approx(0.72) and head.std == pytest.approx(0.02)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (head.ci_low, head.ci_high) == (pytest.approx(0.72 - half, abs=1e-6), pytest.approx(0.72 + half, abs=1e-6))
    # middle: 0.75, 0.78, 0.80 → mean 0.776667, s = sqrt(((−.026667)² + .003333² + .023333²)/2) = 0.025166
    assert middle.mean == pytest.approx(0.7766667, abs=1e-6) and middle.std == pytest.approx(0.0251661, abs=1e-6)
    assert tail.n == 1 and tail.n_missing == 2 and tail.mean == pytest.approx(0.60)
    assert math.isnan(tail.std) and math.isnan(tail.ci_low)


def test_paired_difference_on_matched_seeds_by_hand():
    diffs = {d.level: d for d in paired_differences(ROWS, "readout", "val_acc", reference="head")}
    mid = diffs["middle"]
    # differences 0.05, 0.04, 0.08 → mean 0.056667, s = sqrt((.006667² + .016667² + .023333²)/2) = 0.020817
    assert mid.n_pairs == 3 and mid.seeds == (0, 1, 2)
    assert mid.mean == pytest.approx(0.0566667, abs=1e-6) and mid.std == pytest.approx(0.0208167, abs=1e-6)
    half = 4.302653 * 0.0208167 / math.sqrt(3)
    assert mid.ci_low == pytest.approx(0.0566667 - half, abs=1e-5) and mid.ci_high > mid.ci_low
    tail = diffs["tail"]  # only seed 0 survives on both sides
    assert tail.n_pairs == 1 and tail.mean == pytest.approx(-0.10) and math.isnan(tail.ci_low)
    assert set(diffs) == {"middle", "tail"}


def test_pairing_uses_only_shared_seeds():
    rows = [{"f": "a", "seed": s, "m": v} for s, v in ((0, 1.0), (1, 2.0), (2, 3.0))]
    rows += [{"f": "b", "seed": s, "m": v} for s, v in ((1, 2.5), (2, 3.5), (7, 100.0))]
    (d,) = paired_differences(rows, "f", "m", reference="a")
    assert d.seeds == (1, 2) and d.mean == pytest.approx(0.5) and d.std == pytest.approx(0.0)
    assert d.ci_low == pytest.approx(0.5) and d.ci_high == pytest.approx(0.5)


def test_mean_ci_and_errors():
    m, s, h = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(math.sqrt(5 / 3)) and h == pytest.approx(3.182446 * s / 2, abs=1e-6)
    with pytest.raises(NasError, match="reference level 'nope'"):
        paired_differences(ROWS, "readout", "val_acc", reference="nope")
    with pytest.raises(NasError, match="two rows"):
        summarize(ROWS + [{"readout": "head", "seed": 0, "val_acc": 0.1}], "readout", "val_acc")
    with pytest.raises(NasError, match="no factor key"):
        summarize([{"seed": 0, "val_acc": 1.0}], "readout", "val_acc")
