"""The ablation summary behind `nas show`, `nas report` and the dashboard: numbers from nas.stats, the paper beside
ours, the columns and strings every front end prints, and the error split of adaptive seeding."""

from __future__ import annotations

import math

import pytest
from rich.console import Console

from nas import stats
from nas.store import TrialView
from nas.summary import ablation_summary, ablation_table, display_columns, display_rows, seed_results

ACC = {"head": [0.912, 0.925, 0.905, 0.918, 0.921], "middle": [0.951, 0.957, 0.944, 0.962, 0.949],
       "tail": [0.905, 0.931, 0.899, 0.925, 0.915], "double": [0.49, 0.93, 0.88, 0.91, 0.62],
       "mean": [0.897, 0.911, 0.893, 0.902, 0.899]}
PAPER = {"mean": 73.9, "head": 75.2, "double": 74.3, "middle": 76.1}
CONFIG = {"factors": {"readout": list(ACC)}, "reference": {"readout": "head"}, "data": {"n_test": 512},
          "paper": {"source": "Vim", "values": PAPER}}


def _tv(i: int, level: str, seed: int, acc: float | None, state: str = "complete") -> TrialView:
    return TrialView(id=i, number=i, key=f"s/{level}/s{seed}", levels={"readout": level}, seed=seed, state=state,
                     val_acc=acc, values={}, spec_id="", spec_json="", error=None, cost={}, num_params=26_000,
                     kernel_paths={}, node_id=None, wall_seconds=None, train_seconds=None, budget={},
                     started_at=None, finished_at=None)


def _trials(acc: dict[str, list[float]]) -> list[TrialView]:
    cells = [(lv, s, a) for lv, accs in acc.items() for s, a in enumerate(accs)]
    return [_tv(i, lv, s, a) for i, (lv, s, a) in enumerate(cells)]


def test_summary_rows_are_the_stats_functions_numbers():
    s = ablation_summary(CONFIG, _trials(ACC))
    rows = {r.level: r for r in s.rows}
    values = {lv: dict(enumerate(v)) for lv, v in ACC.items()}
    comps = {c.level: c for c in stats.compare_levels(values, "head", stats.metric_kind("val_acc"), n_test=512)}
    for lv in ("middle", "tail", "double", "mean"):
        r, c = rows[lv], comps[lv]
        assert (r.diff, r.diff_adj_low, r.diff_adj_high, r.p_value, r.mde, r.verdict) == \
            (c.mean, c.adj_low, c.adj_high, c.p_value, c.mde, c.verdict)
        iv = stats.level_interval(ACC[lv], stats.metric_kind("val_acc"), n_test=512)
        assert (r.ci_low, r.ci_high) == (iv.low, iv.high) and 0 <= r.ci_low <= r.ci_high <= 1
    assert [rows[lv].verdict for lv in ("middle", "tail", "double", "mean")] == \
        ["better", "no difference detected", "no difference detected", "worse"]
    assert rows["double"].ci_high == 1.0  # the seed at 49 % would push the plain interval past 100 %
    assert rows["head"].verdict == "" and rows["head"].paper_diff is None and s.looks == 1 and s.n_test == 512


def test_display_strings_and_columns():
    s = ablation_summary(CONFIG, _trials(ACC))
    cols = dict(display_columns(s))
    assert cols["ci"] == "95% CI" and cols["diff_ci"] == "Δ 95% CI (Holm)" and cols["mde"] == "detectable Δ"
    rows = {r["level"]: r for r in display_rows(s)}
    # middle − head per seed: 3.9, 3.2, 3.9, 4.4, 2.8 points → mean +3.64
    assert rows["middle"]["diff"] == "+3.6" and rows["middle"]["verdict"] == "better"
    assert rows["double"]["ci"].endswith(", 100.0]") and rows["head"]["diff"] == "(reference)"
    assert rows["mean"]["paper_diff"] == "-1.3" and rows["middle"]["paper"] == "76.1"
    text = _render(s)
    for word in ("readout", "(reference)", "95% CI", "Δ vs head", "paper", "better", "worse", "Holm"):
        assert word in text, word


def _render(summary) -> str:
    console = Console(width=200, record=True)
    console.print(ablation_table(summary, title="t"))
    return console.export_text()


