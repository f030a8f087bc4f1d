"""The ablation table a study ends with (and `nas show` prints): per factor level n, mean, 95% CI over seeds, the
paired difference against the reference level on matched seeds, and the paper's published value beside ours.

`ablation_summary` is pure data (used by the dashboard too); `ablation_table` renders it with rich.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from rich.table import Table

from .stats import paired_differences, summarize
from .store import TrialView

COMBINED = "cell"


@dataclass(frozen=True)
class LevelRow:
    level: str
    n: int
    n_failed: int
    mean: float
    ci_low: float
    ci_high: float
    diff: float | None  # level − reference, mean over matched seeds
    diff_low: float | None
    diff_high: float | None
    paper: float | None
    paper_diff: float | None
    is_reference: bool
    params: int | None = None  # parameters of the level's model (equal across seeds)


@dataclass(frozen=True)
class AblationSummary:
    factor: str
    metric: str
    reference: str
    rows: list[LevelRow]


def _label(levels: dict[str, str], factors: list[str]) -> str:
    return levels[factors[0]] if len(factors) == 1 else ", ".join(f"{f}={levels[f]}" for f in factors)


def ablation_summary(config: dict[str, Any], trials: list[TrialView], metric: str = "val_acc") -> AblationSummary:
    """From a stored study config (its `factors`, `reference`, `paper`) and its trials. One factor: its levels;
    several: every combination as one level."""
    factors = list(config.get("factors") or {})
    if not factors:
        raise ValueError("not a grid study: it has no factors (use the search view)")
    level_names = {f: _names(config["factors"][f]) for f in factors}
    ref_levels = {f: str((config.get("reference") or {}).get(f, level_names[f][0])) for f in factors}
    reference = _label(ref_levels, factors)
    # the latest attempt per key wins (stale and failed attempts before a success are history)
    latest: dict[str, TrialView] = {}
    for t in trials:
        if t.state in ("complete", "stopped") or t.key not in latest or latest[t.key].state not in ("complete",
                                                                                                    "stopped"):
            latest[t.key] = t
    rows = []
    order: list[str] = []
    params: dict[str, int] = {}
    label_levels: dict[str, dict[str, str]] = {}
    for t in latest.values():
        if not all(f in t.levels for f in factors):
            continue
        label = _label(t.levels, factors)
        label_levels[label] = t.levels
        if t.num_params:
            params[label] = t.num_params
        if label not in order:
            order.append(label)
        value = t.val_acc if metric == "val_acc" else t.row().get(metric)
        ok = t.state in ("complete", "stopped")
        rows.append({COMBINED: label, "seed": t.seed, metric: value if ok else None})
    wanted = [_label(dict(zip(factors, combo)), factors) for combo in _product([level_names[f] for f in factors])]
    order = [w for w in wanted if w in order] + [o for o in order if o not in wanted]
    summ = {s.level: s for s in summarize(rows, COMBINED, metric)} if rows else {}
    diffs = {}
    if reference in summ and summ[reference].n:
        diffs = {d.level: d for d in paired_differences(rows, COMBINED, metric, reference)}
    paper_vals = (config.get("paper") or {}).get("values") or {}
    # the paper's values name the levels of one factor (with several factors, the one whose levels they are)
    paper_factor = next((f for f in factors if paper_vals and set(paper_vals) <= set(level_names[f])), None)
    paper_ref = paper_vals.get(ref_levels[paper_factor]) if paper_factor else None
    out = []
    for label in order:
        s = summ.get(label)
        if s is None:
            continue
        d = diffs.get(label)
        p = paper_vals.get(label_levels[label][paper_factor]) if paper_factor else None
        out.append(LevelRow(label, s.n, s.n_missing, s.mean, s.ci_low, s.ci_high,
                            None if d is None else d.mean, None if d is None else d.ci_low,
                            None if d is None else d.ci_high, p,
                            None if p is None or paper_ref is None else p - paper_ref, label == reference,
                            params.get(label)))
    return AblationSummary(" × ".join(factors), metric, reference, out)


def _names(levels: Any) -> list[str]:
    from .config import _level_name

    if isinstance(levels, dict):
        return list(levels.get("levels", levels))
    return [_level_name(v) for v in levels]


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    from itertools import product

    return list(product(*lists))


def _pct(x: float | None, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def ablation_table(summary: AblationSummary, *, title: str, paper_metric: str | None = None) -> Table:
    scale = summary.metric in ("val_acc",)
    fmt = (lambda x, signed=False: _pct(x, signed)) if scale else \
        (lambda x, signed=False: "–" if x is None or x != x else (f"{x:+.4g}" if signed else f"{x:.4g}"))
    unit = " (%)" if scale else ""
    t = Table(title=title)
    t.add_column(summary.factor)
    t.add_column("params", justify="right")
    t.add_column("n", justify="right")
    t.add_column(f"mean {summary.metric}{unit}", justify="right")
    t.add_column("95% CI", justify="right")
    t.add_column(f"Δ vs {summary.reference} (paired)", justify="right")
    t.add_column("Δ 95% CI", justify="right")
    has_paper = any(r.paper is not None for r in summary.rows)
    if has_paper:
        t.add_column(f"paper{(' ' + paper_metric) if paper_metric else ''}", justify="right")
        t.add_column(f"paper Δ vs {summary.reference}", justify="right")
    for r in summary.rows:
        n = f"{r.n}" + (f" (+{r.n_failed} failed)" if r.n_failed else "")
        ci = f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if r.n > 1 else "–"
        if r.is_reference:
            diff, dci = "(reference)", ""
        else:
            diff = fmt(r.diff, True)
            dci = f"[{fmt(r.diff_low, True)}, {fmt(r.diff_high, True)}]" if r.diff_low is not None and \
                r.diff_low == r.diff_low else "–"
        cells = [r.level, "–" if r.params is None else f"{r.params:,}", n, fmt(r.mean), ci, diff, dci]
        if has_paper:
            cells += ["–" if r.paper is None else f"{r.paper:.1f}",
                      "(reference)" if r.is_reference else ("–" if r.paper_diff is None else f"{r.paper_diff:+.1f}")]
        t.add_row(*cells, style="bold" if r.is_reference else None)
    return t


__all__ = ["AblationSummary", "LevelRow", "ablation_summary", "ablation_table"]
