"""Search spaces and the study → trial mapping: which `ArchSpec` and seed each trial trains.

A search space file (`search_spaces/NAME.yaml`) gives a base architecture (a preset plus overrides, or a full spec)
and the choices studies may vary (dotted spec keys → allowed values or ranges). A study's `fixed` choices, then one
trial's factor levels (grid) or sampled values (search) are applied on top; image size and class count come from the
data; a parameter budget, if the study has one, then solves the width or depth.

Grid cells are keyed by (study, spec id, seed): the key is what makes a resumed study skip finished work.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Mapping

from blocks import ArchSpec, InvalidSpecError, NasError, get_preset

from .config import SEARCH_SPACES_DIR, load_yaml
from .errors import StudyConfigError
from .schema import SEED_HIGH, FloatRange, IntRange, Study, VariantFactor, level_name, unknown_message

SEED_PARAM = "seed"


@dataclass(frozen=True)
class SearchSpace:
    name: str
    path: str
    description: str
    base: dict[str, Any]  # an ArchSpec dict
    choices: dict[str, Any]  # dotted key → list of allowed values or {low, high}


@dataclass(frozen=True)
class Cell:
    """One trial of a study: where it sits (factor levels or sampled values), its seed and its architecture."""
    levels: dict[str, str]  # factor → level name (grid) or key → value as text (search)
    seed: int
    spec: ArchSpec
    key: str
    params: dict[str, Any]  # the Optuna parameters that name this trial
    budget: dict[str, Any] = field(default_factory=dict)  # how the parameter budget was met, if any


@dataclass(frozen=True)
class Arm:
    """One combination of a grid's factor levels with its resolved spec; its cells are its seeds."""
    levels: dict[str, str]
    spec: ArchSpec
    budget: dict[str, Any] = field(default_factory=dict)

    def cell(self, study_name: str, seed: int) -> Cell:
        return Cell(self.levels, seed, self.spec, cell_key(study_name, self.spec.id, seed),
                    {**self.levels, SEED_PARAM: seed}, self.budget)


def load_search_space(name: str, *, file: str | None = None) -> SearchSpace:
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else \
        [SEARCH_SPACES_DIR / f"{name}.yaml"] + ([Path(file).resolve().parent.parent / SEARCH_SPACES_DIR /
                                                 f"{name}.yaml"] if file else [])
    path = next((c for c in candidates if c.is_file()), candidates[0])
    if not path.is_file():
        known = sorted(p.stem for p in SEARCH_SPACES_DIR.glob("*.yaml")) if SEARCH_SPACES_DIR.is_dir() else []
        raise StudyConfigError(unknown_message("search space", name, known) + f" (looked for {path})", file=file,
                               key="search_space")
    raw = load_yaml(path)
    where = str(path)
    extra = set(raw) - {"name", "description", "base", "choices"}
    if extra:
        raise StudyConfigError(f"unknown key {sorted(extra)[0]!r}; allowed: name, description, base, choices",
                               file=where, key=sorted(extra)[0])
    base_cfg = raw.get("base")
    if not isinstance(base_cfg, dict) or not ({"preset", "spec"} & set(base_cfg)):
        raise StudyConfigError("`base` must give `preset: NAME` (with optional `overrides:`) or `spec: {...}`",
                               file=where, key="base")
    try:
        if "preset" in base_cfg:
            base = get_preset(str(base_cfg["preset"])).to_dict()
        else:
            base = ArchSpec.from_dict(base_cfg["spec"]).to_dict()
        base = apply_overrides(base, base_cfg.get("overrides") or {})
        ArchSpec.from_dict(base)
    except NasError as e:
        raise StudyConfigError(str(e), file=where, key="base") from None
    choices = raw.get("choices") or {}
    if not isinstance(choices, dict):
        raise StudyConfigError("`choices` must map dotted spec keys to lists of allowed values", file=where,
                               key="choices")
    return SearchSpace(str(raw.get("name", path.stem)), where, str(raw.get("description", "")), base, choices)


def apply_overrides(spec_dict: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Dotted keys into an ArchSpec dict, with list indices (`dims.0`). Renaming a component (`mixer.name`, or a
    whole `mixer: {...}`) drops the old component's parameters unless they are given too."""
    data = copy.deepcopy(spec_dict)
    for key in sorted(overrides, key=lambda k: k.count(".")):
        value = copy.deepcopy(overrides[key])
        parts = key.split(".")
        node: Any = data
        for i, p in enumerate(parts[:-1]):
            node = _child(node, p, key)
        last = parts[-1]
        if isinstance(node, list):
            idx = _index(node, last, key)
            node[idx] = value
            continue
        if not isinstance(node, dict):
            raise InvalidSpecError(f"cannot set {key!r}: {'.'.join(parts[:-1])} is a value, not a group")
        if last == "name" and len(parts) == 2 and node.get("name") != value:
            node["params"] = {}
        if isinstance(value, dict) and isinstance(node.get(last), dict) and "name" in value and \
                value.get("name") != node[last].get("name"):
            value.setdefault("params", {})
        node[last] = value
    return data


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, key)]
    if not isinstance(node, dict) or part not in node or not isinstance(node[part], (dict, list)):
        known = sorted(node) if isinstance(node, dict) else []
        raise InvalidSpecError(f"cannot set {key!r}: no group {part!r} here" +
                               (f" (groups and keys: {', '.join(known)})" if known else ""))
    return node[part]


