"""The ablation table a study ends with (and `nas show`, `nas report` and the dashboard print): per factor level n,
mean and its interval over seeds (inside the metric's range), the paired difference against the reference level on
matched seeds with its Holm-corrected interval, a verdict (better / worse / no difference detected) with the
smallest difference the seeds could have detected, and the paper's published Δ beside ours.

`ablation_summary` is pure data (used by the dashboard too); `ablation_table` renders it with rich.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from rich import box
from rich.console import Group
from rich.table import Table
from rich.text import Text

from .stats import BETTER, TOO_FEW, WORSE, MetricKind, compare_levels, metric_kind, summarize, values_by_level
from .store import TrialView

COMBINED = "cell"
FINISHED = ("complete", "stopped")


@dataclass(frozen=True)
class LevelRow:
    level: str
    n: int
    n_failed: int
    mean: float
    ci_low: float
    ci_high: float
    diff: float | None  # level − reference, mean over matched seeds
    diff_low: float | None  # its plain (uncorrected) interval
    diff_high: float | None
    paper: float | None
    paper_diff: float | None
    is_reference: bool
    params: int | None = None  # parameters of the level's model (equal across seeds)
    n_pairs: int = 0
    p_value: float | None = None  # paired t test against the reference
    diff_adj_low: float | None = None  # the Holm-corrected interval (never contradicts the verdict)
    diff_adj_high: float | None = None
    verdict: str = ""  # better / worse / no difference detected / too few seeds ("" for the reference)
    mde: float | None = None  # smallest difference detectable at 80 % power with these pairs
    opposite_to_paper: bool = False  # our corrected interval excludes 0 on the other side of the paper's Δ


@dataclass(frozen=True)
class AblationSummary:
    factor: str
    metric: str
    reference: str
    rows: list[LevelRow]
    confidence: float = 0.95
    looks: int = 1  # interim analyses the error rate is split over (adaptive seeding), 1 for a fixed seed list
    n_test: int | None = None
    kind: MetricKind = field(default_factory=MetricKind)


def _label(levels: dict[str, str], factors: list[str]) -> str:
    return levels[factors[0]] if len(factors) == 1 else ", ".join(f"{f}={levels[f]}" for f in factors)


def _design(config: dict[str, Any]) -> tuple[list[str], dict[str, list[str]], dict[str, str], str, list[str]]:
    """factors, their level names, the reference's levels and label, and every level label in the study's order."""
    factors = list(config.get("factors") or {})
    if not factors:
        raise ValueError("not a grid study: it has no factors (use the search view)")
    level_names = {f: _names(config["factors"][f]) for f in factors}
    ref_levels = {f: str((config.get("reference") or {}).get(f, level_names[f][0])) for f in factors}
    wanted = [_label(dict(zip(factors, combo)), factors) for combo in _product([level_names[f] for f in factors])]
    return factors, level_names, ref_levels, _label(ref_levels, factors), wanted


def _latest(trials: list[TrialView]) -> dict[str, TrialView]:
    """The latest attempt per cell key; a finished one wins (stale and failed attempts before a success are
    history)."""
    latest: dict[str, TrialView] = {}
    for t in trials:
        if t.state in FINISHED or t.key not in latest or latest[t.key].state not in FINISHED:
            latest[t.key] = t
    return latest


@dataclass(frozen=True)
class SeedResults:
    """What `nas.adaptive.next_cells` needs from a stored study."""

    levels: list[str]  # every level label, in the study's order
    reference: str
    results: dict[str, dict[int, float | None]]  # finished cells only: the metric, None for a failed trial
    n_test: int | None


def seed_results(config: dict[str, Any], trials: list[TrialView], metric: str = "val_acc") -> SeedResults:
    """The finished cells of a grid study per level label (running and stale attempts are not finished: the policy
    asks for them again)."""
    factors, _, _, reference, wanted = _design(config)
    results: dict[str, dict[int, float | None]] = {}
    for t in _latest(trials).values():
        if t.state not in (*FINISHED, "failed") or not all(f in t.levels for f in factors):
            continue
        value = (t.val_acc if metric == "val_acc" else t.row().get(metric)) if t.state in FINISHED else None
        results.setdefault(_label(t.levels, factors), {})[t.seed] = value
    n_test = (config.get("data") or {}).get("n_test") if metric_kind(metric).proportion else None
    return SeedResults(wanted, reference, results, n_test)


def ablation_summary(config: dict[str, Any], trials: list[TrialView], metric: str = "val_acc") -> AblationSummary:
    """From a stored study config (its `factors`, `reference`, `paper`) and its trials. One factor: its levels;
    several: every combination as one level."""
    factors, level_names, ref_levels, reference, wanted = _design(config)
    rows = []
    order: list[str] = []
    params: dict[str, int] = {}
    label_levels: dict[str, dict[str, str]] = {}
    for t in _latest(trials).values():
        if not all(f in t.levels for f in factors):
            continue
        label = _label(t.levels, factors)
        label_levels[label] = t.levels
        if t.num_params:
            params[label] = t.num_params
        if label not in order:
            order.append(label)
        value = t.val_acc if metric == "val_acc" else t.row().get(metric)
        ok = t.state in FINISHED
        rows.append({COMBINED: label, "seed": t.seed, metric: value if ok else None})
    order = [w for w in wanted if w in order] + [o for o in order if o not in wanted]
    kind, (confidence, looks) = metric_kind(metric), _error_split(config.get("seeds"))
    n_test = (config.get("data") or {}).get("n_test") if kind.proportion else None
    summ = {s.level: s for s in summarize(rows, COMBINED, metric, confidence=confidence, n_test=n_test)} \
        if rows else {}
    diffs = {}
    if reference in summ and summ[reference].n:
        values, _ = values_by_level(rows, COMBINED, metric, "seed")
        diffs = {d.level: d for d in compare_levels(values, reference, kind, n_test=n_test, confidence=confidence,
                                                    looks=looks)}
    paper_vals = (config.get("paper") or {}).get("values") or {}
    # the paper's values name the levels of one factor (with several factors, the one whose levels they are)
    paper_factor = next((f for f in factors if paper_vals and set(paper_vals) <= set(level_names[f])), None)
    paper_ref = paper_vals.get(ref_levels[paper_factor]) if paper_factor else None
    out = []
    for label in order:
        s = summ.get(label)
        if s is None:
            continue
        p = paper_vals.get(label_levels[label][paper_factor]) if paper_factor else None
        paper_diff = None if p is None or paper_ref is None or label == reference else p - paper_ref
        row = LevelRow(label, s.n, s.n_missing, s.mean, s.ci_low, s.ci_high, None, None, None, p, paper_diff,
                       label == reference, params.get(label))
        d = diffs.get(label)
        if d is not None:
            row = replace(row, diff=_num(d.mean), diff_low=_num(d.ci_low), diff_high=_num(d.ci_high),
                          n_pairs=d.n_pairs, p_value=_num(d.p_value), diff_adj_low=_num(d.adj_low),
                          diff_adj_high=_num(d.adj_high), verdict=d.verdict, mde=_num(d.mde),
                          opposite_to_paper=metric == PAPER_METRIC and _opposite(d.verdict, d.mean, paper_diff))
        elif label != reference:
            row = replace(row, verdict=TOO_FEW)
        out.append(row)
    return AblationSummary(" × ".join(factors), metric, reference, out, confidence, looks, n_test, kind)


PAPER_METRIC = "val_acc"  # the papers report top-1 accuracy: only our accuracy's sign is compared with theirs


def _num(x: float) -> float | None:
    return None if x is None or math.isnan(x) else x


def _opposite(verdict: str, ours: float, paper_diff: float | None) -> bool:
    """Our corrected interval excludes 0 (better or worse) and our Δ has the other sign than the paper's."""
    return verdict in (BETTER, WORSE) and paper_diff is not None and paper_diff * ours < 0


