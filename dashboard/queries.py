"""Read-only access to the study database for the dashboard and `nas report`: database rows in, plain data out.

Everything goes through `nas.store.Store(url, read_only=True)`: our tables, and Optuna's through the same store's
`optuna_storage()` (for the search views); nothing here writes. SQLite files are opened with `mode=ro`, so even a bug
could not change a study while its driver runs.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from nas.errors import StoreError
from nas.records import RunRecord, StudyRecord, TrialView
from nas.store import Store, optuna_storage


def open_store(url: str) -> Store:
    """Our tables at `url`, read-only (raises StoreError with a hint when the database is missing)."""
    return Store(url, read_only=True)


# ------------------------------------------------------------------------------------------------ studies list
def study_list(store: Store) -> list[dict[str, Any]]:
    """One display row per study, newest first (the input of `figures.studies_table`): status, trials done /
    running / failed (stale included), best accuracy, last update."""
    return [{"name": r.name, "question": r.question, "kind": r.kind, "status": r.status, "done": r.done,
             "running": r.running, "failed": r.failed, "cells": r.cells, "best_val_acc": r.best_val_acc,
             "updated_at": r.updated_at} for r in store.studies()]


def fingerprint(store: Store, name: str) -> str:
    """Changes whenever a study's trials or status change (the live view redraws only then, or while running)."""
    for r in store.studies():
        if r.name == name:
            return json.dumps([r.status, {s.value: n for s, n in r.counts.items()}, str(r.updated_at)])
    return ""


# ------------------------------------------------------------------------------------------------- one study
@dataclass
class StudyData:
    """What every view of one study starts from."""
    name: str
    info: StudyRecord
    trials: list[TrialView]

    @property
    def config(self) -> dict[str, Any]:
        """The study as it ran (its validated file as JSON)."""
        return self.info.config

    @property
    def is_grid(self) -> bool:
        return bool(self.config.get("factors"))

    @property
    def metrics(self) -> list[str]:
        """The study's objectives first, then the other numbers every trial carries."""
        objs = [o["metric"] for o in self.config.get("objectives") or [] if "metric" in o]
        return list(dict.fromkeys([*objs, "val_acc", "val_loss", "throughput", "params", "flops"]))


def load_study(store: Store, name: str) -> StudyData:
    """The study's stored config and runs, and every trial attempt (StoreError names the known studies)."""
    return StudyData(name, store.study(name), store.trials(name))


def epochs_by_trial(store: Store, trial_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """Per-epoch curves of the given trials."""
    return {tid: store.epochs(tid) for tid in trial_ids}


def find_trial(data: StudyData, number: int) -> TrialView:
    """The latest attempt of trial `number` (a retried trial keeps its number)."""
    matches = [t for t in data.trials if t.number == number]
    if not matches:
        raise StoreError(f"study {data.name!r} has no trial number {number}")
    return matches[-1]


def run_of(info: StudyRecord, trial: TrialView) -> RunRecord | None:
    """The driver run a trial started in (its code version and hardware): the last run started before it."""
    return info.run_of(trial.started_at)


def model_file(store: Store, trial: TrialView) -> Path | None:
    """The trial's model file when it exists on this machine (only files the database lists are ever served)."""
    arts = [a for a in store.artifacts(trial.id) if a.kind == "model"]
    if not arts:
        return None
    p = Path(arts[-1].path)
    return p if p.is_file() else None


# ---------------------------------------------------------------------------------------- Optuna (search view)
@dataclass
class SearchData:
    """Optuna's side of a study: its trials as plain rows, objective names/directions, parameter importances."""
    objectives: list[str]
    directions: list[str]  # maximize | minimize
    trials: list[dict[str, Any]]  # number, state, params, values (list or None), datetime_complete
    importances: dict[str, float] = field(default_factory=dict)
    importance_note: str = ""


@lru_cache(maxsize=8)
def _storage_cached(url: str):  # noqa: ANN202 - optuna.storages.RDBStorage
    return optuna_storage(url, read_only=True)  # as `Store(url, read_only=True).optuna_storage()` opens it


def search_data(url: str, data: StudyData, *, importance: bool = True) -> SearchData:
    """Optuna's trials of the study (empty when Optuna has no study of that name) and, with two or more finished
    trials whose parameters vary, fANOVA importances of the first objective (seeded, so a report is repeatable)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    objectives = [o["metric"] for o in data.config.get("objectives") or [{"metric": "val_acc"}]]
    try:
        study = optuna.load_study(study_name=data.name, storage=_storage_cached(url))
    except KeyError:
        return SearchData(objectives, [], [], {}, "Optuna holds no study of this name")
    directions = [d.name.lower() for d in study.directions]
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({"number": t.number, "state": t.state.name.lower(), "params": dict(t.params),
                     "values": list(t.values) if t.values is not None else None,
                     "datetime_complete": t.datetime_complete})
    imp, note = {}, ""
    if importance:
        imp, note = _importances(study)
    return SearchData(objectives[:len(directions)] or objectives, directions, rows, imp, note)


def _importances(study: Any) -> tuple[dict[str, float], str]:
    import optuna
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, "parameter importance needs at least two finished trials"
    varying = [p for p in {k for t in done for k in t.params}
               if len({json.dumps(t.params.get(p), default=str) for t in done}) > 1]
    if not varying:
        return {}, "no parameter varies across the finished trials"
    target = None if len(study.directions) == 1 else (lambda t: t.values[0])
    try:
        imp = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0), params=sorted(varying),
            target=target)
    except (RuntimeError, ValueError) as e:
        return {}, f"importance not available: {e}"
    return {k: float(v) for k, v in imp.items() if v == v and not math.isinf(v)}, ""


# ---------------------------------------------------------------------------------------- sequence lengths
@lru_cache(maxsize=4096)
def sequence_length(spec_json: str, img_size: int) -> int | None:
    """Tokens the first stage's mixer sees (class tokens included) for the spec at `img_size`: built on the meta
    device, so no memory is allocated and the tokenizer's own arithmetic decides."""
    from blocks import ArchSpec, build_backbone
    from blocks.errors import NasError

    try:
        spec = ArchSpec.from_json(spec_json).with_overrides({"img_size": int(img_size)})
        return int(build_backbone(spec, device="meta").layout.length)
    except (NasError, ValueError, TypeError, RuntimeError):
        return None


def display_url(url: str) -> str:
    """The database URL as pages show it: a password is replaced by ***."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def as_text(value: Any) -> str:
    """Dates and numbers as the views print them."""
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    return "" if value is None else str(value)


__all__ = ["SearchData", "StudyData", "as_text", "display_url", "epochs_by_trial", "find_trial",
           "fingerprint", "load_study", "model_file", "open_store", "run_of", "search_data", "sequence_length",
           "study_list"]
