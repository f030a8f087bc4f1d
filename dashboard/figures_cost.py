"""Pure builders of the cost views: the Pareto front of accuracy against a cost (parameters, FLOPs, throughput,
peak memory) with the spec in the hover, and cost scaling against sequence length with MambaOut's long-sequence
threshold L = 6D (../shared/reference/mambaout.md: attention's quadratic term overtakes the linear ones past it).
Rows → data (`*_data`, unit-tested) → figure, as in `figures.py`."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from nas.store import TrialView

from .figures import DONE, PALETTE, esc, metric_value, scale

MINIMIZE_METRICS = {"val_loss", "train_loss", "params", "flops", "peak_memory_bytes"}
DASHES = ("solid", "dash", "dot", "dashdot", "longdash")

COSTS: dict[str, tuple[str, str]] = {  # cost key → (axis title, better direction)
    "params": ("parameters", "min"),
    "flops": ("FLOPs per image", "min"),
    "throughput": ("throughput (images/s)", "max"),
    "peak_memory_bytes": ("peak memory (bytes)", "min"),
}


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
    for p, m in zip(pts, mask):
        p["on_front"] = m
    front = sorted((p for p in pts if p["on_front"]), key=lambda p: p["cost"])
    note = "" if pts else f"no finished trial has both {metric} and {cost} recorded" + \
        (" (peak memory is measured on CUDA only)" if cost == "peak_memory_bytes" else "")
    return {"cost": cost, "cost_label": COSTS[cost][0], "metric": metric, "unit": unit, "points": pts,
            "front": front, "note": note}


def _staircase(cost: str) -> str:
    """The front's steps follow the edge of the dominated region: across then up when lower cost is better, up then
    across when higher is (throughput)."""
    return "hv" if COSTS[cost][1] == "min" else "vh"


def pareto_figure(d: dict[str, Any], title: str = "") -> go.Figure:
    fig = go.Figure()
    pts = d["points"]
    fig.add_trace(go.Scatter(x=[p["cost"] for p in pts], y=[p["value"] for p in pts], mode="markers",
                             name="trial", marker=dict(size=9, color="rgba(31,119,180,0.5)"),
                             customdata=[[p["number"]] for p in pts], hovertext=[p["hover"] for p in pts],
                             hovertemplate="%{hovertext}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    fr = d["front"]
    fig.add_trace(go.Scatter(x=[p["cost"] for p in fr], y=[p["value"] for p in fr], mode="lines+markers",
                             name="Pareto front", line=dict(color="#d62728", shape=_staircase(d["cost"])),
                             marker=dict(size=11, color="#d62728"), customdata=[[p["number"]] for p in fr],
                             hovertext=[p["hover"] for p in fr],
                             hovertemplate="%{hovertext}<br>%{x:.4g}, %{y:.4g}<extra></extra>"))
    fig.update_layout(title=esc(title or d["note"]), xaxis_title=d["cost_label"],
                      yaxis_title=f"{esc(d['metric'])}{d['unit']}", height=460, hovermode="closest")
    xs = [p["cost"] for p in pts if p["cost"] > 0]
    if xs and max(xs) / min(xs) > 20:
        fig.update_xaxes(type="log")
    return fig


# ------------------------------------------------------------------------------------------------ cost scaling
def scaling_data(trials: list[TrialView], seq_len: Callable[[str, int], int | None]) -> dict[str, Any]:
    """Throughput and peak memory against sequence length, one series per spec (seeds averaged), coloured by
    mixer; each distinct first-stage width D gives MambaOut's long-sequence threshold L = 6D. `seq_len(spec_json,
    img_size)` gives the tokens a spec's first stage mixes at that size."""
    acc: dict[tuple[str, int], dict[str, Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for t in trials:
        if t.state not in DONE or not t.spec_json:
            continue
        spec = json.loads(t.spec_json)
        meta[t.spec_id] = {"mixer": (spec.get("mixer") or {}).get("name", "?"), "D": (spec.get("dims") or [0])[0],
                           "spec_json": t.spec_json, "levels": t.levels}
        entries = [(t.cost.get("img_size") or spec.get("img_size"), t.cost)]
        entries += [(size, c) for size, c in (t.cost.get("by_resolution") or {}).items()]
        for size, c in entries:
            if size is None or not isinstance(c, dict) or "error" in c or c.get("throughput") is None:
                continue
            a = acc.setdefault((t.spec_id, int(size)), {"thr": [], "mem": []})
            a["thr"].append(float(c["throughput"]))
            if c.get("peak_memory_bytes") is not None:
                a["mem"].append(float(c["peak_memory_bytes"]))
    series: dict[str, dict[str, Any]] = {}
    for (sid, size), a in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        L = seq_len(meta[sid]["spec_json"], size)
        if L is None:
            continue
        s = series.setdefault(sid, {"spec_id": sid, "mixer": meta[sid]["mixer"], "D": meta[sid]["D"],
                                    "label": f"{meta[sid]['mixer']} · " + (", ".join(
                                        f"{k}={v}" for k, v in meta[sid]["levels"].items()) or sid),
                                    "sizes": [], "L": [], "throughput": [], "memory": []})
        s["sizes"].append(size)
        s["L"].append(L)
        s["throughput"].append(sum(a["thr"]) / len(a["thr"]))
        s["memory"].append(sum(a["mem"]) / len(a["mem"]) if a["mem"] else None)
    out = sorted(series.values(), key=lambda s: (s["mixer"], s["label"]))
    dims = sorted({s["D"] for s in out if s["D"]})
    has_mem = any(m is not None for s in out for m in s["memory"])
    return {"series": out, "thresholds": [{"D": D, "L": 6 * D} for D in dims],
            "note": "" if has_mem else "peak memory is measured on CUDA only; none recorded for these trials"}


def scaling_figure(d: dict[str, Any], title: str = "") -> go.Figure:
    """Throughput (and, where measured, peak memory) against L on log axes; each threshold L = 6D is a dashed
    vertical trace (a trace, not a shape, so it scales with the log axis and has a legend entry)."""
    has_mem = not d["note"]
    cols = 2 if has_mem else 1
    fig = make_subplots(rows=1, cols=cols, horizontal_spacing=0.1,
                        subplot_titles=("throughput vs sequence length",
                                        "peak memory vs sequence length")[:cols])
    mixers = list(dict.fromkeys(s["mixer"] for s in d["series"]))
    color = {m: PALETTE[i % len(PALETTE)] for i, m in enumerate(mixers)}
    nth: dict[str, int] = {}
    for s in d["series"]:
        i = nth[s["mixer"]] = nth.get(s["mixer"], -1) + 1
        common = dict(mode="lines+markers", legendgroup=esc(s["label"]), name=esc(s["label"]),
                      line=dict(color=color[s["mixer"]], dash=DASHES[i % len(DASHES)]))
        fig.add_trace(go.Scatter(x=s["L"], y=s["throughput"], customdata=s["sizes"], **common,
                                 hovertemplate=f"{esc(s['label'])}<br>%{{customdata}}² → L=%{{x}}<br>"
                                               "%{y:.4g} images/s<extra></extra>"), row=1, col=1)
        mem = [(x, y) for x, y in zip(s["L"], s["memory"]) if y is not None]
        if mem and has_mem:
            fig.add_trace(go.Scatter(x=[m[0] for m in mem], y=[m[1] / 2**20 for m in mem], showlegend=False,
                                     **common, hovertemplate=f"{esc(s['label'])}<br>L=%{{x}}: %{{y:.1f}} MiB"
                                                             "<extra></extra>"), row=1, col=2)
    spans = [[v for s in d["series"] for v in s["throughput"]],
             [v / 2**20 for s in d["series"] for v in s["memory"] if v is not None]]
    for th in d["thresholds"]:
        name = f"L = 6D = {th['L']} (D = {th['D']}): long-sequence threshold"
        for col in range(1, cols + 1):
            ys = spans[col - 1] or [1.0]
            fig.add_trace(go.Scatter(x=[th["L"], th["L"]], y=[min(ys) * 0.7, max(ys) * 1.3], mode="lines",
                                     name=name, legendgroup=name, showlegend=col == 1,
                                     line=dict(color="#d62728", dash="dash", width=2),
                                     hovertemplate=f"MambaOut: L > 6D = {th['L']} is a long sequence<extra></extra>"),
                          row=1, col=col)
    fig.update_xaxes(type="log", title_text="sequence length L (tokens, first stage)")
    fig.update_yaxes(title_text="images/s", type="log", row=1, col=1)
    if has_mem:
        fig.update_yaxes(title_text="MiB", row=1, col=2)
    head = esc(title) or "cost scaling (MambaOut's long-sequence threshold: L > 6D)"
    fig.update_layout(title=head + (f"<br><sub>{esc(d['note'])}</sub>" if d["note"] else ""), height=460,
                      legend=dict(orientation="h", y=-0.25), hovermode="closest")
    return fig


__all__ = ["COSTS", "pareto_data", "pareto_figure", "pareto_mask", "scaling_data", "scaling_figure", "spec_summary"]
