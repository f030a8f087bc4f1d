"""Adaptive seeding: which (level, seed) cells a study runs next, from the results it has (no Ray, no store).

    settings: {min: 3, max: 10, target_halfwidth: 1.0, confidence: 0.95}

Every level first gets seeds 0 .. min−1. Then, at each *look*, a level gets more seeds only while its corrected
paired interval against the reference (`nas.stats.compare_levels`) still holds 0 and is wider than
`target_halfwidth` (display units: points for accuracy); the reference runs every seed any level needs, so every
comparison stays paired. Seeds are taken in order 0, 1, 2, ..., so a cell's key stays (study, spec, seed).

Optional stopping. Stopping a level as soon as it looks significant would inflate false positives (each look is
another chance to cross the line). Two rules keep the error rate at 1 − confidence:
- a fixed schedule of at most three looks, at n = min, the midpoint and max seeds per level (`look_sizes`), decided
  in advance; never more than `max` seeds;
- alpha spending by Bonferroni over the looks: every analysis, interim or final, tests at (1 − confidence)/K with K
  the number of looks (Holm across levels on top). The final table (`nas.summary`) uses the same split, so a verdict
  printed at the end is one the stopping rule could not have manufactured.

Idempotent and resumable: the decisions are replayed from the finished results alone, each on the seeds below that
look's size, so results that arrive in any order, or a restart half-way through a round, ask for exactly the same
cells, and a cell that is finished (failed ones included) is never asked for again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .stats import NO_DIFFERENCE, compare_levels, metric_kind

Results = Mapping[Any, Mapping[int, "float | None"]]  # level → {seed: metric value, None when the trial failed}


@dataclass(frozen=True)
class SeedSettings:
    """`seeds: {min, max, target_halfwidth, confidence}` of a study file."""

    min: int
    max: int
    target_halfwidth: float
    confidence: float = 0.95

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max:
            raise ValueError(f"seeds: need 1 <= min <= max (got min={self.min}, max={self.max})")
        if not self.target_halfwidth > 0:
            raise ValueError(f"seeds: target_halfwidth must be > 0 (got {self.target_halfwidth})")
        if not 0 < self.confidence < 1:
            raise ValueError(f"seeds: confidence must lie in (0, 1) (got {self.confidence})")

    @classmethod
    def of(cls, obj: Any) -> SeedSettings:
        """From a mapping or any object with these attributes (the validated study's settings)."""
        get = obj.get if isinstance(obj, Mapping) else (lambda k, d=None: getattr(obj, k, d))
        return cls(int(get("min")), int(get("max")), float(get("target_halfwidth")),
                   float(get("confidence", 0.95) or 0.95))


def look_sizes(settings: Any) -> tuple[int, ...]:
    """Seeds per level at each look: min, the midpoint (rounded up) and max, without repeats."""
    s = SeedSettings.of(settings)
    mid = s.min + math.ceil((s.max - s.min) / 2)
    return tuple(dict.fromkeys((s.min, mid, s.max)))


@dataclass(frozen=True)
class Plan:
    """What the policy decided: the cells to run next (empty: the study is done) and, per level, the seeds it is
    meant to have now and why."""

    cells: list[tuple[Any, int]]
    target_n: dict[Any, int]
    reasons: dict[Any, str]
    look: int  # 0-based index into look_sizes of the round the cells belong to (or the last one decided)


def plan_seeds(results: Results, reference: Any, settings: Any, *, levels: Sequence[Any] | None = None,
               metric: str = "val_acc", n_test: int | None = None) -> Plan:
    """Replay the looks on the finished `results` and return the next round's unfinished cells (see the module)."""
    s = SeedSettings.of(settings)
    levels = list(levels) if levels is not None else list(results)
    if reference not in levels:
        raise ValueError(f"reference level {reference!r} is not among the levels {levels!r}")
    others = [lv for lv in levels if lv != reference]
    sizes, kind = look_sizes(s), metric_kind(metric)
    n = {lv: sizes[0] for lv in levels}
    reasons = {lv: f"first {sizes[0]} seeds" for lv in levels}
    active = set(others)
    for look, _ in enumerate(sizes):
        missing = [(lv, seed) for seed in range(max(n.values())) for lv in levels
                   if seed < n[lv] and seed not in results.get(lv, {})]
        if missing:
            return Plan(missing, dict(n), reasons, look)
        seen = {lv: {sd: v for sd, v in results.get(lv, {}).items() if sd < n[lv]} for lv in levels}
        comps = compare_levels(seen, reference, kind, n_test=n_test, confidence=s.confidence, looks=len(sizes))
        needy = []
        for c in comps:
            if c.level not in active:
                continue
            wide = c.adj_half_width * kind.scale > s.target_halfwidth
            if c.n_pairs >= 2 and not (c.verdict == NO_DIFFERENCE and wide):
                reasons[c.level] = (f"stopped at {n[c.level]}: {c.verdict}" if c.verdict != NO_DIFFERENCE else
                                    f"stopped at {n[c.level]}: interval within ±{s.target_halfwidth:g}")
            elif look + 1 < len(sizes):
                needy.append(c.level)
                reasons[c.level] = (f"look {look + 1}: " + ("fewer than 2 pairs" if c.n_pairs < 2 else
                                    f"holds 0, ±{c.adj_half_width * kind.scale:.3g} > {s.target_halfwidth:g}"))
            else:
                reasons[c.level] = f"stopped at max={s.max}: {c.verdict}"
        if not needy:
            return Plan([], dict(n), reasons, look)
        active = set(needy)
        for lv in needy:
            n[lv] = sizes[look + 1]
        n[reference] = max(n[lv] for lv in others)
    raise AssertionError("unreachable: the last look always returns")  # pragma: no cover


def next_cells(results: Results, reference: Any, settings: Any, *, levels: Sequence[Any] | None = None,
               metric: str = "val_acc", n_test: int | None = None) -> list[tuple[Any, int]]:
    """The (level, seed) cells to run next, seed by seed in level order; [] when the study needs no more."""
    return plan_seeds(results, reference, settings, levels=levels, metric=metric, n_test=n_test).cells


__all__ = ["Plan", "SeedSettings", "look_sizes", "next_cells", "plan_seeds"]