def _error_split(seeds: Any) -> tuple[float, int]:
    """(confidence, looks) of a study's seed settings: adaptive seeding splits the error rate over its looks."""
    if isinstance(seeds, dict) and {"min", "max", "target_halfwidth"} <= set(seeds):
        from .adaptive import SeedSettings, look_sizes

        settings = SeedSettings.of(seeds)
        return settings.confidence, len(look_sizes(settings))
    return 0.95, 1


def _names(levels: Any) -> list[str]:
    from .config import _level_name

    if isinstance(levels, dict):
        return list(levels.get("levels", levels))
    return [_level_name(v) for v in levels]


def _product(lists: list[list[str]]) -> list[tuple[str, ...]]:
    from itertools import product

    return list(product(*lists))


def _fmt(summary: AblationSummary, digits: int) -> Any:
    k = summary.kind.scale

    def fmt(x: float | None, signed: bool = False) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "–"
        if k == 1.0:
            return f"{x:+.4g}" if signed else f"{x:.4g}"
        return f"{k * x:+.{digits}f}" if signed else f"{k * x:.{digits}f}"
    return fmt


def display_columns(summary: AblationSummary) -> list[tuple[str, str]]:
    """(key, title) of the ablation table's columns, shared by `nas show`, `nas report` and the dashboard."""
    conf = f"{100 * summary.confidence:g}%"
    holm = "Holm" + (f", {summary.looks} looks" if summary.looks > 1 else "")
    paper = any(r.paper is not None for r in summary.rows)  # the paper's columns sit beside ours
    cols = [("level", summary.factor), ("params", "params"), ("n", "n"), ("mean", f"mean{summary.kind.unit}"),
            ("ci", f"{conf} CI")]
    cols += [("paper", "paper")] if paper else []
    cols += [("diff", f"Δ vs {summary.reference}"), ("diff_ci", f"Δ {conf} CI ({holm})")]
    cols += [("paper_diff", "paper Δ")] if paper else []
    return cols + [("verdict", "verdict"), ("mde", "detectable Δ")]


