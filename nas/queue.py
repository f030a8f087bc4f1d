"""What a run of the driver queues, and what it takes over from a driver that died: bookkeeping between Optuna's study
and our store, through Optuna's public API only (`create_study`, `enqueue_trial`, `tell`, `get_trials`).

No Ray here. The Optuna study is opened on a storage object we keep (`OptunaLink`), so the storage's public methods
give Optuna's trial ids without reaching into the study.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from .errors import StudyConfigError
from .records import TrialOutcome, TrialStart, TrialState
from .schema import Study
from .space import SEED_PARAM, Cell
from .store import Store

KEY_ATTR = "nas:key"  # user attribute of an Optuna trial: its cell's key


@dataclass
class OptunaLink:
    """Our study in Optuna: the study object and the storage it was opened on (kept here, never read from the study)."""
    study: Any  # optuna.Study
    storage: Any  # optuna.storages.RDBStorage

    def trial_id(self, number: int) -> int:
        """Optuna's storage id of trial `number` (our rows keep it beside the number)."""
        study_id = self.storage.get_study_id_from_name(self.study.study_name)
        return self.storage.get_trial_id_from_study_id_trial_number(study_id, number)


def open_optuna(store: Store, study: Study) -> OptunaLink:
    """Create or load the study in Optuna's tables; its objectives must match the file's."""
    from .beside import wait_for_imports

    wait_for_imports()  # the head start on Optuna's imports (nas/beside.py), before this thread imports it too
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = store.optuna_storage()
    ot = optuna.create_study(storage=storage, study_name=study.name, load_if_exists=True, directions=study.directions,
                             sampler=_sampler(study))
    want = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in study.directions]
    if list(ot.directions) != want:
        raise StudyConfigError(f"study {study.name!r} already exists in {store.url} with objectives "
                               f"{[d.name.lower() for d in ot.directions]}; this file asks for {study.directions}. "
                               "Rename the study or use another --db.", key="objectives")
    return OptunaLink(ot, storage)


def _sampler(study: Study) -> Any:
    import optuna

    if study.kind == "grid":
        return optuna.samplers.RandomSampler(seed=0)  # never used: every grid trial is enqueued
    s = study.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True)


@dataclass(frozen=True)
class Takeover:
    """What a run found left by a driver that died."""
    stale: int  # Optuna trials it left running: failed and re-queued
    stale_params: list[dict[str, Any]]  # their parameters (a search asks those points again)
    kept: int  # trials Optuna saw finish while our row still said running: kept, not re-run


def take_over(store: Store, link: OptunaLink, study: Study, run_id: int | None) -> Takeover:
    """Fail what a dead driver left running, in our tables and in Optuna's, and keep what had in fact finished.

    A driver killed between Tune telling Optuna "complete" and our callback writing the result leaves a finished
    Optuna trial beside our running row: the trial did finish, so it is kept (with Optuna's values), not re-run."""
    from optuna.trial import TrialState as OT

    ot = link.study
    by_number = {t.number: t for t in ot.get_trials(deepcopy=False)}
    kept = 0
    for number, row in store.running_trials(study.name).items():
        t = by_number.get(number)
        if t is not None and t.state == OT.COMPLETE:
            values = dict(zip([o.metric for o in study.objectives], t.values or []))
            store.trial_finished(row, TrialState.COMPLETE, TrialOutcome(val_acc=values.get("val_acc"), values=values),
                                 error="finished while the driver stopped: values from Optuna, cost and model file "
                                       "not recorded")
            kept += 1
    ours = set(store.fail_stale_trials(study.name))
    stale_params = []
    for t in ot.get_trials(deepcopy=False, states=(OT.RUNNING,)):
        if t.number not in ours:  # it died before our row was written: the attempt is recorded now, as stale
            store.record_stale(study.name, run_id, TrialStart(
                number=t.number, optuna_trial_id=link.trial_id(t.number), key=str(t.user_attrs.get(KEY_ATTR, "")),
                levels={k: str(v) for k, v in t.params.items()}, params=dict(t.params), spec_id="", spec_json="",
                seed=int(t.params.get(SEED_PARAM, 0))))
        ot.tell(t.number, state=OT.FAIL, skip_if_finished=True)  # after our row: a kill in between redoes both
        stale_params.append(dict(t.params))
    return Takeover(len(stale_params), stale_params, kept)


def done_keys(store: Store, link: OptunaLink) -> set[str]:
    """Cells with a result, in our tables or (for a driver that died before writing it) in Optuna's."""
    from optuna.trial import TrialState as OT

    finished = link.study.get_trials(deepcopy=False, states=(OT.COMPLETE,))
    return store.completed_keys(link.study.study_name) | {t.user_attrs[KEY_ATTR] for t in finished
                                                          if t.user_attrs.get(KEY_ATTR)}


@dataclass(frozen=True)
class Queued:
    to_run: int  # trials this round will run (waiting in Optuna's queue, or a search's remaining budget)
    skipped: int  # cells already done


def enqueue_cells(store: Store, link: OptunaLink, study: Study, cells: Sequence[Cell], *,
                  retry_failed: bool) -> Queued:
    """Put every cell that is not done (nor failed, unless `retry_failed`, nor already waiting) in Optuna's queue."""
    from optuna.trial import TrialState as OT

    ot = link.study
    waiting = ot.get_trials(deepcopy=False, states=(OT.WAITING,))
    waiting_keys = {t.user_attrs.get(KEY_ATTR) for t in waiting}
    done = done_keys(store, link)
    failed = {t.key for t in store.trials(study.name, states=(TrialState.FAILED,))} - done
    new = skipped = 0
    for c in cells:
        if c.key in done:
            skipped += 1
        elif c.key in waiting_keys or (c.key in failed and not retry_failed):
            continue
        else:
            ot.enqueue_trial(c.params, user_attrs={KEY_ATTR: c.key})
            waiting_keys.add(c.key)
            new += 1
    return Queued(len(waiting) + new, skipped)


def search_budget(store: Store, link: OptunaLink, study: Study, stale_params: list[dict[str, Any]]) -> Queued:
    """A search: ask the stale points again first, then sample until `n_trials` have finished or failed."""
    for p in stale_params:
        link.study.enqueue_trial(p)
    finished = len(store.trials(study.name, states=TrialState.FINISHED))
    return Queued(max(0, study.search.n_trials - finished), len(done_keys(store, link)))


__all__ = ["KEY_ATTR", "OptunaLink", "Queued", "Takeover", "done_keys", "enqueue_cells", "open_optuna",
           "search_budget", "take_over"]