def test_opposite_to_paper_only_where_our_corrected_interval_excludes_zero():
    acc = {**ACC, "middle": [a - 0.05 for a in ACC["head"]]}  # ours: middle 5 points worse on every seed
    rows = {r.level: r for r in ablation_summary(CONFIG, _trials(acc)).rows}
    assert rows["middle"].verdict == "worse" and rows["middle"].paper_diff > 0 and rows["middle"].opposite_to_paper
    assert not rows["mean"].opposite_to_paper  # worse in ours and in the paper
    assert not rows["double"].opposite_to_paper  # no difference detected: nothing to contradict
    s = ablation_summary(CONFIG, _trials(acc))
    assert {r["level"]: r["verdict"] for r in display_rows(s)}["middle"] == "worse (opposite to paper)"
    assert "(opposite" in _render(s)


def test_two_seeds_answer_no_difference_with_honest_bounds():
    two = {lv: v[:2] for lv, v in ACC.items()}
    s = ablation_summary(CONFIG, _trials(two))
    for r in s.rows:
        assert 0 <= r.ci_low <= r.ci_high <= 1
        if not r.is_reference:
            assert r.verdict == "no difference detected" and -1 <= r.diff_adj_low <= r.diff_adj_high <= 1
    assert {r["level"]: r["mde"] for r in display_rows(s)}["double"] == "> 100.0"


def test_adaptive_settings_split_the_error_over_the_looks():
    cfg = {**CONFIG, "seeds": {"min": 3, "max": 10, "target_halfwidth": 1.0, "confidence": 0.9}}
    s = ablation_summary(cfg, _trials(ACC))
    assert (s.looks, s.confidence) == (3, 0.9)
    plain = {r.level: r for r in ablation_summary({**CONFIG, "seeds": [0, 1, 2, 3, 4]}, _trials(ACC)).rows}
    values = {lv: dict(enumerate(v)) for lv, v in ACC.items()}
    (c, *_) = stats.compare_levels(values, "head", stats.metric_kind("val_acc"), n_test=512, confidence=0.9, looks=3)
    row = next(r for r in s.rows if r.level == c.level)
    assert (row.diff_adj_low, row.diff_adj_high) == (c.adj_low, c.adj_high)
    assert dict(display_columns(s))["diff_ci"] == "Δ 90% CI (Holm, 3 looks)"
    assert math.isclose(plain[c.level].diff, row.diff)


def test_failed_seeds_and_a_metric_that_is_not_accuracy():
    ts = _trials({"head": [0.9, 0.91, 0.92], "middle": [0.95, 0.96, 0.97]})
    ts[4] = _tv(4, "middle", 1, None, "failed")
    rows = {r.level: r for r in ablation_summary(CONFIG, ts).rows}
    assert rows["middle"].n == 2 and rows["middle"].n_failed == 1 and rows["middle"].n_pairs == 2
    s = ablation_summary(CONFIG, _trials(ACC), metric="params")  # equal across levels: no difference, no range cut
    r = next(r for r in s.rows if r.level == "middle")
    assert r.diff == 0 and r.verdict == "no difference detected" and display_rows(s)[1]["mean"] == "2.6e+04"
    with pytest.raises(ValueError, match="not a grid study"):
        ablation_summary({"factors": {}}, [])


def test_seed_results_feed_the_adaptive_policy():
    from nas.adaptive import next_cells

    ts = _trials({"head": [0.9, 0.91, 0.92], "middle": [0.95, 0.96, 0.97]})
    ts[1] = _tv(1, "head", 1, None, "failed")  # finished without a value: never asked again
    ts[5] = _tv(5, "middle", 2, None, "stale")  # interrupted: not finished, asked again
    ts.append(_tv(9, "middle", 0, None, "failed"))  # a failed retry after a success: the success wins
    sr = seed_results({**CONFIG, "factors": {"readout": ["head", "middle", "tail"]}}, ts)
    assert sr.levels == ["head", "middle", "tail"] and sr.reference == "head" and sr.n_test == 512
    assert sr.results == {"head": {0: 0.9, 1: None, 2: 0.92}, "middle": {0: 0.95, 1: 0.96}}
    settings = {"min": 3, "max": 6, "target_halfwidth": 1.0}
    assert next_cells(sr.results, sr.reference, settings, levels=sr.levels, n_test=sr.n_test) == \
        [("tail", 0), ("tail", 1), ("middle", 2), ("tail", 2)]