def display_rows(summary: AblationSummary, digits: int = 1) -> list[dict[str, str]]:
    """The table as strings (accuracy in percent with `digits` decimals), one dict per level."""
    fmt = _fmt(summary, digits)
    span = summary.kind.high - summary.kind.low
    out = []
    for r in summary.rows:
        verdict = r.verdict + (" (opposite to paper)" if r.opposite_to_paper else "")
        mde = "–" if r.mde is None or r.is_reference else (f"> {fmt(span)}" if r.mde >= span else fmt(r.mde))
        out.append({
            "level": r.level, "params": "–" if r.params is None else f"{r.params:,}",
            "n": f"{r.n}" + (f" (+{r.n_failed} failed)" if r.n_failed else ""), "mean": fmt(r.mean),
            "ci": f"[{fmt(r.ci_low)}, {fmt(r.ci_high)}]" if r.n > 1 else "–",
            "diff": "(reference)" if r.is_reference else fmt(r.diff, True),
            "diff_ci": "" if r.is_reference else (f"[{fmt(r.diff_adj_low, True)}, {fmt(r.diff_adj_high, True)}]"
                                                  if r.diff_adj_low is not None else "–"),
            "verdict": "" if r.is_reference else verdict, "mde": mde,
            "paper": "–" if r.paper is None else f"{r.paper:.1f}",
            "paper_diff": "" if r.is_reference else "–" if r.paper_diff is None else f"{r.paper_diff:+.1f}"})
    return out


def method_note(summary: AblationSummary) -> str:
    """One paragraph saying how the numbers were made (printed under every ablation table)."""
    m = sum(1 for r in summary.rows if r.p_value is not None)
    floor = f"; the SD is never below the test set's binomial SD ({summary.n_test} items)" if summary.n_test else ""
    looks = (f", with the error rate split over {summary.looks} looks of adaptive seeding" if summary.looks > 1
             else "")
    return (f"Level intervals: t over seeds, kept inside the metric's range{floor}. Δ: paired t on matched seeds "
            f"against {summary.reference}; its interval is Holm-corrected over {m} comparison(s){looks}, so it "
            "excludes 0 exactly when the verdict is better or worse. Detectable Δ: the smallest true Δ these pairs "
            "find with 80 % power.")


def ablation_table(summary: AblationSummary, *, title: str, paper_metric: str | None = None) -> Group:
    """The table `nas show` prints (accuracy in percent, one decimal), the method under it."""
    t = Table(title=title, box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)  # 11 columns fit 120
    rows = display_rows(summary)
    for key, heading in display_columns(summary):
        if key == "paper" and paper_metric:
            heading += f" {paper_metric}"
        text = key in ("level", "verdict")
        t.add_column(heading.replace(" (", "\n(") if not text else heading, justify="left" if text else "right",
                     no_wrap=key in ("ci", "diff_ci"))
    keys = [k for k, _ in display_columns(summary)]
    for r, cells in zip(summary.rows, rows):
        t.add_row(*(cells[k] for k in keys), style="bold" if r.is_reference else None)
    return Group(t, Text(method_note(summary), style="dim"))  # not a caption: a long one widens the table


__all__ = ["AblationSummary", "LevelRow", "SeedResults", "ablation_summary", "ablation_table", "display_columns",
           "display_rows", "method_note", "seed_results"]
