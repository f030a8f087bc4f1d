"""The adaptive-seeding policy (nas.adaptive) on a deterministic fake trial function: no Ray, no store, no
training. A simulated study loop calls the policy until it asks for nothing more."""

from __future__ import annotations

import random

import numpy as np
import pytest

from nas import stats
from nas.adaptive import SeedSettings, look_sizes, next_cells, plan_seeds

SETTINGS = {"min": 3, "max": 10, "target_halfwidth": 1.0, "confidence": 0.95}
LEVELS = ["ref", "big", "null", "tiny"]
BASE = {"ref": 0.80, "big": 0.93, "null": 0.80, "tiny": 0.805}  # big: +13 points; null: none; tiny: +0.5 points


def fake_trial(level: str, seed: int, failed: frozenset = frozenset()) -> float | None:
    """A trial's accuracy: the level's base plus seed noise shared by all levels (what pairing removes) and the
    level's own noise; deterministic in (level, seed)."""
    if (level, seed) in failed:
        return None
    shared = np.random.default_rng([seed, 99]).normal(0, 0.02)
    own = np.random.default_rng([seed, LEVELS.index(level)]).normal(0, 0.008)
    return float(np.clip(BASE[level] + shared + own, 0, 1))


def simulate(settings=SETTINGS, failed: frozenset = frozenset()) -> tuple[dict, list[list[tuple[str, int]]]]:
    results: dict[str, dict[int, float | None]] = {}
    rounds = []
    while cells := next_cells(results, "ref", settings, levels=LEVELS, n_test=512):
        assert len(rounds) < len(look_sizes(settings)), "more rounds than looks"
        for level, seed in cells:
            assert seed not in results.get(level, {}), f"cell {(level, seed)} asked for twice"
            results.setdefault(level, {})[seed] = fake_trial(level, seed, failed)
        rounds.append(cells)
    return results, rounds


def test_loop_converges_within_max_without_repeats_seeds_in_order():
    results, rounds = simulate()
    assert look_sizes(SETTINGS) == (3, 7, 10) and 1 < len(rounds) <= 3
    for level, by_seed in results.items():
        assert sorted(by_seed) == list(range(len(by_seed))) and len(by_seed) <= SETTINGS["max"]
    n = {lv: len(results[lv]) for lv in LEVELS}
    assert n["big"] == 3  # +13 points is clear at the first look: no seed is spent on it
    assert n["ref"] == max(n[lv] for lv in LEVELS if lv != "ref")  # the reference runs every seed any level needs
    assert n["null"] > 3
    assert rounds[0] == [(lv, s) for s in range(3) for lv in LEVELS]  # seed by seed, in level order


def test_seeds_are_added_only_where_the_corrected_interval_holds_zero_and_is_too_wide():
    results, rounds = simulate()
    sizes = look_sizes(SETTINGS)
    kind = stats.metric_kind("val_acc")
    n = {lv: sizes[0] for lv in LEVELS}
    active = set(LEVELS) - {"ref"}  # levels still growing
    for look, cells in enumerate(rounds[1:]):
        seen = {lv: {s: v for s, v in results[lv].items() if s < n[lv]} for lv in LEVELS}
        comps = {c.level: c for c in stats.compare_levels(seen, "ref", kind, n_test=512, looks=len(sizes))}
        grown = {lv for lv, _ in cells if lv != "ref"}
        for lv, c in comps.items():
            needs = c.verdict == stats.NO_DIFFERENCE and 100 * c.adj_half_width > SETTINGS["target_halfwidth"]
            assert (lv in grown) == (needs and lv in active), (look, lv, c)
        active = grown
        for lv in grown:
            n[lv] = sizes[look + 1]
        n["ref"] = max(n[x] for x in comps)
    final = {c.level: c for c in stats.compare_levels(results, "ref", kind, n_test=512, looks=len(sizes))}
    for lv, c in final.items():  # every level ends decided, precise enough, or at max
        assert (c.verdict != stats.NO_DIFFERENCE or 100 * c.adj_half_width <= SETTINGS["target_halfwidth"]
                or len(results[lv]) == SETTINGS["max"]), (lv, c)
    assert final["big"].verdict == "better"


def test_a_restart_from_partial_results_asks_for_exactly_the_remaining_cells():
    results, rounds = simulate()
    rng = random.Random(3)
    done: dict[str, dict[int, float | None]] = {}
    for cells in rounds:
        for _ in range(4):
            part = rng.sample(cells, rng.randrange(len(cells)))  # killed part-way through the round
            partial = {lv: dict(by) for lv, by in done.items()}
            for lv, s in part:
                partial.setdefault(lv, {})[s] = results[lv][s]
            shuffled = {lv: dict(rng.sample(sorted(by.items()), len(by))) for lv, by in partial.items()}  # any order
            assert next_cells(shuffled, "ref", SETTINGS, levels=LEVELS, n_test=512) == \
                [c for c in cells if c not in part]
        for lv, s in cells:
            done.setdefault(lv, {})[s] = results[lv][s]
    assert next_cells(done, "ref", SETTINGS, levels=LEVELS, n_test=512) == []
    extra = {lv: {**by, 99: 0.5} for lv, by in done.items()}  # results the policy never asked for change nothing
    assert next_cells(extra, "ref", SETTINGS, levels=LEVELS, n_test=512) == []


def test_failed_cells_count_as_run_and_are_never_asked_again():
    failed = frozenset({("null", 1), ("ref", 4)})
    results, rounds = simulate(failed=failed)
    asked = [c for cells in rounds for c in cells]
    assert len(asked) == len(set(asked)) and all(c in asked for c in failed)
    assert results["null"][1] is None


def test_fixed_design_when_min_equals_max_and_the_plan_says_why():
    settings = {"min": 4, "max": 4, "target_halfwidth": 0.5}
    results, rounds = simulate(settings)
    assert len(rounds) == 1 and all(len(v) == 4 for v in results.values()) and look_sizes(settings) == (4,)
    plan = plan_seeds(results, "ref", settings, levels=LEVELS, n_test=512)
    assert plan.cells == [] and plan.reasons["big"].startswith("stopped at 4")
    first = plan_seeds({}, "ref", SETTINGS, levels=LEVELS)
    assert first.look == 0 and first.target_n == {lv: 3 for lv in LEVELS}


def test_settings_are_checked_and_read_from_objects():
    with pytest.raises(ValueError, match="min <= max"):
        SeedSettings(5, 3, 1.0)
    with pytest.raises(ValueError, match="target_halfwidth"):
        SeedSettings(2, 3, 0.0)
    with pytest.raises(ValueError, match="confidence"):
        SeedSettings(2, 3, 1.0, 1.5)

    class Validated:  # what a pydantic model from the study file looks like to the policy
        min, max, target_halfwidth, confidence = 2, 9, 0.5, 0.9

    assert SeedSettings.of(Validated()) == SeedSettings(2, 9, 0.5, 0.9)
    assert look_sizes(Validated()) == (2, 6, 9) and look_sizes({"min": 3, "max": 4, "target_halfwidth": 1}) == (3, 4)
    with pytest.raises(ValueError, match="reference level 'nope'"):
        next_cells({}, "nope", SETTINGS, levels=LEVELS)
