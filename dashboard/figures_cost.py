"""Pure builders of the cost views: the Pareto front of accuracy against a cost (parameters, FLOPs, throughput,
peak memory) with the spec in the hover, and cost scaling against sequence length with MambaOut's long-sequence
threshold L = 6D (../shared/reference/mambaout.md: attention's quadratic term overtakes the linear ones past it).
Rows → data (`*_data`, unit-tested) → figure, as in `figures.py`."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Callable

import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from nas.records import finite
from nas.store import TrialView

from . import units as U
from .figures import DONE, PALETTE, empty_figure, esc, metric_value, scale, scatter

MINIMIZE_METRICS = {"val_loss", "train_loss", "params", "flops", "peak_memory_bytes"}
DARK24 = tuple(qualitative.Dark24)

COSTS: dict[str, tuple[str, str]] = {  # cost key → (name, better direction)
    "params": ("parameters", "min"),
    "flops": ("FLOPs per image", "min"),
    "throughput": ("throughput", "max"),
    "peak_memory_bytes": ("peak memory", "min"),
}


def cost_unit(cost: str, values: list[float]) -> tuple[float, str]:
    """(divisor, unit) a cost is shown in: GFLOPs, images/s, MiB or GiB (by the largest value); counts as is."""
    if cost == "flops":
        return 1e9, "GFLOPs"
    if cost == "throughput":
        return 1.0, "images/s"
    if cost == "peak_memory_bytes":
        return U.memory_unit(max(values, default=0.0))
    return 1.0, ""


# ------------------------------------------------------------------------------------------------ Pareto front
def spec_summary(spec_json: str) -> str:
    """One line naming a spec's main choices (hover text of the Pareto front); escaped."""
    try:
        s = json.loads(spec_json)
    except (TypeError, ValueError):
        return "(no spec)"
    mixer = s.get("mixer") or {}
    route = s.get("route") or {}
    tok = s.get("tokenizer") or {}
    parts = [f"mixer={mixer.get('name')}", f"layout={s.get('layout')}", f"dims={s.get('dims')}",
             f"depths={s.get('depths')}", f"readout={s.get('readout')}", f"tokenizer={tok.get('name')}"
             + (f"({tok['params']['patch_size']})" if "patch_size" in (tok.get("params") or {}) else "")]
    if route:
        parts.insert(1, f"route={'+'.join(map(str, route.get('paths', [])))}/{route.get('schedule')}")
    return esc(", ".join(parts))


def pareto_mask(costs: list[float], values: list[float], cost_better: str = "min",
                value_better: str = "max") -> list[bool]:
    """True for the points no other point beats on both axes (at least as good on both, better on one)."""
    cs = [c if cost_better == "min" else -c for c in costs]
    vs = [-v if value_better == "max" else v for v in values]  # now: smaller is better on both
    order = sorted(range(len(cs)), key=lambda i: (cs[i], vs[i]))
    mask = [False] * len(cs)
    best = math.inf
    for i in order:
        if vs[i] < best:
            mask[i], best = True, vs[i]
    return mask


def pareto_data(trials: list[TrialView], cost: str = "params", metric: str = "val_acc") -> dict[str, Any]:
    """Finished trials as (cost, metric) points with their spec in the hover, the front marked."""
    if cost not in COSTS:
        raise ValueError(f"unknown cost {cost!r}; known: {', '.join(COSTS)}")
    k, unit = scale(metric)
    pts = []
    for t in trials:
        if t.state not in DONE:
            continue
        c = t.num_params if cost == "params" else t.cost.get(cost)
        v = metric_value(t, metric)
        if c is None or v is None:
            continue
        levels = ", ".join(f"{esc(a)}={esc(b)}" for a, b in t.levels.items())
        pts.append({"number": t.number, "cost": float(c), "value": k * v,
                    "hover": f"trial {t.number} · seed {t.seed}<br>{levels}<br>{spec_summary(t.spec_json)}"})
    mask = pareto_mask([p["cost"] for p in pts], [p["value"] for p in pts], COSTS[cost][1],
                       "min" if metric in MINIMIZE_METRICS else "max")
    div, cunit = cost_unit(cost, [p["cost"] for p in pts])
    for p, m in zip(pts, mask):
        p["on_front"], p["cost"] = m, p["cost"] / div
    front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["cost"])
    note = "" if pts else f"no finished trial has both {metric} and {COSTS[cost][0]} recorded yet" + \
        (" (peak memory is measured on CUDA only)" if cost == "peak_memory_bytes" else "")
    label = COSTS[cost][0] + (f" ({cunit})" if cunit else "")
    return {"cost": cost, "cost_label": label, "cost_unit": cunit, "metric": metric, "unit": unit, "points": pts,
            "front": front, "note": note}


