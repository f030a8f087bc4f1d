"""Pure figure builders for the study views: rows → data (`*_data`, unit-tested) → Plotly figure (`*_figure`).

Nothing here reads a database or a file. Strings that come from users (study names, levels, spec fields) are
escaped before they reach a figure: Plotly renders a subset of HTML in titles and hover text.
Search-view builders (history, parallel coordinates, importance) live in `figures_search.py`, cost views (Pareto
front, cost scaling) in `figures_cost.py`.
"""

from __future__ import annotations

import html
import math
import textwrap
from dataclasses import dataclass, field
from typing import Any, Iterable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nas.stats import metric_kind
from nas.store import TrialView
from nas.summary import ablation_summary, display_columns, display_rows, method_note

DONE = ("complete", "stopped")
AUTO_POINTS = 5000  # above this many seeds the ablation view shows each level's density; its points on demand
WEBGL_POINTS = 5000  # above this many points a scatter is drawn with WebGL (SVG markers stall the browser)
DENSITY_BINS = 40
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


def esc(text: Any) -> str:
    """A user string made safe for Plotly's HTML-like text (titles, hover, ticks)."""
    return html.escape(str(text), quote=True)


def scale(metric: str) -> tuple[float, str]:
    """Accuracy is shown in percent; everything else as stored (`nas.stats.metric_kind`)."""
    kind = metric_kind(metric)
    return kind.scale, kind.unit


def display_range(metric: str) -> tuple[float, float]:
    """The metric's feasible range in display units (accuracy: 0–100): no axis of ours runs past it."""
    kind = metric_kind(metric)
    return kind.scale * kind.low, kind.scale * kind.high


def metric_value(t: TrialView, metric: str) -> float | None:
    v = t.val_acc if metric == "val_acc" else t.row().get(metric)
    if v is None and metric in t.cost:
        v = t.cost[metric]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def level_label(levels: dict[str, str], factors: list[str]) -> str:
    """The same label `nas.summary` gives a level (one factor: its value; several: `f=v, g=w`)."""
    return str(levels[factors[0]]) if len(factors) == 1 else ", ".join(f"{f}={levels[f]}" for f in factors)


def latest_attempts(trials: Iterable[TrialView]) -> list[TrialView]:
    """One attempt per cell key: a finished one if any, else the latest (as the ablation table counts them)."""
    latest: dict[str, TrialView] = {}
    for t in trials:
        if t.state in DONE or t.key not in latest or latest[t.key].state not in DONE:
            latest[t.key] = t
    return list(latest.values())


def _nan_to_none(x: float | None) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else x


def empty_figure(message: str, title: str = "", height: int = 240) -> go.Figure:
    """A figure that says what is missing (no finished trial yet, not measured, still loading) instead of bare
    axes; the message is also kept as `layout.meta.empty`, so tests and callers can tell it from a drawn view."""
    text = "<br>".join(esc(line) for line in textwrap.wrap(message, 90)) or "&nbsp;"
    fig = go.Figure()
    fig.update_layout(title=esc(title) or None, height=height, xaxis=dict(visible=False), yaxis=dict(visible=False),
                      plot_bgcolor="rgba(0,0,0,0)", meta={"empty": message},
                      annotations=[dict(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5,
                                        font=dict(size=15, color="#555"))])
    return fig