def _index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise InvalidSpecError(f"cannot set {key!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


# ------------------------------------------------------------------------------------------------ specs
def trial_spec(study: Study, space: SearchSpace, overrides: dict[str, Any], *, img_size: int,
               num_classes: int, file: str | None = None, where: str = "fixed") -> tuple[ArchSpec, dict[str, Any]]:
    """The validated spec of one trial, and how its parameter budget was met ({} without a budget)."""
    merged = {**study.fixed, **overrides, "img_size": img_size, "num_classes": num_classes}
    try:
        spec = ArchSpec.from_dict(apply_overrides(space.base, merged))
    except NasError as e:
        raise StudyConfigError(f"{e}", file=file, key=where) from None
    if study.budget is None:
        return spec, {}
    from .budget import match_budget

    try:
        m = match_budget(spec, study.budget.params, tolerance=study.budget.tolerance, solve=study.budget.solve)
    except StudyConfigError as e:
        raise StudyConfigError(e.detail, file=file, key="budget") from None
    except NasError as e:
        raise StudyConfigError(f"{e}", file=file, key="budget") from None
    return m.spec, {"params": m.params, "relative_error": m.relative_error, "knob": m.knob, "value": m.value}


def _check_choice(space: SearchSpace, key: str, value: Any, file: str | None, where: str) -> None:
    allowed = space.choices.get(key)
    if isinstance(allowed, list) and value not in allowed:
        raise StudyConfigError(f"{value!r} is not allowed for {key!r} by search space {space.name!r}; allowed: "
                               f"{', '.join(map(str, allowed))}", file=file, key=where)
    numbers = value if isinstance(value, (list, tuple)) else [value]
    if isinstance(allowed, dict) and all(isinstance(v, (int, float)) for v in numbers):
        lo, hi = allowed.get("low"), allowed.get("high")
        if any((lo is not None and v < lo) or (hi is not None and v > hi) for v in numbers):
            raise StudyConfigError(f"{value!r} for {key!r} is outside search space {space.name!r}'s range "
                                   f"[{lo}, {hi}]", file=file, key=where)


def level_overrides(study: Study, factor: str, level: str) -> dict[str, Any]:
    levels = study.factors[factor]
    if isinstance(levels, VariantFactor):
        return dict(levels.levels[level])
    value = next(v for v in levels if level_name(v) == level)
    return {factor: value}


def grid_arms(study: Study, space: SearchSpace, *, img_size: int, num_classes: int,
              file: str | None = None) -> list[Arm]:
    """Every factor combination with its resolved spec (and parameter budget). Two levels that build the same model
    are an error (the ablation could not tell them apart)."""
    for key, value in study.fixed.items():
        _check_choice(space, key, value, file, f"fixed.{key}")
    names = list(study.factors)
    arms: list[Arm] = []
    seen: dict[str, dict[str, str]] = {}
    for combo in product(*(study.level_names(f) for f in names)):
        levels = dict(zip(names, combo))
        overrides: dict[str, Any] = {}
        for f, lv in levels.items():
            for k, v in level_overrides(study, f, lv).items():
                _check_choice(space, k, v, file, f"factors.{f}")
                overrides[k] = v
        where = "factors." + ",".join(f"{f}={lv}" for f, lv in levels.items())
        try:
            spec, budget = trial_spec(study, space, overrides, img_size=img_size, num_classes=num_classes,
                                      file=file, where=where)
        except StudyConfigError as e:
            raise StudyConfigError(e.detail, file=file, key=_blame(study.fixed, e.detail, e.key)) from None
        if spec.id in seen:
            raise StudyConfigError(f"levels {seen[spec.id]} and {levels} build the same model (spec {spec.id}); "
                                   "drop one of them", file=file, key="factors")
        seen[spec.id] = levels
        arms.append(Arm(levels, spec, budget))
    return arms


def expand_grid(study: Study, space: SearchSpace, *, img_size: int, num_classes: int, file: str | None = None,
                seeds: list[int] | None = None) -> list[Cell]:
    """Every factor combination × every seed of the first round (or `seeds`), each with its idempotent key, seed by
    seed (every combination's first seed, then every combination's second, ...)."""
    arms = grid_arms(study, space, img_size=img_size, num_classes=num_classes, file=file)
    return [a.cell(study.name, seed) for seed in (study.initial_seeds if seeds is None else seeds) for a in arms]


def _blame(fixed: dict[str, Any], message: str, default: str | None) -> str | None:
    """An unknown name quoted from a `fixed` value is that value's fault, not the grid cell's (clashes between
    choices stay with the cell, whose levels are part of the clash)."""
    if "unknown" not in message.lower():
        return default
    for key, value in fixed.items():
        if not isinstance(value, (dict, list)) and repr(value) in message:
            return f"fixed.{key}"
        if isinstance(value, dict) and isinstance(value.get("name"), str) and repr(value["name"]) in message:
            return f"fixed.{key}"
    return default


def cell_key(study_name: str, spec_id: str, seed: int) -> str:
    return f"{study_name}/{spec_id}/s{seed}"



def grid_distributions(study: Study, existing: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Optuna distributions naming a grid cell: one categorical per factor plus the seed, an integer range, so that
    seeds can be added to a study that has run (more seeds is how an answer firms up). `existing`: the distributions
    the study's Optuna trials already have (`existing_distributions`); Optuna fixes a categorical's choices for the
    life of a study, so a factor keeps its stored levels (dropping one is fine), and a study first run with seeds as
    a categorical (before this range) keeps that. A new level, or a seed beyond such a stored list, cannot be
    expressed: StudyConfigError, before anything is written."""
    from optuna.distributions import CategoricalDistribution, IntDistribution

    old = dict(existing or {})
    dists: dict[str, Any] = {}
    for f in study.factors:
        levels, stored = study.level_names(f), old.get(f)
        dists[f] = CategoricalDistribution(levels) if stored is None else stored
        if stored is not None and not set(levels) <= set(stored.choices):
            raise StudyConfigError(
                f"factor {f!r} has levels the study's first run did not have ({sorted(set(levels) - set(stored.choices))}"
                f"; it ran with {list(stored.choices)}): Optuna keeps a factor's levels for the life of a study. Run "
                "the new levels with another --db, or rename the study (its `name`)", key=f"factors.{f}")
    stored = old.get(SEED_PARAM)
    if isinstance(stored, CategoricalDistribution):  # a study first run before seeds became a range
        if not set(study.max_seeds) <= set(stored.choices):
            raise StudyConfigError(
                f"this study's database fixed its seeds as {list(stored.choices)} when it first ran (an earlier "
                f"version of the platform); seeds {sorted(set(study.max_seeds) - set(stored.choices))} cannot be "
                "added to it. Run with another --db, or rename the study", key="seeds")
        dists[SEED_PARAM] = stored
    else:
        dists[SEED_PARAM] = IntDistribution(0, SEED_HIGH)
    return dists


def existing_distributions(ot_study: Any) -> dict[str, Any]:
    """The distribution each parameter has in an Optuna study's trials (the first trial that has it)."""
    found: dict[str, Any] = {}
    for t in ot_study.get_trials(deepcopy=False):
        for name, dist in t.distributions.items():
            found.setdefault(name, dist)
    return found


def suggest_fixed(trial: Any, name: str, dist: Any) -> Any:
    """Suggest `name` from `dist` on an Optuna trial whose value is already fixed (an enqueued grid cell)."""
    from optuna.distributions import CategoricalDistribution

    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    return trial.suggest_int(name, dist.low, dist.high)


def search_distributions(study: Study) -> dict[str, Any]:
    """Optuna distributions of a sampled search (lists of non-scalars are offered by their YAML text)."""
    import optuna

    assert study.search is not None
    dists: dict[str, Any] = {}
    for key, c in study.search.space.items():
        if isinstance(c, IntRange):
            dists[key] = optuna.distributions.IntDistribution(c.low, c.high, step=c.step, log=c.log)
        elif isinstance(c, FloatRange):
            dists[key] = optuna.distributions.FloatDistribution(c.low, c.high, log=c.log)
        else:
            dists[key] = optuna.distributions.CategoricalDistribution([level_name(v) for v in c])
    return dists


def search_overrides(study: Study, params: dict[str, Any]) -> dict[str, Any]:
    """Sampled Optuna parameters → spec overrides (categorical values mapped back from their text)."""
    import yaml

    assert study.search is not None
    out: dict[str, Any] = {}
    for key, c in study.search.space.items():
        v = params[key]
        if isinstance(c, list):
            v = next((x for x in c if level_name(x) == v), yaml.safe_load(v) if isinstance(v, str) else v)
        if key in ("dims", "depths") and isinstance(v, int):
            v = [v]
        out[key] = v
    return out


def search_cell(study: Study, space: SearchSpace, params: dict[str, Any], *, img_size: int,
                num_classes: int) -> Cell:
    """A sampled point of a search as a cell (its spec resolved here, in the driver; StudyConfigError if invalid)."""
    overrides = search_overrides(study, params)
    spec, budget = trial_spec(study, space, overrides, img_size=img_size, num_classes=num_classes, where="search")
    seed = study.initial_seeds[0]
    return Cell({k: level_name(v) for k, v in params.items()}, seed, spec, cell_key(study.name, spec.id, seed),
                dict(params), budget)


__all__ = ["SEED_HIGH", "SEED_PARAM", "Arm", "Cell", "SearchSpace", "apply_overrides", "cell_key",
           "existing_distributions", "expand_grid", "grid_arms", "grid_distributions", "load_search_space",
           "search_cell", "search_distributions", "suggest_fixed", "trial_spec"]
