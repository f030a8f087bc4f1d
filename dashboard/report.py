"""`nas report STUDY -o report.html`: the dashboard's figures for one study as a single static HTML file.

Self-contained: plotly.js is inlined once (about 4.5 MB) and nothing is fetched, so the file opens offline and can be
mailed to someone without the database. Every user string goes through `html.escape`.
"""

from __future__ import annotations

import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio

from . import queries as Q
from . import views as V
from .figures import studies_table
from .figures_cost import COSTS

_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1200px;margin:0 auto;
padding:16px 24px;color:#222}h1{word-break:break-all}table{border-collapse:collapse;margin:8px 0 16px}
th,td{border:1px solid #ddd;padding:4px 10px;text-align:left;font-size:.9rem}th{background:#f0f0f0}
.muted{color:#666}pre{background:#f7f7f7;padding:8px;overflow:auto}section{margin:24px 0}"""


def _e(x: Any) -> str:
    return html.escape("" if x is None else str(x), quote=True)


def _table(rows: list[dict[str, str]], columns: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{_e(t)}</th>" for _, t in columns)
    body = "".join("<tr>" + "".join(f"<td>{_e(r.get(k, ''))}</td>" for k, _ in columns) + "</tr>" for r in rows)
    return f'<table class="grid"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _figure(fig: go.Figure, first: bool, div_id: str) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=first, div_id=div_id,
                       config={"displaylogo": False, "responsive": True})


def report_figures(store: Any, url: str, data: Q.StudyData) -> list[tuple[str, str, go.Figure]]:
    """(section id, heading, figure) in the order the report shows them."""
    out: list[tuple[str, str, go.Figure]] = []
    av = V.ablation_view(data)
    if av is not None:
        out.append(("ablation", "Ablation", av.figure))
    out.append(("curves", "Learning curves", V.curves_view(store, data)))
    hist, par, imp = V.search_views(url, data)
    out += [("history", "Optimization history", hist), ("parallel", "Parallel coordinates", par),
            ("importance", "Parameter importance", imp)]
    for cost in ("params", "throughput"):
        out.append((f"pareto-{cost}", f"Pareto front: accuracy vs {COSTS[cost][0]}", V.pareto_view(data, cost)))
    out.append(("scaling", "Cost scaling", V.scaling_view(data)))
    return out


def build_report(url: str, name: str) -> str:
    """The report's HTML text (StoreError for a missing database or an unknown study)."""
    store = Q.open_store(url)
    data = Q.load_study(store, name)
    info = data.info
    summary = next((r for r in studies_table(Q.study_list(store)) if r["name"] == name), {})
    last = info.runs[-1] if info.runs else None
    meta = [("kind", info.kind), ("status", info.status),
            ("trials", f"{summary.get('done', '?')} done, {summary.get('running', '?')} running, "
                       f"{summary.get('failed', '?')} failed of {info.cells}"),
            ("best val_acc", summary.get("best", "–")), ("runs", str(len(info.runs))),
            ("code version", last.code_version if last else "–"),
            ("hardware", ", ".join(f"{k}={v}" for k, v in (last.hardware if last else {}).items()) or "–"),
            ("last update", Q.as_text(info.updated_at))]
    parts = [f"<h1>{_e(name)}</h1>", f'<p class="muted">{_e(info.question)}</p>',
             _table([{"k": k, "v": v} for k, v in meta], [("k", ""), ("v", "")])]
    av = V.ablation_view(data)
    if av is not None:
        parts.append("<section><h2>Ablation table</h2>" + _table(av.table, av.data.columns) +
                     f'<p class="muted">{_e(av.data.note)}</p>' +
                     (f'<p class="muted">paper: {_e(av.data.paper_source)} ({_e(av.data.paper_metric)}). Compare '
                      "the ordering and the gaps, not the values.</p>" if av.data.paper_source else "") + "</section>")
    for i, (sid, heading, fig) in enumerate(report_figures(store, url, data)):
        parts.append(f'<section id="{sid}"><h2>{_e(heading)}</h2>{_figure(fig, i == 0, f"fig-{sid}")}</section>')
    trials = [{"n": str(t.number), "levels": ", ".join(f"{k}={v}" for k, v in t.levels.items()),
               "seed": str(t.seed), "state": t.state, "acc": "–" if t.val_acc is None else f"{100 * t.val_acc:.2f}%",
               "params": "–" if t.num_params is None else f"{t.num_params:,}", "spec": t.spec_id,
               "error": (t.error or "").splitlines()[0][:160] if t.error else ""} for t in data.trials]
    parts.append("<section><h2>Trials</h2>" + _table(trials, [("n", "trial"), ("levels", "levels"),
                                                              ("seed", "seed"), ("state", "state"),
                                                              ("acc", "val_acc"), ("params", "params"),
                                                              ("spec", "spec id"), ("error", "error")]) + "</section>")
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts.append(f'<p class="muted">Generated by <code>nas report</code> at {stamp}.</p>')
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(name)}: study report</title>'
            f"<style>{_CSS}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")


def write_report(url: str, name: str, out: Path) -> Path:
    """Write the report atomically (a half-written file never replaces a good one)."""
    text = build_report(url, name)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["build_report", "report_figures", "write_report"]