# ----------------------------------------------------------------------------------------------- studies list
def studies_table(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The studies list as display strings (done / running / failed, best accuracy in %, last update)."""
    out = []
    for r in rows:
        best = r.get("best_val_acc")
        upd = r.get("updated_at")
        out.append({"name": str(r["name"]), "question": str(r.get("question") or ""), "kind": str(r["kind"]),
                    "status": str(r["status"]), "done": str(r["done"]), "running": str(r["running"]),
                    "failed": str(r["failed"]), "cells": str(r["cells"]),
                    "best": "–" if best is None else f"{100 * best:.1f}%",
                    "updated": upd.strftime("%Y-%m-%d %H:%M") if hasattr(upd, "strftime") else str(upd or "")})
    return out


# --------------------------------------------------------------------------------------------------- ablation
@dataclass
class AblationData:
    factor: str
    metric: str
    unit: str
    reference: str
    levels: list[str]
    points: list[dict[str, Any]]  # one per finished seed: level, seed, value (scaled), number
    rows: list[dict[str, Any]]  # per level: n, mean, ci_*, diff, diff_adj_*, verdict, mde, paper, ... (scaled)
    paper_metric: str = ""
    paper_source: str = ""
    columns: list[tuple[str, str]] = field(default_factory=list)  # the table's (key, title), as `nas show`
    table: list[dict[str, str]] = field(default_factory=list)  # the table's display strings
    note: str = ""  # how the numbers were made (printed under the table)


def ablation_levels(config: dict[str, Any], trials: list[TrialView]) -> list[str]:
    """Level labels present in the trials, in the study's order (for the reference picker)."""
    factors = list(config.get("factors") or {})
    seen = [level_label(t.levels, factors) for t in trials if all(f in t.levels for f in factors)]
    return list(dict.fromkeys(seen))


_SCALED = ("mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "diff_adj_low", "diff_adj_high", "mde")


def ablation_data(config: dict[str, Any], trials: list[TrialView], metric: str = "val_acc",
                  reference: str | None = None) -> AblationData:
    """Every seed as a point, per-level mean with its interval, the paired difference against `reference` (default:
    the study's) with its Holm-corrected interval and verdict, and the paper's value beside ours:
    `nas.summary.ablation_summary` does the numbers, the table's strings are `nas.summary.display_rows`."""
    factors = list(config.get("factors") or {})
    cfg = dict(config)
    if reference is not None:
        match = next((t.levels for t in trials if all(f in t.levels for f in factors)
                      and level_label(t.levels, factors) == reference), None)
        if match is not None:
            cfg["reference"] = {f: match[f] for f in factors}
    summ = ablation_summary(cfg, trials, metric)
    k, unit = scale(metric)
    points = []
    for t in latest_attempts(trials):
        v = metric_value(t, metric) if t.state in DONE else None
        if v is not None and all(f in t.levels for f in factors):
            points.append({"level": level_label(t.levels, factors), "seed": t.seed, "value": k * v,
                           "number": t.number})
    rows = []
    for r in summ.rows:
        row = {key: getattr(r, key) for key in ("level", "n", "n_failed", "n_pairs", "p_value", "verdict", "paper",
                                               "paper_diff", "is_reference", "opposite_to_paper")}
        row.update({key: None if _nan_to_none(getattr(r, key)) is None else k * getattr(r, key) for key in _SCALED})
        rows.append(row)
    paper = config.get("paper") or {}
    return AblationData(summ.factor, metric, unit, summ.reference, [r["level"] for r in rows], points, rows,
                        str(paper.get("metric") or ""), str(paper.get("source") or ""), display_columns(summ),
                        display_rows(summ, digits=2), method_note(summ))


def _jitter(seed: int) -> float:
    return ((seed * 0.618034) % 1.0 - 0.5) * 0.24  # deterministic spread, so seeds do not hide each other


def seed_density(d: AblationData, bins: int = DENSITY_BINS) -> dict[str, Any]:
    """Where each level's seeds fall: counts in `bins` equal bins of the metric over all levels' range (the
    aggregate the ablation view draws instead of one point per seed in a large study)."""
    values = [p["value"] for p in d.points]
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    width = (hi - lo) / bins or 1.0
    pos = {lv: i for i, lv in enumerate(d.levels)}
    counts = [[0] * len(d.levels) for _ in range(bins)]  # z[bin][level], as a heatmap takes it
    for p in d.points:
        if p["level"] in pos:
            counts[min(bins - 1, int((p["value"] - lo) / width))][pos[p["level"]]] += 1
    return {"x": list(range(len(d.levels))), "y": [lo + (i + 0.5) * width for i in range(bins)], "z": counts,
            "edges": [lo + i * width for i in range(bins + 1)], "levels": list(d.levels)}


def scatter(n: int) -> Any:
    """The scatter trace type for `n` points: SVG up to WEBGL_POINTS, WebGL above."""
    return go.Scatter if n <= WEBGL_POINTS else go.Scattergl


def ablation_figure(d: AblationData, title: str = "", points: bool | None = None) -> go.Figure:
    """Left: every seed (or, for more than AUTO_POINTS seeds unless `points`, each level's density of seeds),
    mean ± interval, the paper on its own axis. Right: our Δ with its Holm-corrected interval (the one the verdict
    rests on) beside the paper's Δ. No axis of ours leaves the metric's range."""
    has_paper = any(r["paper"] is not None for r in d.rows)
    show = len(d.points) <= AUTO_POINTS if points is None else points
    fig = make_subplots(rows=1, cols=2, column_widths=[0.58, 0.42], horizontal_spacing=0.12,
                        specs=[[{"secondary_y": has_paper}, {}]],
                        subplot_titles=(f"{esc(d.metric)}{d.unit} per {esc(d.factor)}: "
                                        f"{'seeds' if show else f'density of {len(d.points):,} seeds'}, "
                                        "mean ± 95% CI",
                                        f"paired Δ vs {esc(d.reference)}, Holm-corrected" +
                                        (" (ours vs paper)" if has_paper else "")))
    pos = {lv: i for i, lv in enumerate(d.levels)}
    pts = [p for p in d.points if p["level"] in pos]
    if show:
        trace = scatter(len(pts))
        fig.add_trace(trace(
            x=[pos[p["level"]] - 0.15 + _jitter(p["seed"]) for p in pts], y=[p["value"] for p in pts],
            mode="markers", name="seed (click: trial)", marker=dict(size=9 if trace is go.Scatter else 5,
                                                                    color="rgba(31,119,180,0.55)", line=dict(width=1)),
            customdata=[[p["number"], p["seed"], esc(p["level"])] for p in pts],
            hovertemplate="%{customdata[2]}<br>seed %{customdata[1]} · trial %{customdata[0]}<br>%{y:.4g}"
                          "<extra></extra>", **({"cliponaxis": False} if trace is go.Scatter else {})),
            row=1, col=1)
    else:
        dens = seed_density(d)
        fig.add_trace(go.Heatmap(
            x=[x - 0.15 for x in dens["x"]], y=dens["y"], z=dens["z"], colorscale="Blues", showscale=False, xgap=4,
            name="seeds per bin", customdata=[[esc(lv) for lv in dens["levels"]]] * len(dens["y"]),
            hovertemplate="%{customdata}<br>%{z} seeds near %{y:.4g}<extra></extra>"), row=1, col=1)
    rows = [r for r in d.rows if r["mean"] is not None]
    fig.add_trace(go.Scatter(
        x=[pos[r["level"]] + 0.1 for r in rows], y=[r["mean"] for r in rows], mode="markers", name="mean ± 95% CI",
        marker=dict(size=13, symbol="line-ew-open", color="#000", line=dict(width=3)), cliponaxis=False,
        error_y=dict(type="data", symmetric=False, array=[_up(r["ci_high"], r["mean"]) for r in rows],
                     arrayminus=[_up(r["mean"], r["ci_low"]) for r in rows], thickness=2, width=6),
        hovertemplate="mean %{y:.4g}<extra></extra>"), row=1, col=1)
    lo, hi = _fit(_span([p["value"] for p in pts] + [r[k] for r in rows for k in ("ci_low", "ci_high")
                                                      if r[k] is not None]), display_range(d.metric))
    fig.update_yaxes(range=[lo, hi], row=1, col=1, secondary_y=False)
    if has_paper:
        prs = [r for r in d.rows if r["paper"] is not None]
        fig.add_trace(go.Scatter(x=[pos[r["level"]] + 0.3 for r in prs], y=[r["paper"] for r in prs],
                                 mode="markers", name=f"paper: {esc(d.paper_metric) or 'published'}",
                                 marker=dict(size=11, symbol="diamond", color="#d62728"), cliponaxis=False,
                                 hovertemplate="paper %{y}<extra></extra>"), row=1, col=1, secondary_y=True)
        pv = [r["paper"] for r in prs]
        mid, half = (min(pv) + max(pv)) / 2, max((hi - lo) / 2, (max(pv) - min(pv)) / 2 * 1.1)
        # both axes span the same number of points (as far as our range allows), so a gap looks the same size
        lo, hi = _fit(((lo + hi) / 2 - half, (lo + hi) / 2 + half), display_range(d.metric))
        half = (hi - lo) / 2
        fig.update_yaxes(range=[lo, hi], secondary_y=False, row=1, col=1)
        paper_lo, paper_hi = _fit((mid - half, mid + half), display_range(d.metric))  # the papers' are accuracies
        fig.update_yaxes(title_text=f"paper: {esc(d.paper_metric)}", secondary_y=True, row=1, col=1,
                         showgrid=False, color="#d62728", range=[paper_lo, paper_hi])
    _delta_panel(fig, d, has_paper)
    fig.update_xaxes(tickvals=list(range(len(d.levels))), ticktext=[esc(x) for x in d.levels], row=1, col=1)
    fig.update_yaxes(title_text=f"ours: {esc(d.metric)}{d.unit}", row=1, col=1, secondary_y=False)
    fig.update_layout(title=esc(title), legend=dict(orientation="h", y=-0.15), margin=dict(t=80), height=480,
                      hovermode="closest", clickmode="event")
    return fig


def _delta_panel(fig: go.Figure, d: AblationData, has_paper: bool) -> None:
    others = [r for r in d.rows if not r["is_reference"]]
    dpos = {r["level"]: i for i, r in enumerate(others)}
    ours = [r for r in others if r["diff"] is not None]
    fig.add_trace(go.Scatter(
        x=[dpos[r["level"]] - 0.1 for r in ours], y=[r["diff"] for r in ours], mode="markers", cliponaxis=False,
        name="ours: Δ ± Holm-corrected CI (matched seeds)", marker=dict(size=10, color="#1f77b4"),
        error_y=dict(type="data", symmetric=False, array=[_up(r["diff_adj_high"], r["diff"]) for r in ours],
                     arrayminus=[_up(r["diff"], r["diff_adj_low"]) for r in ours]),
        customdata=[[esc(r["verdict"] + (" (opposite to paper)" if r["opposite_to_paper"] else "")), r["n_pairs"]]
                    for r in ours],
        hovertemplate="Δ %{y:.4g} on %{customdata[1]} pairs<br>%{customdata[0]}<extra></extra>"), row=1, col=2)
    values = [v for r in ours for v in (r["diff"], r["diff_adj_low"], r["diff_adj_high"]) if v is not None]
    if has_paper:
        pd = [r for r in others if r["paper_diff"] is not None]
        fig.add_trace(go.Scatter(x=[dpos[r["level"]] + 0.1 for r in pd], y=[r["paper_diff"] for r in pd],
                                 mode="markers", name="paper: Δ", marker=dict(size=11, symbol="diamond",
                                                                               color="#d62728"),
                                 hovertemplate="paper Δ %{y:+.1f}<extra></extra>"), row=1, col=2)
        values += [r["paper_diff"] for r in pd]
    low, high = display_range(d.metric)
    fig.add_hline(y=0, line=dict(color="#888", dash="dot"), row=1, col=2)
    fig.update_xaxes(tickvals=list(range(len(others))), ticktext=[esc(r["level"]) for r in others], row=1, col=2)
    fig.update_yaxes(title_text="Δ (points)" if d.unit else "Δ", row=1, col=2,
                     range=list(_fit(_span(values + [0.0]), (low - high, high - low))))


def _span(values: list[float]) -> tuple[float, float]:
    """The data's range with 8% margins."""
    if not values:
        return 0.0, 1.0
    lo, hi = min(values), max(values)
    pad = max(hi - lo, 1e-9) * 0.08
    return lo - pad, hi + pad


def _fit(span: tuple[float, float], bounds: tuple[float, float]) -> tuple[float, float]:
    """`span` moved (not shrunk) inside `bounds` where it fits, else cut to them."""
    lo, hi = span
    if hi - lo >= bounds[1] - bounds[0]:
        return max(lo, bounds[0]), min(hi, bounds[1])
    shift = max(bounds[0] - lo, 0.0) + min(bounds[1] - hi, 0.0)
    return lo + shift, hi + shift


def _up(a: float | None, b: float | None) -> float:
    return 0.0 if a is None or b is None else max(0.0, a - b)


def ablation_table_rows(d: AblationData) -> list[dict[str, str]]:
    """The ablation table as display strings (the same columns as `nas show`, two decimals)."""
    return d.table


# ---------------------------------------------------------------------------------------------- learning curves
@dataclass
class CurvesData:
    metric: str
    unit: str
    series: list[dict[str, Any]]  # one per trial: label (its level), number, seed, epochs, values
    means: list[dict[str, Any]] = field(default_factory=list)  # one per level: label, epochs, values


def curves_data(trials: list[TrialView], epochs: dict[int, list[dict[str, Any]]], metric: str = "val_acc",
                factors: list[str] | None = None) -> CurvesData:
    """Per trial, `metric` against epoch; per level (grid studies), the mean over the trials that reached the
    epoch (running or finished; failed ones are left out of the mean)."""
    k, unit = scale(metric)
    series = []
    for t in trials:
        pts = [(e["epoch"], e.get(metric)) for e in epochs.get(t.id, []) if e.get(metric) is not None]
        if not pts:
            continue
        label = level_label(t.levels, factors) if factors and all(f in t.levels for f in factors) \
            else f"trial {t.number}"
        series.append({"label": label, "number": t.number, "seed": t.seed, "state": t.state,
                       "epochs": [p[0] for p in pts], "values": [k * p[1] for p in pts]})
    means = []
    if factors:
        by_level: dict[str, dict[int, list[float]]] = {}
        for s in series:
            if s["state"] in ("failed", "stale"):
                continue  # drawn thin, but a crashed run's partial curve would drag the level's mean down
            for e, v in zip(s["epochs"], s["values"]):
                by_level.setdefault(s["label"], {}).setdefault(e, []).append(v)
        for label, per_epoch in by_level.items():
            es = sorted(per_epoch)
            means.append({"label": label, "epochs": es, "values": [sum(per_epoch[e]) / len(per_epoch[e])
                                                                   for e in es]})
    return CurvesData(metric, unit, series, means)


def curves_figure(d: CurvesData, title: str = "") -> go.Figure:
    fig = go.Figure()
    labels = list(dict.fromkeys(s["label"] for s in d.series))
    color = {lb: PALETTE[i % len(PALETTE)] for i, lb in enumerate(labels)}
    thin = bool(d.means)
    for s in d.series:
        fig.add_trace(go.Scatter(
            x=s["epochs"], y=s["values"], mode="lines+markers", legendgroup=esc(s["label"]),
            name=f"trial {s['number']} (seed {s['seed']})" if not thin else esc(s["label"]), showlegend=not thin,
            line=dict(color=color[s["label"]], width=1 if thin else 2), opacity=0.45 if thin else 1,
            hovertemplate=f"{esc(s['label'])} · trial {s['number']} · seed {s['seed']}<br>epoch %{{x}}: %{{y:.4g}}"
                          "<extra></extra>"))
    for m in d.means:
        fig.add_trace(go.Scatter(x=m["epochs"], y=m["values"], mode="lines", name=f"{esc(m['label'])} (mean)",
                                 legendgroup=esc(m["label"]), line=dict(color=color[m["label"]], width=3),
                                 hovertemplate=f"{esc(m['label'])} mean<br>epoch %{{x}}: %{{y:.4g}}<extra></extra>"))
    fig.update_layout(title=esc(title), xaxis_title="epoch", yaxis_title=f"{esc(d.metric)}{d.unit}", height=420,
                      hovermode="closest", xaxis=dict(tickformat="d", dtick=1 if _max_epoch(d) <= 20 else None))
    return fig


def _max_epoch(d: CurvesData) -> int:
    return max((e for s in d.series for e in s["epochs"]), default=0)


__all__ = ["AUTO_POINTS", "DONE", "PALETTE", "WEBGL_POINTS", "AblationData", "CurvesData", "ablation_data",
           "ablation_figure", "ablation_levels", "ablation_table_rows", "curves_data", "curves_figure",
           "display_range", "empty_figure", "esc", "latest_attempts", "level_label", "metric_value", "scale",
           "scatter", "seed_density", "studies_table"]
