"""Parameter-budget matching: resize a spec along one knob until its parameter count is within a tolerance of a budget.

Why: an ablation that compares mixers or routes is only fair at equal size (the seed papers compare at ~equal
parameters), so a study can pin every candidate to one budget. Counts come from `blocks.count_parameters` (a build on
the meta device: no memory, a few milliseconds), and only specs that validate are ever considered.

Knobs: `width` scales dims[0] (plain) or every stage's width by one factor (hierarchical), in steps of the smallest
multiple the mixer accepts (attention's head_dim, mLSTM's heads, ...: found by trying, not by a table per mixer);
`depth` changes depths[0] (plain) or the third stage's depth (hierarchical, as MambaOut and VMamba grow their models;
the last stage when there are fewer than three).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Literal, NamedTuple

from blocks import ArchSpec, InvalidSpecError, count_parameters

from .errors import BudgetError

Solve = Literal["width", "depth"]
_MAX_STEP_PROBE = 256  # widest step tried for a mixer's width rule
_MAX_DEPTH = 1024  # deeper than this is not a budget match but a different model
_MAX_KNOB = 1 << 20  # the search gives up above this knob value (a budget beyond any sensible model)


@dataclass(frozen=True)
class BudgetMatch:
    """The matched spec and what to log: its count, the signed relative error, and the knob with its new value."""

    spec: ArchSpec
    params: int
    budget: int
    relative_error: float  # (params - budget) / budget
    knob: str  # "dims" or "depths[i]"
    value: int | tuple[int, ...]


def match_budget(spec: ArchSpec, budget: int, *, tolerance: float = 0.02, solve: Solve = "width") -> BudgetMatch:
    """A spec like `spec` whose parameter count is within `tolerance` (relative) of `budget`, changing one knob.

    The count is monotone in the knob, so the knob value where it crosses the budget is bracketed and bisected, then
    its valid neighbours are compared and the closest wins. Raises `BudgetError` when the closest is still outside
    the tolerance (the message suggests the other knob)."""
    if budget < 1 or tolerance < 0:
        raise BudgetError(f"budget must be a positive parameter count and tolerance non-negative; got budget={budget}, "
                          f"tolerance={tolerance}", key="budget")
    if solve not in ("width", "depth"):
        raise BudgetError(f"solve must be 'width' or 'depth', got {solve!r}", key="solve")
    knob = _width_knob(spec) if solve == "width" else _depth_knob(spec)
    count = _counter(knob.make)
    guess = _first_guess(count, knob.start, budget, solve)
    if solve == "depth" and guess > _MAX_DEPTH:  # the count is linear in depth: no need to build the model to know
        raise BudgetError(f"budget {budget:,} parameters would need {knob.name} ≈ {guess:,}, more than {_MAX_DEPTH} "
                          "blocks; try solve='width'", key="budget")
    u = _closest(count, budget, guess)
    best, params = knob.make(u), count(u)
    if best is None or params is None:  # cannot happen: _closest returns only valid knob values
        raise RuntimeError(f"budget search returned an invalid knob value {u}")
    err = (params - budget) / budget
    value = knob.value(best)
    if abs(err) > tolerance:
        other = "depth" if solve == "width" else "width"
        raise BudgetError(f"budget {budget:,} parameters cannot be met within ±{tolerance:.1%} by {knob.name}: the "
                          f"closest, {knob.name} = {value}, has {params:,} ({err:+.2%}); try solve={other!r} or a "
                          "wider tolerance", key="budget")
    return BudgetMatch(best, params, budget, err, knob.name, value)


# ---- knobs: an integer u ≥ 1 → a validated spec (or None), the count non-decreasing in u -------------------------
class _Knob(NamedTuple):
    name: str  # as logged: "dims", "depths[2]"
    make: Callable[[int], ArchSpec | None]
    start: int  # u of the given spec
    value: Callable[[ArchSpec], int | tuple[int, ...]]  # what the knob reads on a spec


def _try(spec: ArchSpec, overrides: dict) -> ArchSpec | None:
    try:
        return spec.with_overrides(overrides)
    except InvalidSpecError:
        return None


def _width_knob(spec: ArchSpec) -> _Knob:
    d0 = spec.dims[0]

    def dims_at(width: int, step: int) -> list[int]:  # every stage scaled by width / d0, on the step grid
        return [max(step, round(d * width / d0 / step) * step) for d in spec.dims]

    step = _width_step(spec, dims_at)
    return _Knob("dims", lambda u: _try(spec, {"dims": dims_at(u * step, step)}), max(1, round(d0 / step)),
                 lambda s: s.dims)


def _width_step(spec: ArchSpec, dims_at: Callable[[int, int], list[int]]) -> int:
    """The smallest step m such that the next two widths on its grid, m·(k+1) and m·(k+2), validate (m·k is the
    spec's own). A divisibility rule (dim % head_dim, inner % heads) holds for two consecutive multiples only if it
    holds for m, and the spec's widths already obey it, so only divisors of their gcd are tried."""
    g = math.gcd(*spec.dims)
    for m in (m for m in range(1, min(g, _MAX_STEP_PROBE) + 1) if g % m == 0):
        k = spec.dims[0] // m
        if all(_try(spec, {"dims": dims_at((k + j) * m, m)}) is not None for j in (1, 2)):
            return m
    return g


def _depth_knob(spec: ArchSpec) -> _Knob:
    stage = 0 if spec.layout == "plain" else min(2, len(spec.depths) - 1)

    def make(u: int) -> ArchSpec | None:
        depths = list(spec.depths)
        depths[stage] = u
        return _try(spec, {"depths": depths}) if u <= _MAX_DEPTH else None

    return _Knob(f"depths[{stage}]", make, spec.depths[stage], lambda s: s.depths[stage])


# ---- search -------------------------------------------------------------------------------------------------------
def _counter(make: Callable[[int], ArchSpec | None]) -> Callable[[int], int | None]:
    @lru_cache(maxsize=None)
    def count(u: int) -> int | None:
        s = make(u) if u >= 1 else None
        return count_parameters(s) if s is not None else None

    return count


def _first_guess(count: Callable[[int], int | None], start: int, budget: int, solve: Solve) -> int:
    """Width: the count grows about quadratically; depth: exactly linearly (every block of a stage is the same)."""
    c0 = count(start)
    if c0 is None:
        return start
    if solve == "width":
        return max(1, round(start * (budget / c0) ** 0.5))
    c1 = count(start + 1)
    if c1 is None or c1 == c0:
        return start
    return max(1, start + round((budget - c0) / (c1 - c0)))


def _valid_near(count: Callable[[int], int | None], u: int, lo: int, hi: int) -> int | None:
    """The valid knob value nearest to u strictly inside (lo, hi), upward first."""
    for d in range(0, hi - lo):
        for v in (u + d, u - d):
            if lo < v < hi and count(v) is not None:
                return v
    return None


def _bracket(count: Callable[[int], int | None], budget: int, guess: int) -> tuple[int, int]:
    """(lo, hi) with count(lo) < budget <= count(hi), found by strides that double away from the guess (a good guess
    gives a tight bracket without building a model twice the size). lo = 0 stands for "below the smallest"."""
    lo, hi, u, step = 0, 0, guess, 1
    while u <= _MAX_KNOB:
        if (c := count(u)) is not None:
            if c >= budget:
                hi = u
                break
            lo = u
        u, step = u + step, step * 2
    if not hi:
        return lo, u  # the budget is beyond reach: the closest is lo
    v, step = hi - 1, 1
    while lo == 0 and v >= 1:
        if (c := count(v)) is not None:
            lo, hi = (v, hi) if c < budget else (lo, v)
        v, step = v - step, step * 2
    return lo, hi


def _closest(count: Callable[[int], int | None], budget: int, guess: int) -> int:
    """Bisect the bracket down to the two valid knob values either side of the crossing; the count is monotone in
    the knob, so the closer of those two is the closest of all."""
    lo, hi = _bracket(count, budget, guess)
    while hi - lo > 1 and (mid := _valid_near(count, (lo + hi) // 2, lo, hi)) is not None:
        lo, hi = (mid, hi) if count(mid) < budget else (lo, mid)
    near = [v for v in (lo, hi) if 1 <= v <= _MAX_KNOB and count(v) is not None]
    if not near:
        raise BudgetError(f"no valid spec found near knob value {hi} while matching budget {budget:,}", key="budget")
    return min(near, key=lambda v: (abs(count(v) - budget), v))


__all__ = ["BudgetMatch", "Solve", "match_budget"]
