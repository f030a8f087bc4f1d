"""Each view of a study as queries → data → figure, shared by the Dash app and `nas report` (so both show the same
figures). Functions here take an open read-only store or the loaded `StudyData`; they return figures and display
rows, never components."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from . import figures as F
from . import figures_cost as FC
from . import figures_search as FS
from .queries import StudyData, epochs_by_trial, model_file, run_of, search_data, sequence_length

MAX_CURVES = 200  # learning curves drawn per view (the latest trials); the ablation view itself has no limit


@dataclass
class AblationView:
    figure: go.Figure
    table: list[dict[str, str]]
    data: F.AblationData


def ablation_view(data: StudyData, metric: str = "val_acc", reference: str | None = None) -> AblationView | None:
    """None for a search study (no factors)."""
    if not data.is_grid:
        return None
    d = F.ablation_data(data.config, data.trials, metric, reference)
    q = data.config.get("question") or ""
    return AblationView(F.ablation_figure(d, title=f"{data.name}: {q}"), F.ablation_table_rows(d), d)


def curves_view(store: Any, data: StudyData, metric: str = "val_acc") -> go.Figure:
    trials = F.latest_attempts(data.trials)[-MAX_CURVES:]
    factors = list(data.config.get("factors") or {}) or None
    d = F.curves_data(trials, epochs_by_trial(store, [t.id for t in trials]), metric, factors)
    return F.curves_figure(d, title=f"learning curves: {metric}" + (" (thin: one trial; thick: mean per level)"
                                                                    if factors else ""))


def search_views(url: str, data: StudyData) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Optimization history, parallel coordinates, parameter importance (from Optuna's tables)."""
    s = search_data(url, data)
    return (FS.history_figure(FS.history_data(s)), FS.parallel_figure(FS.parallel_data(s)),
            FS.importance_figure(FS.importance_data(s)))


def pareto_view(data: StudyData, cost: str = "params", metric: str = "val_acc") -> go.Figure:
    d = FC.pareto_data(data.trials, cost, metric)
    return FC.pareto_figure(d, title=f"Pareto front: {metric} vs {FC.COSTS[cost][0]}" +
                           (f" — {d['note']}" if d["note"] else ""))


def scaling_view(data: StudyData) -> go.Figure:
    return FC.scaling_figure(FC.scaling_data(data.trials, sequence_length))


@dataclass
class TrialPage:
    """What the trial page shows, as display data."""
    number: int
    state: str
    levels: dict[str, str]
    seed: int
    val_acc: str
    spec_json: str
    costs: list[tuple[str, str]]
    kernel_paths: list[tuple[str, str]]
    hardware: list[tuple[str, str]]
    code_version: str
    node: str
    error: str
    export_path: str | None
    curves: go.Figure


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int):
        return f"{v:,}"
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


def trial_page(store: Any, data: StudyData, number: int) -> TrialPage:
    from .queries import find_trial

    t = find_trial(data, number)
    run = run_of(data.info, t)
    costs = [("parameters", _fmt(t.num_params) if t.num_params is not None else "–")]
    costs += [(k, _fmt(v)) for k, v in t.cost.items() if k not in ("by_resolution", "flops_terms", "params")]
    for size, c in (t.cost.get("by_resolution") or {}).items():
        costs.append((f"at {size}²", c.get("error") if "error" in c else
                      f"{_fmt(c.get('throughput'))} images/s, {_fmt(c.get('flops'))} FLOPs"))
    try:
        spec = json.dumps(json.loads(t.spec_json), indent=2, sort_keys=True)
    except (TypeError, ValueError):
        spec = t.spec_json or "(no spec: the sampled point was invalid)"
    epochs = epochs_by_trial(store, [t.id])
    curves = F.curves_figure(F.curves_data([t], epochs, "val_acc"),
                             title=f"trial {t.number}: validation accuracy (left) and losses (right) per epoch")
    for metric in ("train_loss", "val_loss"):
        d = F.curves_data([t], epochs, metric)
        for s in d.series:
            curves.add_trace(go.Scatter(x=s["epochs"], y=s["values"], name=metric, yaxis="y2", mode="lines+markers",
                                        line=dict(dash="dot")))
    curves.update_layout(yaxis2=dict(title="loss", overlaying="y", side="right", showgrid=False), showlegend=True)
    path = model_file(store, t)
    return TrialPage(t.number, t.state, t.levels, t.seed, "–" if t.val_acc is None else f"{100 * t.val_acc:.2f}%",
                     spec, costs, sorted(t.kernel_paths.items()),
                     [(k, _fmt(v)) for k, v in (run.hardware if run else {}).items()],
                     (run.code_version if run else "") or "–", t.node_id or "–", t.error or "",
                     str(path) if path else None, curves)


__all__ = ["AblationView", "MAX_CURVES", "TrialPage", "ablation_view", "curves_view", "pareto_view", "scaling_view",
           "search_views", "trial_page"]
