"""Pure builders of the search view from Optuna's trials (plain rows from `queries.search_data`): optimization
history, parallel coordinates and parameter importance, each as data (`*_data`) then figure. Optuna's own
`optuna.visualization` follows the same split; ours works on rows, so it needs no live storage and is unit-tested."""

from __future__ import annotations

import json
import math
from typing import Any

import plotly.graph_objects as go

from .figures import empty_figure, esc, scale
from .queries import SearchData

_MAX_TICKS = 12


def _objective(s: SearchData, index: int) -> tuple[str, str]:
    name = s.objectives[index] if index < len(s.objectives) else f"objective {index}"
    direction = s.directions[index] if index < len(s.directions) else "maximize"
    return name, direction


def _value(t: dict[str, Any], index: int) -> float | None:
    vals = t.get("values")
    if t.get("state") != "complete" or not vals or index >= len(vals) or vals[index] is None:
        return None
    v = float(vals[index])
    return v if math.isfinite(v) else None


def history_data(s: SearchData, index: int = 0) -> dict[str, Any]:
    """Finished trials in order with their objective value and the best so far (by the objective's direction)."""
    name, direction = _objective(s, index)
    k, unit = scale(name)
    numbers, values, best = [], [], []
    cur: float | None = None
    for t in sorted(s.trials, key=lambda t: t["number"]):
        v = _value(t, index)
        if v is None:
            continue
        v *= k
        cur = v if cur is None else (max(cur, v) if direction == "maximize" else min(cur, v))
        numbers.append(t["number"])
        values.append(v)
        best.append(cur)
    n_failed = sum(t["state"] == "fail" for t in s.trials)
    return {"objective": name, "unit": unit, "direction": direction, "numbers": numbers, "values": values,
            "best": best, "n_failed": n_failed}


def history_figure(d: dict[str, Any]) -> go.Figure:
    if not d["numbers"]:
        failed = f" ({d['n_failed']} failed)" if d["n_failed"] else ""
        return empty_figure(f"no finished trial with {d['objective']} in Optuna's records yet{failed}",
                            "optimization history")
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=d["numbers"], y=d["values"], mode="markers", name="trial",
                             customdata=[[n] for n in d["numbers"]],
                             hovertemplate="trial %{x}: %{y:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=d["numbers"], y=d["best"], mode="lines", name=f"best so far ({d['direction']})",
                             line=dict(color="#d62728", shape="hv")))
    fail = f" · {d['n_failed']} failed" if d["n_failed"] else ""
    fig.update_layout(title=f"optimization history: {esc(d['objective'])}{fail}", xaxis_title="trial",
                      yaxis_title=f"{esc(d['objective'])}{d['unit']}", height=400, hovermode="closest")
    return fig


def _key(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def parallel_data(s: SearchData, index: int = 0) -> dict[str, Any]:
    """One axis per parameter (categorical ones numbered in first-seen order, their names as ticks) plus the
    objective; only finished trials that have every parameter (a conditional parameter leaves some out)."""
    name, _ = _objective(s, index)
    k, unit = scale(name)
    rows = [t for t in s.trials if _value(t, index) is not None]
    params = sorted({p for t in rows for p in t["params"]})
    rows = [t for t in rows if all(p in t["params"] for p in params)]
    dims = []
    for p in params:
        vals = [t["params"][p] for t in rows]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            dims.append({"label": p, "values": [float(v) for v in vals]})
        else:
            cats = list(dict.fromkeys(_key(v) for v in vals))
            code = {c: i for i, c in enumerate(cats)}
            step = max(1, math.ceil(len(cats) / _MAX_TICKS))
            dims.append({"label": p, "values": [code[_key(v)] for v in vals],
                         "tickvals": list(range(0, len(cats), step)), "ticktext": cats[::step]})
    objective = [k * _value(t, index) for t in rows]  # type: ignore[operator]
    dims.append({"label": f"{name}{unit}", "values": objective})
    return {"objective": name, "dimensions": dims, "color": objective, "numbers": [t["number"] for t in rows]}


def parallel_figure(d: dict[str, Any]) -> go.Figure:
    if not d["numbers"]:
        return empty_figure("no finished trial with every parameter yet: each one becomes a line across the "
                            "parameters' axes", "parallel coordinates")
    dims = []
    for dim in d["dimensions"]:
        extra = {"tickvals": dim["tickvals"], "ticktext": [esc(t) for t in dim["ticktext"]]} if "tickvals" in dim \
            else {}
        dims.append(dict(label=esc(dim["label"]), values=dim["values"], **extra))
    fig = go.Figure(go.Parcoords(dimensions=dims, line=dict(color=d["color"], colorscale="Viridis",
                                                           showscale=bool(d["color"]))))
    fig.update_layout(title=f"parallel coordinates ({len(d['numbers'])} finished trials)", height=420,
                      margin=dict(l=80, r=80))
    return fig


def importance_data(s: SearchData) -> dict[str, Any]:
    """Parameters by fANOVA importance of the first objective, most important first."""
    items = sorted(s.importances.items(), key=lambda kv: -kv[1])
    return {"params": [k for k, _ in items], "importance": [v for _, v in items], "note": s.importance_note,
            "objective": _objective(s, 0)[0]}


def importance_figure(d: dict[str, Any]) -> go.Figure:
    title = f"parameter importance for {d['objective']} (fANOVA)"
    if not d["params"]:
        return empty_figure(d["note"] or "no parameter importance yet", title)
    fig = go.Figure(go.Bar(x=d["importance"][::-1], y=[esc(p) for p in d["params"][::-1]], orientation="h",
                           hovertemplate="%{y}: %{x:.3f}<extra></extra>", name="importance"))
    fig.update_layout(title=esc(title) + (f"<br><sub>{esc(d['note'])}</sub>" if d["note"] else ""),
                      xaxis_title="importance (normalized)", height=max(260, 60 + 40 * len(d["params"])))
    return fig


__all__ = ["history_data", "history_figure", "importance_data", "importance_figure", "parallel_data",
           "parallel_figure"]