def _staircase(cost: str) -> str:
    """The front's steps follow the edge of the dominated region: across then up when lower cost is better, up then
    across when higher is (throughput)."""
    return "hv" if COSTS[cost][1] == "min" else "vh"


def pareto_figure(d: dict[str, Any], title: str = "") -> go.Figure:
    pts = d["points"]
    if not pts:
        return empty_figure(d["note"], title)
    fig = go.Figure()
    hover = f"%{{hovertext}}<br>%{{x:,.4g}} {d['cost_unit']}, %{{y:.4g}}<extra></extra>"
    fig.add_trace(scatter(len(pts))(x=[p["cost"] for p in pts], y=[p["value"] for p in pts], mode="markers",
                             name="trial", marker=dict(size=9, color="rgba(31,119,180,0.5)"),
                             customdata=[[p["number"]] for p in pts], hovertext=[p["hover"] for p in pts],
                             hovertemplate=hover))
    fr = d["front"]
    fig.add_trace(go.Scatter(x=[p["cost"] for p in fr], y=[p["value"] for p in fr], mode="lines+markers",
                             name="Pareto front", line=dict(color="#d62728", shape=_staircase(d["cost"])),
                             marker=dict(size=11, color="#d62728"), customdata=[[p["number"]] for p in fr],
                             hovertext=[p["hover"] for p in fr],
                             hovertemplate=hover))
    fig.update_layout(title=esc(title or d["note"]), xaxis_title=d["cost_label"],
                      yaxis_title=f"{esc(d['metric'])}{d['unit']}", height=460, hovermode="closest")
    fig.update_xaxes(tickformat=",~g")  # 25,354 parameters, not 25.354k
    xs = [p["cost"] for p in pts if p["cost"] > 0]
    if xs and max(xs) / min(xs) > 20:
        fig.update_xaxes(type="log")
    return fig


# ------------------------------------------------------------------------------------------------ cost scaling
MAX_SERIES = 20  # levels drawn in the cost-scaling view (the best by val_acc beyond that); more is unreadable
THRESHOLD_COLOR = "#555"  # MambaOut's L = 6D lines: dashed grey, apart from the levels' solid colours


@dataclass
class ScalingSeries:
    """One level of a grid (or one arm of a search): its trials' costs averaged per image size (over seeds)."""
    label: str  # the level as the legend names it
    mixer: str
    D: int  # first-stage width: MambaOut's threshold is L = 6D
    sizes: list[int]  # image sizes (px), ascending
    L: list[int]  # tokens the first stage mixes at each size
    throughput: list[float]  # images/s
    memory: list[float | None]  # peak bytes (CUDA only; None elsewhere)
    mean_acc: float | None = None


@dataclass
class ScalingData:
    series: list[ScalingSeries]
    thresholds: list[tuple[int, int]]  # (D, L = 6D) per distinct first-stage width
    legend_title: str = "level"
    empty: str = ""  # what is missing when there is nothing to draw
    note: str = ""  # shown under the title (memory not measured, levels left out)


