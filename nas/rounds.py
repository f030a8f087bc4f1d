"""Rounds of a study: after a round's trials finish, which cells to add. This is where adaptive seeding plugs in.

A study with a plain list of seeds has one round. A study with `seeds: {min, max, target_halfwidth}` runs `min` seeds
per level first; then, after every round, a *seed policy* (a pure function, below) says how many seeds each arm should
have in total, and `next_round` turns that into the missing cells (never a (spec, seed) that already has a result, so
resuming stays idempotent). Until a policy is plugged in (`DEFAULT_POLICY` is None), an adaptive study runs its `min`
seeds and stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .plan import Plan
from .records import TrialState, TrialView
from .schema import Study
from .space import Arm, Cell

DISPLAY_SCALE = {"val_acc": 100.0}  # the metric's display unit (percentage points), the unit of target_halfwidth


@dataclass(frozen=True)
class ArmResult:
    """One arm (a combination of factor levels) after a round: its finished seeds and their values of the study's
    first objective, in the metric's display unit (the unit of `seeds.target_halfwidth`)."""
    arm: Arm
    values: dict[int, float]  # seed → value, for seeds that finished with a value (complete or stopped early)
    failed: tuple[int, ...]  # seeds whose trial failed (no value; not re-run unless --retry-failed)

    @property
    def spec_id(self) -> str:
        return self.arm.spec.id

    @property
    def levels(self) -> dict[str, str]:
        return self.arm.levels


# The adaptive policy: (the study, every arm's results so far) → how many seeds each arm should have in total, by spec
# id (arms left out keep what they have; counts above `seeds.max` are capped). Pure: no store, no randomness.
SeedPolicy = Callable[[Study, Sequence[ArmResult]], Mapping[str, int]]
DEFAULT_POLICY: SeedPolicy | None = None  # not written yet: adaptive studies stop after their `min` seeds


def arm_results(plan: Plan, trials: Sequence[TrialView]) -> list[ArmResult]:
    """Each arm's finished seeds and their values, from the store's trials (the latest result of a key wins)."""
    metric = plan.study.objectives[0].metric
    scale = DISPLAY_SCALE.get(metric, 1.0)
    by_key = {t.key: t for t in trials if t.state in TrialState.FINISHED}
    by_key.update({t.key: t for t in trials if t.state in TrialState.DONE})  # a result beats a failed attempt
    out = []
    for arm in plan.arms:
        values: dict[int, float] = {}
        failed: list[int] = []
        for seed in plan.study.max_seeds:
            t = by_key.get(arm.cell(plan.study.name, seed).key)
            if t is None:
                continue
            v = t.val_acc if metric == "val_acc" else t.row().get(metric)
            if t.state in TrialState.DONE and v is not None:
                values[seed] = scale * float(v)
            else:
                failed.append(seed)
        out.append(ArmResult(arm, values, tuple(failed)))
    return out


def next_round(plan: Plan, trials: Sequence[TrialView], policy: SeedPolicy | None = DEFAULT_POLICY) -> list[Cell]:
    """The cells to run next: none for a plain list of seeds, a search, or while no policy is plugged in; otherwise,
    per arm, the next untried seeds (in `Study.max_seeds` order) until the arm would have as many values as the
    policy asks for (a failed seed is not tried again; the next one is taken instead)."""
    study = plan.study
    if not plan.is_grid or study.adaptive_seeds is None or policy is None:
        return []
    results = arm_results(plan, trials)
    wanted = policy(study, results)
    cells = []
    for r in results:
        need = min(int(wanted.get(r.spec_id, 0)), study.adaptive_seeds.max) - len(r.values)
        untried = [s for s in study.max_seeds if s not in r.values and s not in r.failed]
        cells += [r.arm.cell(study.name, s) for s in untried[:max(0, need)]]
    return cells


__all__ = ["DEFAULT_POLICY", "DISPLAY_SCALE", "ArmResult", "SeedPolicy", "arm_results", "next_round"]
