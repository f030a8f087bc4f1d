"""The data behind every dashboard figure, checked by hand on small inputs (no database, no browser), plus the URL
scheme and escaping of user strings."""

from __future__ import annotations

import json
import math
from datetime import datetime

import pytest

pytest.importorskip("dash", reason="the dashboard's packages are not installed (e.g. the GPU machine's device bundle)")

import plotly.graph_objects as go  # noqa: E402

from dashboard import figures as F
from dashboard import figures_cost as FC
from dashboard import figures_search as FS
from dashboard.app import parse_path, study_href
from dashboard.queries import SearchData
from nas.stats import t_critical
from nas.store import TrialView

CONFIG = {"factors": {"readout": ["head", "middle", "tail"]}, "reference": {"readout": "head"},
          "paper": {"source": "Vim Table 5", "metric": "top-1 (%)", "values": {"head": 75.2, "middle": 76.1}}}


def trial(number: int, level: str | None, seed: int, acc: float | None, *, state: str = "complete",
          cost: dict | None = None, spec: dict | None = None, levels: dict | None = None,
          params: int | None = 1000) -> TrialView:
    lv = levels if levels is not None else {"readout": level}
    spec = spec or {"mixer": {"name": "ssm"}, "dims": [32], "layout": "plain", "readout": level, "img_size": 32,
                    "tokenizer": {"name": "patch", "params": {"patch_size": 8}},
                    "route": {"paths": ["raster", "raster_rev"], "schedule": "parallel"}}
    return TrialView(id=number + 100, number=number, key=f"s/{level}/{lv}/s{seed}", levels=lv, seed=seed,
                     state=state, val_acc=acc, values={"val_acc": acc}, spec_id=f"spec-{level}",
                     spec_json=json.dumps(spec), error=None if state != "failed" else "boom", cost=cost or {},
                     num_params=params, kernel_paths={}, node_id=None, wall_seconds=None, train_seconds=None,
                     budget={}, started_at=None, finished_at=None)


def grid_trials() -> list[TrialView]:
    vals = {"head": [0.70, 0.72, 0.71], "middle": [0.75, 0.78, 0.76], "tail": [0.66, 0.74, None]}
    out, n = [], 0
    for level, accs in vals.items():
        for seed, acc in enumerate(accs):
            out.append(trial(n, level, seed, acc, state="complete" if acc is not None else "failed"))
            n += 1
    return out


# ---- ablation --------------------------------------------------------------------------------------------------
def test_ablation_data_every_seed_a_point_mean_ci_and_paired_difference() -> None:
    d = F.ablation_data(CONFIG, grid_trials())
    assert d.levels == ["head", "middle", "tail"] and d.reference == "head" and d.unit == " (%)"
    assert len(d.points) == 8  # the failed seed is not a point
    assert sorted(p["value"] for p in d.points if p["level"] == "middle") == pytest.approx([75, 76, 78])
    rows = {r["level"]: r for r in d.rows}
    # middle: mean 76.333, sd of (75, 78, 76) = 1.5275, half-width t(2)·sd/√3
    m = 76 + 1 / 3
    half = t_critical(2) * math.sqrt(((75 - m) ** 2 + (78 - m) ** 2 + (76 - m) ** 2) / 2) / math.sqrt(3)
    assert rows["middle"]["mean"] == pytest.approx(m)
    assert rows["middle"]["ci_high"] - rows["middle"]["mean"] == pytest.approx(half)
    # paired on seeds 0, 1, 2: (5, 6, 5) → mean 5.333
    assert rows["middle"]["diff"] == pytest.approx(16 / 3)
    assert rows["tail"]["n"] == 2 and rows["tail"]["n_failed"] == 1
    assert rows["tail"]["diff"] == pytest.approx(((66 - 70) + (74 - 72)) / 2)  # matched seeds 0 and 1 only
    assert rows["middle"]["paper"] == 76.1 and rows["middle"]["paper_diff"] == pytest.approx(0.9)
    assert rows["tail"]["paper"] is None and rows["head"]["is_reference"]