def _sizes(cost: dict[str, Any], spec: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """A trial's measurements by image size: the main one, then `by_resolution` (which wins for the same size)."""
    out: dict[int, dict[str, Any]] = {}
    for size, c in [(cost.get("img_size") or spec.get("img_size"), cost),
                    *(cost.get("by_resolution") or {}).items()]:
        try:
            size = int(size)
        except (TypeError, ValueError):
            continue
        if isinstance(c, dict) and "error" not in c and finite(c.get("throughput")) is not None:
            out[size] = c
    return out


def scaling_data(trials: list[TrialView], seq_len: Callable[[str, int], int | None]) -> ScalingData:
    """Throughput and peak memory against sequence length, one series per level (grid) or arm (search), seeds
    averaged, in the study's order; `seq_len(spec_json, img_size)` gives the tokens a spec's first stage mixes at
    that size. `empty` says what is missing when no level was measured at two or more sizes."""
    done = [t for t in trials if t.state in DONE and t.spec_json]
    if not done:
        return ScalingData([], [], empty="no finished trials yet: cost scaling appears once trials finish")
    groups = _groups(done)
    series = [s for s in (_series(key, g, seq_len) for key, g in groups.items()) if s.sizes]
    if not series:
        return ScalingData([], [], empty="no finished trial has a measured throughput (measuring is skipped when "
                                         "the study sets measure.skip, or it failed)")
    if not any(len(s.sizes) > 1 for s in series):
        return ScalingData([], [], empty="no trials with cost measured at several resolutions yet: list image sizes "
                                         "under measure.resolutions in the study file (for example [32, 64, 128]) "
                                         "and each trial is measured at each")
    notes = []
    if len(series) > MAX_SERIES:
        keep = {id(s) for s in sorted(series, key=lambda s: -(s.mean_acc if s.mean_acc is not None else -1.0))
                [:MAX_SERIES]}
        notes.append(f"showing the {MAX_SERIES} levels with the best val_acc of {len(series)}")
        series = [s for s in series if id(s) in keep]
    if not any(m is not None for s in series for m in s.memory):
        notes.append("peak memory is measured on CUDA only; none recorded for these trials")
    keys = list(dict.fromkeys(k for g in groups.values() for k in g["levels"]))
    _name(series, groups, keys)
    return ScalingData(series, [(D, 6 * D) for D in sorted({s.D for s in series if s.D})],
                       legend_title=", ".join(keys) or "spec", note="; ".join(notes))


def _groups(done: list[TrialView]) -> dict[str, dict[str, Any]]:
    """Finished trials by level (its `k=v` text, or the spec id without levels): throughputs, peak memories and
    accuracies per image size, gathered over seeds."""
    groups: dict[str, dict[str, Any]] = {}
    for t in done:
        try:
            spec = json.loads(t.spec_json)
        except ValueError:
            continue
        key = ", ".join(f"{k}={v}" for k, v in t.levels.items()) or t.spec_id
        g = groups.setdefault(key, {"spec_json": t.spec_json, "mixer": (spec.get("mixer") or {}).get("name", "?"),
                                    "D": int((spec.get("dims") or [0])[0]), "levels": dict(t.levels),
                                    "thr": {}, "mem": {}, "acc": []})
        if t.val_acc is not None:
            g["acc"].append(t.val_acc)
        for size, c in _sizes(t.cost, spec).items():
            g["thr"].setdefault(size, []).append(float(c["throughput"]))
            if finite(c.get("peak_memory_bytes")) is not None:
                g["mem"].setdefault(size, []).append(float(c["peak_memory_bytes"]))
    return groups


def _name(series: list[ScalingSeries], groups: dict[str, dict[str, Any]], keys: list[str]) -> None:
    """Legend names: a one-factor grid's level values (the factor is the legend's title), else `k=v, ...`; the
    mixer in front when the levels mix mixers but do not name them."""
    single = len(keys) == 1 and all(list(g["levels"]) == keys for g in groups.values())
    mixers = len({s.mixer for s in series}) > 1
    for s in series:
        g = groups[s.label]
        text = str(g["levels"][keys[0]]) if single else s.label
        s.label = f"{s.mixer} · {text}" if mixers and "mixer" not in g["levels"] else text


def _series(label: str, g: dict[str, Any], seq_len: Callable[[str, int], int | None]) -> ScalingSeries:
    s = ScalingSeries(label, g["mixer"], g["D"], [], [], [], [],
                      sum(g["acc"]) / len(g["acc"]) if g["acc"] else None)
    for size in sorted(g["thr"]):
        L = seq_len(g["spec_json"], size)
        if L is None:
            continue
        s.sizes.append(size)
        s.L.append(int(L))
        s.throughput.append(sum(g["thr"][size]) / len(g["thr"][size]))
        mem = g["mem"].get(size)
        s.memory.append(sum(mem) / len(mem) if mem else None)
    return s


def level_colors(n: int) -> list[str]:
    """`n` distinct colours: the ten of the other views up to ten levels, Plotly's Dark24 beyond."""
    return list(PALETTE[:n]) if n <= len(PALETTE) else [DARK24[i % len(DARK24)] for i in range(n)]


def _axis(values: list[float], marks: list[float] | None = None) -> dict[str, Any]:
    """Axis settings: logarithmic where the positive values span a factor of ten or more, with ticks at `marks`
    (the measured sequence lengths) when there are few, else at 1-2-5 steps, so the labels are not a clutter of
    minor digits; thousands separated."""
    pos = sorted({v for v in values if v and v > 0})
    if not pos or pos[-1] / pos[0] < 10:
        return dict(type="linear", tickformat=",~g")
    if marks and len(set(marks)) <= 12:
        ticks = sorted(set(marks))
    else:
        lo, hi = math.floor(math.log10(pos[0])), math.ceil(math.log10(pos[-1]))
        ticks = [m * 10**e for e in range(lo, hi + 1) for m in (1, 2, 5) if pos[0] / 1.5 <= m * 10**e <= pos[-1] * 1.5]
    return dict(type="log", tickvals=ticks, tickformat=",~g")


def scaling_figure(d: ScalingData, title: str = "") -> go.Figure:
    """One coloured line per level across sequence lengths: throughput (images/s) and, where measured, peak memory
    (MiB or GiB); axes go logarithmic where the values span a decade. Each threshold L = 6D is a dashed vertical
    trace (a trace, not a shape, so it scales with a log axis and has a legend entry)."""
    head = title or "cost scaling against sequence length (MambaOut's long-sequence threshold: L > 6D)"
    if d.empty:
        return empty_figure(d.empty, head)
    mems = [m for s in d.series for m in s.memory if m is not None]
    div, munit = U.memory_unit(max(mems, default=0.0))
    cols = 2 if mems else 1
    fig = make_subplots(rows=1, cols=cols, horizontal_spacing=0.1,
                        subplot_titles=("throughput", "peak memory") if cols == 2 else None)
    for s, color in zip(d.series, level_colors(len(d.series))):
        common = dict(mode="lines+markers", legendgroup=esc(s.label), name=esc(s.label), customdata=s.sizes,
                      line=dict(color=color, width=2), marker=dict(color=color, size=8))
        hover = f"{esc(s.label)}<br>%{{customdata}} × %{{customdata}} px → L = %{{x:,}} tokens<br>"
        fig.add_trace(go.Scatter(x=s.L, y=s.throughput, hovertemplate=hover + "%{y:,.4g} images/s<extra></extra>",
                                 **common), row=1, col=1)
        pts = [(x, n, m / div) for x, n, m in zip(s.L, s.sizes, s.memory) if m is not None]
        if pts and cols == 2:
            fig.add_trace(go.Scatter(x=[p[0] for p in pts], y=[p[2] for p in pts], showlegend=False,
                                     hovertemplate=hover + f"%{{y:,.4g}} {munit}<extra></extra>",
                                     **{**common, "customdata": [p[1] for p in pts]}), row=1, col=2)
    spans = [[v for s in d.series for v in s.throughput], [m / div for m in mems]]
    for D, L in d.thresholds:  # several widths: each line says its D at its top (the legend would not tell)
        name = f"L = 6D = {L:,} (D = {D})" + (": MambaOut's long-sequence threshold" if len(d.thresholds) == 1 else "")
        for col in range(1, cols + 1):
            ys = spans[col - 1]
            fig.add_trace(go.Scatter(x=[L, L], y=[min(ys) * 0.7, max(ys) * 1.3], name=name, legendgroup=name,
                                     mode="lines+text" if len(d.thresholds) > 1 else "lines", showlegend=col == 1,
                                     text=["", f"D = {D}"], textposition="top center",
                                     textfont=dict(color=THRESHOLD_COLOR, size=11),
                                     line=dict(color=THRESHOLD_COLOR, dash="dash", width=2),
                                     hovertemplate=f"MambaOut: L > 6D = {L:,} is a long sequence<extra></extra>"),
                          row=1, col=col)
    xs = [x for s in d.series for x in s.L] + [L for _, L in d.thresholds]
    fig.update_xaxes(title_text="sequence length L (tokens, first stage)", **_axis(xs, xs))
    fig.update_yaxes(title_text="throughput (images/s)", row=1, col=1, **_axis(spans[0]))
    if cols == 2:
        fig.update_yaxes(title_text=f"peak memory ({munit})", row=1, col=2, **_axis(spans[1]))
    fig.update_layout(title=esc(head) + (f"<br><sub>{esc(d.note)}</sub>" if d.note else ""), height=500,
                      legend=dict(orientation="h", y=-0.2, title_text=f"{esc(d.legend_title)}:"),
                      hovermode="closest", margin=dict(t=90))
    return fig


__all__ = ["COSTS", "MAX_SERIES", "ScalingData", "ScalingSeries", "cost_unit", "level_colors", "pareto_data",
           "pareto_figure", "pareto_mask", "scaling_data", "scaling_figure", "spec_summary"]
