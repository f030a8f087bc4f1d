"""Each view of a study as queries → data → figure, shared by the Dash app and `nas report` (so both show the same
figures). Functions here take an open read-only store or the loaded `StudyData`; they return figures and display
rows, never components."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go

from nas.records import TrialView

from . import figures as F
from . import figures_cost as FC
from . import figures_search as FS
from . import units as U
from .queries import StudyData, epochs_by_trial, model_file, run_of, search_data, sequence_length

MAX_CURVES = 200  # learning curves drawn per view (the latest trials); the ablation view itself has no limit


@dataclass
class AblationView:
    figure: go.Figure
    table: list[dict[str, str]]
    data: F.AblationData


def ablation_view(data: StudyData, metric: str = "val_acc", reference: str | None = None,
                  points: bool | None = None) -> AblationView | None:
    """None for a search study (no factors). `points`: every seed as a point (None: only up to F.AUTO_POINTS
    seeds; above, each level's density)."""
    if not data.is_grid:
        return None
    d = F.ablation_data(data.config, data.trials, metric, reference)
    title = f"{data.name}: {data.config.get('question') or ''}"
    fig = F.ablation_figure(d, title=title, points=points) if d.points else F.empty_figure(
        f"no finished trial with {metric} yet: each seed shows up here as a point when its trial finishes", title)
    return AblationView(fig, F.ablation_table_rows(d), d)


def curves_view(store: Any, data: StudyData, metric: str = "val_acc") -> go.Figure:
    trials = F.latest_attempts(data.trials)[-MAX_CURVES:]
    factors = list(data.config.get("factors") or {}) or None
    d = F.curves_data(trials, epochs_by_trial(store, [t.id for t in trials]), metric, factors)
    if not d.series:
        return F.empty_figure(f"no epoch with {metric} recorded yet: curves appear as trials report their first "
                              "epoch", f"learning curves: {metric}")
    return F.curves_figure(d, title=f"learning curves: {metric}" + (" (thin: one trial; thick: mean per level)"
                                                                    if factors else ""))


def search_views(url: str, data: StudyData) -> tuple[go.Figure, go.Figure, go.Figure]:
    """Optimization history, parallel coordinates, parameter importance (from Optuna's tables)."""
    s = search_data(url, data)
    return (FS.history_figure(FS.history_data(s)), FS.parallel_figure(FS.parallel_data(s)),
            FS.importance_figure(FS.importance_data(s)))


def pareto_view(data: StudyData, cost: str = "params", metric: str = "val_acc") -> go.Figure:
    d = FC.pareto_data(data.trials, cost, metric)
    return FC.pareto_figure(d, title=f"Pareto front: {metric} vs {FC.COSTS[cost][0]}")


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
    device: str
    error: str
    export_path: str | None
    curves: go.Figure


def _fmt(v: Any) -> str:
    if v is None:
        return U.MISSING
    if isinstance(v, float):
        return U.sig(v)
    if isinstance(v, int) and not isinstance(v, bool):
        return U.count(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return ", ".join(v)
    return json.dumps(v) if isinstance(v, (dict, list)) else str(v)


_COST_KEYS = ("params", "img_size", "flops", "macs", "throughput", "peak_memory_bytes", "by_resolution",
              "flops_terms")


def _memory(c: dict[str, Any]) -> str:
    return U.memory(c.get("peak_memory_bytes"), missing="– (measured on CUDA only)"
                    if c.get("throughput") is not None else U.MISSING)


def cost_rows(t: TrialView) -> list[tuple[str, str]]:
    """The trial page's cost table, every number with its unit (inference costs, measured after training)."""
    c = t.cost
    rows = [("parameters", U.count(t.num_params if t.num_params is not None else c.get("params")))]
    if c:
        rows += [("image size", U.image_size(c.get("img_size"))), ("FLOPs per image", U.gflops(c.get("flops"))),
                 ("MACs per image", U.gflops(c.get("macs"), "GMACs")),
                 ("throughput", U.throughput(c.get("throughput"))), ("peak memory", _memory(c))]
    else:
        why = {"running": "it is still training", "failed": "it failed", "stale": "its run was interrupted"}
        rows.append(("FLOPs, throughput, memory", "not measured: costs are measured after training, and " +
                     why.get(str(t.state), "the study skips measuring (measure.skip)")))
    rows += [("wall time (build, train, evaluate, measure)", U.seconds(t.wall_seconds)),
             ("training time", U.seconds(t.train_seconds))]
    rows += [(k, _fmt(v)) for k, v in c.items() if k not in _COST_KEYS]
    by_size = c.get("by_resolution") or {}
    for size in sorted(by_size, key=lambda k: int(k) if str(k).isdigit() else 0):
        r = by_size[size]
        text = str(r.get("error")) if "error" in r else " · ".join(
            x for x in (U.throughput(r.get("throughput")), U.gflops(r.get("flops")),
                        U.memory(r.get("peak_memory_bytes"), missing="")) if x)
        rows.append((f"at {U.image_size(size)}", text))
    return rows


TRIAL_COLUMNS = [("number", "trial"), ("levels", "levels"), ("seed", "seed"), ("state", "state"),
                 ("val_acc", "val_acc"), ("params", "parameters"), ("flops", "FLOPs per image"),
                 ("throughput", "throughput"), ("memory", "peak memory"), ("wall", "wall time"), ("device", "device"),
                 ("spec", "spec id"), ("error", "error")]


def trial_rows(data: StudyData, error_chars: int = 120) -> list[dict[str, str]]:
    """Every trial attempt as display strings with units (the dashboard's Trials tab and the report's table)."""
    return [{"number": str(t.number), "levels": ", ".join(f"{k}={v}" for k, v in t.levels.items()),
             "seed": str(t.seed), "state": str(t.state), "val_acc": U.percent(t.val_acc),
             "params": U.count(t.num_params), "flops": U.gflops(t.cost.get("flops")),
             "throughput": U.throughput(t.cost.get("throughput")), "memory": U.memory(t.cost.get("peak_memory_bytes")),
             "wall": U.seconds(t.wall_seconds), "device": U.device(t.device),
             "spec": t.spec_id, "error": (t.error or "").splitlines()[0][:error_chars] if t.error else ""}
            for t in data.trials]


def trial_page(store: Any, data: StudyData, number: int) -> TrialPage:
    from .queries import find_trial

    t = find_trial(data, number)
    run = run_of(data.info, t)
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
    curves.update_layout(yaxis2=dict(title="loss", overlaying="y", side="right", showgrid=False), showlegend=True,
                         legend=dict(orientation="h", y=-0.25))  # beside the plot it would cover the loss axis
    if not curves.data:
        curves = F.empty_figure("no epoch recorded for this trial yet", f"trial {t.number}: curves per epoch")
    path = model_file(store, t)
    return TrialPage(t.number, str(t.state), t.levels, t.seed, U.percent(t.val_acc), spec, cost_rows(t),
                     sorted(t.kernel_paths.items()),
                     [(k, _fmt(v)) for k, v in (run.hardware if run else {}).items()],
                     (run.code_version if run else "") or "–", t.node_id or "–", t.device or "–", t.error or "",
                     str(path) if path else None, curves)


__all__ = ["AblationView", "MAX_CURVES", "TRIAL_COLUMNS", "TrialPage", "ablation_view", "cost_rows", "curves_view",
           "pareto_view", "scaling_view", "search_views", "trial_page", "trial_rows"]