def test_ablation_reference_can_be_chosen() -> None:
    d = F.ablation_data(CONFIG, grid_trials(), reference="middle")
    rows = {r["level"]: r for r in d.rows}
    assert d.reference == "middle" and rows["middle"]["is_reference"]
    assert rows["head"]["diff"] == pytest.approx(-16 / 3)
    assert rows["head"]["paper_diff"] == pytest.approx(-0.9)


def test_ablation_figure_points_carry_their_trial_number() -> None:
    d = F.ablation_data(CONFIG, grid_trials())
    fig = F.ablation_figure(d, title="<b>x</b>")
    seeds = fig.data[0]
    assert len(seeds.x) == 8 and sorted(c[0] for c in seeds.customdata) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert "&lt;b&gt;" in fig.layout.title.text and "<b>" not in fig.layout.title.text
    names = [t.name for t in fig.data]
    assert any(n.startswith("paper") for n in names) and "mean ± 95% CI" in names


def test_ablation_figure_large_study_opens_on_density_and_points_on_demand() -> None:
    d = F.ablation_data(CONFIG, grid_trials())
    dens = F.seed_density(d, bins=4)
    # every finished seed lands in exactly one bin of its own level; 66 and 78 are the range's ends
    assert [sum(dens["z"][b][i] for b in range(4)) for i in range(3)] == [3, 3, 2]
    assert dens["edges"][0] == pytest.approx(66) and dens["edges"][-1] == pytest.approx(78)
    assert dens["z"][0][2] == 1 and dens["z"][3][1] == 3  # tail's 66 in the first bin; middle's 75-78 in the last
    fig = F.ablation_figure(d, points=False)
    assert fig.data[0].type == "heatmap" and "density of 8 seeds" in fig.layout.annotations[0].text
    assert F.ablation_figure(d).data[0].type == "scatter"  # few seeds: points without asking
    assert F.scatter(F.WEBGL_POINTS) is go.Scatter and F.scatter(F.WEBGL_POINTS + 1) is go.Scattergl


def test_ablation_table_rows_match_nas_show_columns() -> None:
    rows = F.ablation_table_rows(F.ablation_data(CONFIG, grid_trials()))
    assert [r["level"] for r in rows] == ["head", "middle", "tail"]
    assert rows[0]["diff"] == "(reference)" and rows[1]["diff"] == "+5.33"
    assert rows[2]["n"] == "2 (+1 failed)" and rows[2]["paper"] == "–"


def test_latest_attempt_wins_and_levels_of_several_factors() -> None:
    retry = [trial(0, "head", 0, None, state="stale"), trial(1, "head", 0, 0.7)]
    assert [t.number for t in F.latest_attempts(retry)] == [1]
    cfg = {"factors": {"readout": ["head"], "route": ["bi", "uni"]}}
    ts = [trial(0, "head", 0, 0.5, levels={"readout": "head", "route": "bi"}),
          trial(1, "head", 0, 0.6, levels={"readout": "head", "route": "uni"})]
    assert F.ablation_levels(cfg, ts) == ["readout=head, route=bi", "readout=head, route=uni"]


# ---- learning curves --------------------------------------------------------------------------------------------
def test_curves_data_per_trial_and_mean_per_level() -> None:
    ts = [trial(0, "head", 0, 0.7), trial(1, "head", 1, 0.8), trial(2, "tail", 0, 0.6),
          trial(3, "head", 2, None, state="failed")]
    epochs = {100: [{"epoch": 1, "val_acc": 0.5}, {"epoch": 2, "val_acc": 0.7}],
              101: [{"epoch": 1, "val_acc": 0.6}, {"epoch": 2, "val_acc": 0.8}],
              102: [{"epoch": 1, "val_acc": None}],  # no usable value: no series
              103: [{"epoch": 1, "val_acc": 0.1}]}  # failed after one epoch: drawn, not averaged
    d = F.curves_data(ts, epochs, "val_acc", ["readout"])
    assert [(s["number"], s["values"]) for s in d.series] == [(0, pytest.approx([50, 70])),
                                                                (1, pytest.approx([60, 80])),
                                                                (3, pytest.approx([10]))]
    assert d.means == [{"label": "head", "epochs": [1, 2], "values": pytest.approx([55, 75])}]
    fig = F.curves_figure(d)
    assert len(fig.data) == 4


