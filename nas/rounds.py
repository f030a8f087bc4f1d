"""Rounds of a study: after a round's trials finish, which cells to add. This is where adaptive seeding plugs in.

A study with a plain list of seeds has one round. A study with `seeds: {min, max, target_halfwidth}` runs `min` seeds
per level first; then, after every round, a *seed policy* (a pure function of the finished results) says which seeds
each arm should have, and `next_round` turns that into the missing cells (never a (spec, seed) that already has a
result or failed, so resuming stays idempotent). The default policy is `adaptive_policy`: `nas.adaptive`'s looks,
with every arm keyed by its spec id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .plan import Plan
from .records import TrialState, TrialView
from .schema import Study
from .space import Arm, Cell

@dataclass(frozen=True)
class ArmResult:
    """One arm (a combination of factor levels) after a round: its finished seeds and their values of the study's
    first objective, as stored (accuracy in [0, 1]; `nas.stats` knows each metric's display unit)."""
    arm: Arm
    values: dict[int, float]  # seed → value, for seeds that finished with a value (complete or stopped early)
    failed: tuple[int, ...]  # seeds whose trial failed (no value; not re-run unless --retry-failed)

    @property
    def spec_id(self) -> str:
        return self.arm.spec.id

    @property
    def levels(self) -> dict[str, str]:
        return self.arm.levels


# A seed policy: (the study, every arm's results so far) → the seeds each arm should have run, by spec id (arms left
# out keep what they have; seeds outside `Study.max_seeds` are ignored). Pure: no store, no randomness.
SeedPolicy = Callable[[Study, Sequence[ArmResult]], Mapping[str, Sequence[int]]]


def adaptive_policy(study: Study, results: Sequence[ArmResult]) -> dict[str, list[int]]:
    """`nas.adaptive.next_cells` over the arms (levels keyed by spec id, the reference arm is the study's reference
    levels): the next look's seeds for the arms that still need them."""
    from .adaptive import next_cells

    settings = study.adaptive_seeds
    if settings is None or not results:
        return {}
    ref = study.reference_levels
    reference = next((r.spec_id for r in results if all(r.levels.get(f) == lv for f, lv in ref.items())),
                     results[0].spec_id)
    values = {r.spec_id: {**{s: None for s in r.failed}, **r.values} for r in results}
    wanted: dict[str, list[int]] = {}
    for spec_id, seed in next_cells(values, reference, settings, levels=[r.spec_id for r in results],
                                    metric=study.objectives[0].metric, n_test=study.data.n_test):
        wanted.setdefault(spec_id, []).append(seed)
    return wanted


DEFAULT_POLICY: SeedPolicy = adaptive_policy


def arm_results(plan: Plan, trials: Sequence[TrialView]) -> list[ArmResult]:
    """Each arm's finished seeds and their values, from the store's trials (the latest result of a key wins)."""
    metric = plan.study.objectives[0].metric
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
                values[seed] = float(v)
            else:
                failed.append(seed)
        out.append(ArmResult(arm, values, tuple(failed)))
    return out


def next_round(plan: Plan, trials: Sequence[TrialView], policy: SeedPolicy | None = DEFAULT_POLICY) -> list[Cell]:
    """The cells to run next: none for a plain list of seeds, a search, or without a policy; otherwise, per arm, the
    seeds the policy asks for that have neither a result nor a failed trial (failures are re-run only by
    `--retry-failed`)."""
    study = plan.study
    if not plan.is_grid or study.adaptive_seeds is None or policy is None:
        return []
    results = arm_results(plan, trials)
    wanted = policy(study, results)
    cells = []
    allowed = set(study.max_seeds)
    for r in results:
        seeds = [s for s in dict.fromkeys(wanted.get(r.spec_id, ())) if s in allowed]
        cells += [r.arm.cell(study.name, s) for s in seeds if s not in r.values and s not in r.failed]
    return cells


__all__ = ["DEFAULT_POLICY", "ArmResult", "SeedPolicy", "adaptive_policy", "arm_results", "next_round"]