# ---- Pareto front -------------------------------------------------------------------------------------------------
def test_pareto_mask_by_hand() -> None:
    # cost (min) and accuracy (max): (1, .5) (2, .7) (2, .6) (3, .7) (4, .9)
    mask = FC.pareto_mask([1, 2, 2, 3, 4], [0.5, 0.7, 0.6, 0.7, 0.9])
    assert mask == [True, True, False, False, True]
    # throughput is better when larger
    assert FC.pareto_mask([100, 200, 50], [0.8, 0.7, 0.9], cost_better="max") == [True, True, True]
    assert FC.pareto_mask([100, 200, 50], [0.8, 0.9, 0.7], cost_better="max") == [False, True, False]


def test_pareto_data_hover_shows_the_spec_escaped() -> None:
    ts = [trial(0, "head", 0, 0.7, params=1000), trial(1, "<i>x</i>", 0, 0.8, params=2000),
          trial(2, "tail", 0, 0.6, params=3000), trial(3, "tail", 1, None, state="failed")]
    d = FC.pareto_data(ts, "params")
    assert [p["number"] for p in d["front"]] == [0, 1]
    assert len(d["points"]) == 3
    hover = d["points"][1]["hover"]
    assert "mixer=ssm" in hover and "route=raster+raster_rev/parallel" in hover and "&lt;i&gt;" in hover
    assert "<i>" not in hover
    empty = FC.pareto_data(ts, "peak_memory_bytes")
    assert empty["points"] == [] and "CUDA" in empty["note"]
    with pytest.raises(ValueError, match="unknown cost"):
        FC.pareto_data(ts, "joules")


def test_pareto_costs_carry_their_units() -> None:
    ts = [trial(0, "head", 0, 0.7, cost={"flops": 4.6e9, "peak_memory_bytes": 300 * 2**20}),
          trial(1, "tail", 0, 0.8, cost={"flops": 9.2e9, "peak_memory_bytes": 3 * 2**30})]
    flops = FC.pareto_data(ts, "flops")
    assert flops["cost_label"] == "FLOPs per image (GFLOPs)" and [p["cost"] for p in flops["points"]] == \
        pytest.approx([4.6, 9.2])
    mem = FC.pareto_data(ts, "peak_memory_bytes")
    assert mem["cost_label"] == "peak memory (GiB)" and [p["cost"] for p in mem["points"]] == \
        pytest.approx([300 / 1024, 3.0])
    assert FC.pareto_figure(mem).layout.xaxis.title.text == "peak memory (GiB)"
    assert FC.pareto_data(ts[:1], "peak_memory_bytes")["cost_label"] == "peak memory (MiB)"
    assert FC.pareto_data(ts, "throughput")["cost_label"] == "throughput (images/s)"
    none = FC.pareto_data(ts, "throughput")
    fig = FC.pareto_figure(none, title="Pareto front")
    assert len(fig.data) == 0 and "no finished trial has both val_acc and throughput" in fig.layout.meta["empty"]


# ---- cost scaling ---------------------------------------------------------------------------------------------------
def seq_len(spec_json: str, size: int) -> int:
    return (size // 8) ** 2 + 1  # patch 8 plus a class token: 32 → 17, 64 → 65, 128 → 257


def sized(thr: dict[int, float], mem: dict[int, float] | None = None) -> dict:
    """A trial's cost measured at 32 px and, under by_resolution, at the other sizes of `thr`."""
    mem = mem or {}
    return {"img_size": 32, "throughput": thr[32], "peak_memory_bytes": mem.get(32),
            "by_resolution": {str(k): {"throughput": v, "peak_memory_bytes": mem.get(k)} for k, v in thr.items()}}


def test_scaling_data_one_series_per_level_seeds_averaged() -> None:
    mib = 2**20
    ts = [trial(0, "head", 0, 0.70, cost=sized({32: 1000.0, 64: 300.0, 128: 80.0}, {32: 100 * mib, 64: 200 * mib})),
          trial(1, "head", 1, 0.72, cost=sized({32: 800.0, 64: 310.0, 128: 60.0}, {32: 100 * mib, 64: 220 * mib})),
          trial(2, "middle", 0, 0.75, cost={**sized({32: 900.0, 64: 250.0}), "by_resolution": {
              "64": {"throughput": 250.0}, "128": {"error": "too large"}}}),
          trial(3, "tail", 0, None, state="failed", cost=sized({32: 5.0, 64: 5.0}))]  # failed: left out
    d = FC.scaling_data(ts, seq_len)
    assert [s.label for s in d.series] == ["head", "middle"] and d.empty == ""  # one factor: its values
    head, middle = d.series
    assert head.sizes == [32, 64, 128] and head.L == [17, 65, 257]
    assert head.throughput == pytest.approx([900.0, 305.0, 70.0])  # the two seeds' means
    assert head.memory == [100 * mib, 210 * mib, None]
    assert middle.sizes == [32, 64] and middle.throughput == pytest.approx([900.0, 250.0])  # 128: an error
    assert d.thresholds == [(32, 192)] and d.legend_title == "readout" and d.note == ""


def test_scaling_figure_a_coloured_line_per_level_with_units() -> None:
    mib = 2**20
    ts = [trial(i, lv, 0, 0.7, cost=sized({32: 1000.0 / k, 64: 250.0 / k, 128: 60.0 / k},
                                          {32: 100 * mib, 64: 200 * mib, 128: 400 * mib}))
          for i, (lv, k) in enumerate([("head", 1), ("middle", 2), ("tail", 4)])]
    fig = FC.scaling_figure(FC.scaling_data(ts, seq_len))
    levels = [t for t in fig.data if not t.name.startswith("L = 6D")]
    thr = [t for t in levels if t.yaxis == "y"]
    mem = [t for t in levels if t.yaxis == "y2"]
    assert [t.name for t in thr] == ["head", "middle", "tail"]  # one trace per level
    assert all(t.mode == "lines+markers" and t.x == (17, 65, 257) for t in thr)  # a line across resolutions
    colors = [t.line.color for t in thr]
    assert len(set(colors)) == 3 and [t.line.color for t in mem] == colors  # a colour per level, both panels
    assert thr[1].y == pytest.approx((500.0, 125.0, 30.0)) and mem[0].y == pytest.approx((100.0, 200.0, 400.0))
    assert [t.showlegend for t in mem] == [False] * 3  # the legend names each level once
    lay = fig.layout
    assert lay.xaxis.title.text == "sequence length L (tokens, first stage)" and lay.xaxis.type == "log"
    assert lay.yaxis.title.text == "throughput (images/s)" and lay.yaxis.type == "log"  # 1000 → 15: decades
    assert lay.yaxis2.title.text == "peak memory (MiB)" and lay.yaxis2.type == "linear"  # 100 → 400: no decade
    assert lay.legend.title.text == "readout:"
    assert lay.xaxis.tickvals == (17, 65, 192, 257)  # the measured lengths and the threshold
    assert lay.yaxis.tickvals == (10, 20, 50, 100, 200, 500, 1000)  # 1-2-5 steps over 15 … 1000 images/s
    lines = [t for t in fig.data if t.name.startswith("L = 6D = 192 (D = 32)")]
    assert len(lines) == 2 and lines[0].x == (192, 192) and lines[0].line.color not in colors  # both panels
    gib = [trial(0, "head", 0, 0.7, cost=sized({32: 10.0, 64: 5.0}, {32: 2 * 2**30, 64: 3 * 2**30}))]
    fig = FC.scaling_figure(FC.scaling_data(gib, seq_len))
    assert fig.layout.yaxis2.title.text == "peak memory (GiB)" and fig.data[1].y == pytest.approx((2.0, 3.0))
    assert fig.layout.yaxis.type == "linear"  # 10 → 5 images/s: no decade
    assert fig.layout.xaxis.type == "log"  # 17 → 65 tokens, but the threshold at 192 makes it one


def test_scaling_without_memory_is_one_panel_and_says_why() -> None:
    ts = [trial(0, "head", 0, 0.7, cost=sized({32: 10.0, 64: 4.0}))]
    d = FC.scaling_data(ts, seq_len)
    assert "CUDA only" in d.note
    fig = FC.scaling_figure(d)
    assert len(fig.data) == 2 and "yaxis2" not in fig.layout.to_plotly_json()  # the level and the threshold
    assert "CUDA only" in fig.layout.title.text


@pytest.mark.parametrize("trials, missing", [
    ([], "no finished trials yet"),
    ([trial(0, "head", 0, None, state="failed", cost=sized({32: 1.0, 64: 1.0}))], "no finished trials yet"),
    ([trial(0, "head", 0, 0.7, cost={})], "no finished trial has a measured throughput"),
    ([trial(0, "head", 0, 0.7, cost={"img_size": 32, "throughput": 10.0}),
      trial(1, "tail", 0, 0.7, cost={"img_size": 32, "throughput": 20.0})],
     "no trials with cost measured at several resolutions yet")])
def test_scaling_empty_states_say_what_is_missing(trials: list, missing: str) -> None:
    d = FC.scaling_data(trials, seq_len)
    assert d.series == [] and d.empty.startswith(missing)
    fig = FC.scaling_figure(d)
    assert len(fig.data) == 0 and fig.layout.meta["empty"] == d.empty  # no bare axes: a message instead
    assert fig.layout.xaxis.visible is False and fig.layout.yaxis.visible is False
    assert fig.layout.annotations[0].text.startswith(missing)


def test_scaling_names_mixers_and_keeps_the_best_levels_when_many() -> None:
    attn = {"mixer": {"name": "attention"}, "dims": [64], "img_size": 32}
    ts = [trial(0, "a", 0, 0.7, cost=sized({32: 10.0, 64: 5.0})),
          trial(1, "b", 0, 0.6, cost=sized({32: 10.0, 64: 5.0}), spec=attn)]
    d = FC.scaling_data(ts, seq_len)
    assert [s.label for s in d.series] == ["ssm · a", "attention · b"]
    assert d.thresholds == [(32, 192), (64, 384)]
    n = FC.MAX_SERIES + 5
    many = [trial(i, f"l{i}", 0, i / 100, cost=sized({32: 10.0, 64: 5.0})) for i in range(n)]
    d = FC.scaling_data(many, seq_len)
    assert [s.label for s in d.series] == [f"l{i}" for i in range(5, n)]  # the best val_acc, in order
    assert f"showing the {FC.MAX_SERIES} levels with the best val_acc of {n}" in d.note
    colors = [t.line.color for t in FC.scaling_figure(d).data if not t.name.startswith("L = 6D")]
    assert len(colors) == FC.MAX_SERIES and len(set(colors)) == FC.MAX_SERIES


# ---- search view ------------------------------------------------------------------------------------------------
def search() -> SearchData:
    rows = [{"number": 0, "state": "complete", "params": {"mixer": "ssm", "dim": 16}, "values": [0.6]},
            {"number": 1, "state": "fail", "params": {"mixer": "attention", "dim": 32}, "values": None},
            {"number": 2, "state": "complete", "params": {"mixer": "attention", "dim": 32}, "values": [0.5]},
            {"number": 3, "state": "complete", "params": {"mixer": "ssm", "dim": 64}, "values": [0.7]},
            {"number": 4, "state": "complete", "params": {"mixer": "ssm"}, "values": [0.9]}]  # dim missing
    return SearchData(["val_acc"], ["maximize"], rows, {"dim": 0.25, "mixer": 0.75})


def test_history_data_best_so_far() -> None:
    d = FS.history_data(search())
    assert d["numbers"] == [0, 2, 3, 4] and d["values"] == pytest.approx([60, 50, 70, 90])
    assert d["best"] == pytest.approx([60, 60, 70, 90]) and d["n_failed"] == 1
    minimize = SearchData(["val_loss"], ["minimize"], search().trials)
    assert FS.history_data(minimize)["best"] == pytest.approx([0.6, 0.5, 0.5, 0.5])


def test_parallel_data_encodes_categories() -> None:
    d = FS.parallel_data(search())
    assert d["numbers"] == [0, 2, 3]  # trial 4 lacks `dim`
    dims = {x["label"]: x for x in d["dimensions"]}
    assert dims["dim"]["values"] == [16.0, 32.0, 64.0] and "tickvals" not in dims["dim"]
    assert dims["mixer"]["values"] == [0, 1, 0] and dims["mixer"]["ticktext"] == ["ssm", "attention"]
    assert dims["val_acc (%)"]["values"] == pytest.approx([60, 50, 70])
    assert len(FS.parallel_figure(d).data[0].dimensions) == 3


def test_importance_data_most_important_first() -> None:
    d = FS.importance_data(search())
    assert d["params"] == ["mixer", "dim"] and d["importance"] == [0.75, 0.25]
    assert FS.importance_figure(d).data[0].y == ("dim", "mixer")


def test_search_views_say_what_is_missing_instead_of_bare_axes() -> None:
    empty = SearchData(["val_acc"], ["maximize"], [{"number": 0, "state": "fail", "params": {}, "values": None}],
                       {}, "parameter importance needs at least two finished trials")
    hist = FS.history_figure(FS.history_data(empty))
    assert len(hist.data) == 0 and hist.layout.meta["empty"] == \
        "no finished trial with val_acc in Optuna's records yet (1 failed)"
    par = FS.parallel_figure(FS.parallel_data(empty))
    assert len(par.data) == 0 and par.layout.meta["empty"].startswith("no finished trial with every parameter")
    imp = FS.importance_figure(FS.importance_data(empty))
    assert len(imp.data) == 0 and imp.layout.meta["empty"] == "parameter importance needs at least two finished trials"
    assert imp.layout.title.text == "parameter importance for val_acc (fANOVA)"


def test_empty_figure_escapes_and_wraps() -> None:
    fig = F.empty_figure("x" * 100 + " <b>y</b>", title="<i>t</i>")
    text = fig.layout.annotations[0].text
    assert "<br>" in text and "&lt;b&gt;y&lt;/b&gt;" in text and "<b>" not in text
    assert fig.layout.title.text == "&lt;i&gt;t&lt;/i&gt;" and fig.layout.meta["empty"].endswith("<b>y</b>")


def test_ablation_and_curves_views_without_finished_trials() -> None:
    from types import SimpleNamespace

    from dashboard import views as V

    running = [trial(0, "head", 0, None, state="running"), trial(1, "tail", 0, None, state="failed")]
    data = SimpleNamespace(name="s", config=CONFIG, trials=running, is_grid=True)
    view = V.ablation_view(data)  # type: ignore[arg-type]
    assert len(view.figure.data) == 0 and view.figure.layout.meta["empty"].startswith("no finished trial with val_acc")

    class NoEpochs:
        def epochs(self, trial_id: int) -> list:
            return []
    fig = V.curves_view(NoEpochs(), data)  # type: ignore[arg-type]
    assert len(fig.data) == 0 and fig.layout.meta["empty"].startswith("no epoch with val_acc recorded yet")


# ---- units ----------------------------------------------------------------------------------------------------------
def test_units_by_hand() -> None:
    from dashboard import units as U

    assert U.count(25354) == "25,354" and U.count(None) == "–" and U.count(float("nan")) == "–"
    assert U.throughput(1000.0) == "1,000 images/s" and U.throughput(2000 / 7) == "285.7 images/s"
    assert U.throughput(12345.6) == "12,346 images/s" and U.throughput(0.5) == "0.5 images/s"
    assert U.gflops(1_160_000) == "0.00116 GFLOPs" and U.gflops(4.6e9) == "4.6 GFLOPs"
    assert U.gflops(5e8, "GMACs") == "0.5 GMACs"
    assert U.memory(12.5 * 2**20) == "12.5 MiB" and U.memory(3 * 2**30) == "3 GiB" and U.memory(None) == "–"
    assert U.seconds(2.5) == "2.5 s" and U.seconds(3600) == "3,600 s (60.0 min)" and U.seconds(None) == "–"
    assert U.image_size(64) == "64 × 64 px" and U.image_size("128") == "128 × 128 px"
    assert U.percent(0.78) == "78.00%" and U.percent(None) == "–"
    # the store's device label names the host's card (each Ray worker sees its own as cuda:0); the table keeps that
    assert U.device("cuda:0 = GPU 3 (NVIDIA H200, GPU-1a2b3c4d)") == "GPU 3 (NVIDIA H200)"
    assert U.device("cuda:0 = GPU 0 (NVIDIA H200)") == "GPU 0 (NVIDIA H200)"
    assert U.device("cpu") == "cpu" and U.device(None) == "–"


def test_trials_table_says_which_gpu_each_trial_ran_on() -> None:
    from dataclasses import replace

    from dashboard import views as V
    from dashboard.queries import StudyData

    trials = [replace(trial(0, "head", 0, 0.7), device="cuda:0 = GPU 0 (NVIDIA H200, GPU-aaaa)"),
              replace(trial(1, "middle", 0, 0.8), device="cuda:0 = GPU 1 (NVIDIA H200, GPU-bbbb)"),
              trial(2, "tail", 0, 0.6)]
    rows = V.trial_rows(StudyData("s", None, trials))  # type: ignore[arg-type]
    assert [r["device"] for r in rows] == ["GPU 0 (NVIDIA H200)", "GPU 1 (NVIDIA H200)", "–"]
    assert ("device", "device") in V.TRIAL_COLUMNS


def test_trial_page_costs_have_units() -> None:
    from dataclasses import replace

    from dashboard import views as V

    cost = {"img_size": 32, "params": 25354, "flops": 1_160_000, "macs": 580_000, "throughput": 1000.0,
            "peak_memory_bytes": None, "flops_terms": {"linear": 1}, "batch": 64,
            "by_resolution": {"128": {"throughput": 2000 / 28, "flops": 16_000_000, "peak_memory_bytes": 3 * 2**20},
                              "64": {"throughput": 2000 / 7, "flops": 4_000_000, "peak_memory_bytes": None},
                              "256": {"error": "too large"}}}
    t = replace(trial(0, "head", 0, 0.7, cost=cost, params=25354), wall_seconds=3.25, train_seconds=2.5)
    rows = V.cost_rows(t)
    assert rows == [("parameters", "25,354"), ("image size", "32 × 32 px"), ("FLOPs per image", "0.00116 GFLOPs"),
                    ("MACs per image", "0.00058 GMACs"), ("throughput", "1,000 images/s"),
                    ("peak memory", "– (measured on CUDA only)"),
                    ("wall time (build, train, evaluate, measure)", "3.25 s"), ("training time", "2.5 s"),
                    ("batch", "64"),  # a key we do not know: shown as stored
                    ("at 64 × 64 px", "285.7 images/s · 0.004 GFLOPs"),
                    ("at 128 × 128 px", "71.43 images/s · 0.016 GFLOPs · 3 MiB"), ("at 256 × 256 px", "too large")]
    failed = dict(V.cost_rows(trial(1, "tail", 0, None, state="failed", params=None)))
    assert failed == {"parameters": "–", "FLOPs, throughput, memory": "not measured: costs are measured after "
                      "training, and it failed", "wall time (build, train, evaluate, measure)": "–",
                      "training time": "–"}


# ---- studies list, URLs, escaping --------------------------------------------------------------------------------
def test_studies_table_display() -> None:
    rows = F.studies_table([{"name": "a", "question": None, "kind": "grid", "status": "running", "done": 3,
                             "running": 1, "failed": 2, "cells": 10, "best_val_acc": 0.4567,
                             "updated_at": datetime(2026, 1, 2, 3, 4)}])
    assert rows[0]["best"] == "45.7%" and rows[0]["updated"] == "2026-01-02 03:04" and rows[0]["question"] == ""


@pytest.mark.parametrize("name", ["cls_token_position", "<script>alert(1)</script>", "a/b c?d#e%"])
def test_study_urls_round_trip(name: str) -> None:
    assert parse_path(study_href(name)) == ("study", name, None)
    assert parse_path(study_href(name, 12)) == ("trial", name, 12)
    assert "<" not in study_href(name) and "/" not in study_href(name)[len("/study/"):]


def test_parse_path_other_pages() -> None:
    assert parse_path("/") == ("list", None, None) and parse_path(None) == ("list", None, None)
    assert parse_path("/nope")[0] == "missing" and parse_path("/study/x/trial/y")[0] == "missing"


def test_database_url_is_shown_without_its_password() -> None:
    from dashboard.queries import display_url

    shown = display_url("postgresql+psycopg://nas:s3cret@db.example/nas")
    assert shown == "postgresql+psycopg://nas:***@db.example/nas"
    assert display_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"


def test_spec_summary_escapes_and_survives_bad_json() -> None:
    assert FC.spec_summary("not json") == "(no spec)"
    assert "&lt;" in FC.spec_summary(json.dumps({"mixer": {"name": "<x>"}}))


def test_ablation_rows_carry_the_holm_corrected_interval_and_verdict_by_hand() -> None:
    from scipy.stats import t as student

    rows = {r["level"]: r for r in F.ablation_data(CONFIG, grid_trials()).rows}
    # two comparisons. middle − head = (5, 6, 5) points: mean 16/3, sd 1/√3, t = 16, p = 2·sf(16; 2) → Holm's first
    # step (0.05/2) rejects, so its interval is drawn at 97.5 %; tail − head = (−4, +2): t = −1/3, not rejected,
    # drawn where Holm stopped (0.05/(2 − 1) = 95 %)
    sd = 1 / math.sqrt(3)
    assert rows["middle"]["p_value"] == pytest.approx(2 * student.sf(16, 2), rel=1e-9)
    half = student.ppf(1 - 0.025 / 2, 2) * sd / math.sqrt(3)
    assert (rows["middle"]["diff_adj_low"], rows["middle"]["diff_adj_high"]) == (pytest.approx(16 / 3 - half),
                                                                                  pytest.approx(16 / 3 + half))
    assert rows["middle"]["verdict"] == "better" and rows["tail"]["verdict"] == "no difference detected"
    half = t_critical(1) * 3 * math.sqrt(2) / math.sqrt(2)  # sd of (−4, 2) is 3·√2
    assert rows["tail"]["diff_adj_low"] == pytest.approx(-1 - half) and rows["tail"]["n_pairs"] == 2
    table = {r["level"]: r for r in F.ablation_table_rows(F.ablation_data(CONFIG, grid_trials()))}
    # t(0.9875; 2) = 6.2053, times sd/√3 = 1/3: 16/3 ± 2.068
    assert table["middle"]["diff_ci"] == "[+3.26, +7.40]" and table["tail"]["diff_ci"] == "[-39.12, +37.12]"
    assert table["middle"]["verdict"] == "better" and table["head"]["verdict"] == ""


def test_ablation_axes_stay_inside_the_metric_range() -> None:
    vals = {"head": [0.07, 0.87], "middle": [0.95, 0.99], "tail": [0.02, 0.97]}  # two wild seeds per level
    ts = [trial(i, lv, s, a) for i, (lv, s, a) in enumerate((lv, s, a) for lv, accs in vals.items()
                                                          for s, a in enumerate(accs))]
    d = F.ablation_data(CONFIG, ts)
    for r in d.rows:
        assert 0 <= r["ci_low"] <= r["mean"] <= r["ci_high"] <= 100
        if not r["is_reference"]:
            assert -100 <= r["diff_adj_low"] <= r["diff"] <= r["diff_adj_high"] <= 100
    fig = F.ablation_figure(d)
    ours, paper, delta = fig.layout.yaxis.range, fig.layout.yaxis2.range, fig.layout.yaxis3.range
    assert 0 <= ours[0] < ours[1] <= 100 and 0 <= paper[0] < paper[1] <= 100
    assert -100 <= delta[0] < 0 < delta[1] <= 100
    no_paper = F.ablation_figure(F.ablation_data({**CONFIG, "paper": None}, ts))
    assert 0 <= no_paper.layout.yaxis.range[0] < no_paper.layout.yaxis.range[1] <= 100


def test_axis_fit_moves_before_it_cuts() -> None:
    assert F._fit((90.0, 110.0), (0.0, 100.0)) == (80.0, 100.0)
    assert F._fit((-5.0, 20.0), (0.0, 100.0)) == (0.0, 25.0)
    assert F._fit((-30.0, 150.0), (0.0, 100.0)) == (0.0, 100.0)
    assert F.display_range("val_acc") == (0.0, 100.0) and F.display_range("val_loss") == (-math.inf, math.inf)
