"""The driver's loop over a study: take over from a dead driver, queue what is not done, run it, then ask for the next
round (adaptive seeding) until there is none. No Ray here: the rounds are run by a `RoundRunner` (Ray Tune's, in
`nas.execute`), so the loop and its bookkeeping are testable without a cluster.

Only the driver writes the database; what runs where is the runner's business.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from .errors import StudyConfigError
from .plan import Plan
from .queue import OptunaLink, enqueue_cells, open_optuna, search_budget, take_over
from .rounds import DEFAULT_POLICY, SeedPolicy, next_round
from .space import existing_distributions, grid_distributions
from .store import Store

EventFn = Callable[[str, dict[str, Any]], None]  # (kind: start | retry | epoch | complete | stopped | failed, info)
QueuedFn = Callable[[int, int, int, int], None]  # (round, trials to run, stale re-queued, cells already done)


@dataclass
class Outcome:
    study: str
    url: str
    queued: int
    completed: int
    failed: int
    stale_requeued: int
    skipped_done: int
    wall_seconds: float
    interrupted: bool = False
    rounds: int = 1


@dataclass
class RunContext:
    """What a runner needs of this run of the driver."""
    plan: Plan
    store: Store
    optuna: OptunaLink
    run_id: int
    on_event: EventFn


@dataclass(frozen=True)
class Round:
    number: int  # 1-based
    to_run: int  # trials to run: waiting in Optuna's queue (a grid) or the remaining budget (a search)


class RoundRunner(Protocol):
    def run_round(self, ctx: RunContext, rnd: Round) -> bool:
        """Run the round's trials, writing through `ctx`; False when interrupted (Ctrl+C)."""

    def close(self) -> None:
        """Release what the rounds used (a local Ray); called once, after the last round."""


RESULT_SETTINGS = ("data", "train")  # what a trial's result depends on beyond its spec and seed (its key)


def refuse_changed_settings(store: Store, plan: Plan) -> None:
    """A trial's key is (study, spec, seed): the data and training settings are not in it. So a study whose `data` or
    `train` changed since its trials finished would count those trials as done and mix them into a table of the new
    settings. Refuse that, naming what changed (exit 2 at the CLI); a new database or study name keeps both."""
    from .errors import StoreError
    from .records import TrialState

    try:
        old = store.study(plan.study.name).config
    except StoreError:
        return  # a new study
    new = plan.study.model_dump(mode="json")
    changed = [f"{sec}.{k}: {old.get(sec, {}).get(k)!r} -> {new[sec].get(k)!r}" for sec in RESULT_SETTINGS
               for k in sorted(set(old.get(sec) or {}) | set(new[sec]))
               if (old.get(sec) or {}).get(k) != new[sec].get(k)]
    if changed and store.trials(plan.study.name, states=(TrialState.COMPLETE, TrialState.STOPPED)):
        raise StudyConfigError(
            f"study {plan.study.name!r} in {store.url} has finished trials run with other settings ("
            + "; ".join(changed) + "): resuming would mix them into this run's table. Run it with another --db, or "
            "rename the study (its `name`) to keep both", file=str(plan.file.path), key=changed[0].split(":")[0])


def run_study(plan: Plan, store: Store, runner: RoundRunner, *, command: str = "", retry_failed: bool = False,
              on_event: EventFn = lambda kind, info: None, on_queued: QueuedFn = lambda r, q, s, d: None,
              policy: SeedPolicy | None = DEFAULT_POLICY) -> Outcome:
    """Queue what is not done yet and run it, round after round; returns counts for the closing summary."""
    t0 = time.perf_counter()
    study = plan.study
    other = store.active_driver(study.name)
    if other:
        raise StudyConfigError(f"study {study.name!r} is being run right now by driver {other} (database "
                               f"{store.url}); wait for it to finish or stop it, then run this command again to "
                               "resume", key="name")
    refuse_changed_settings(store, plan)
    link = open_optuna(store, study)
    if plan.is_grid:  # a new level, or seeds beyond a stored list, Optuna cannot take: say so before writing
        grid_distributions(study, existing_distributions(link.study))
    store.upsert_study(name=study.name, question=study.question, kind=study.kind, study_yaml=plan.file.text,
                       config=study.model_dump(mode="json"), search_space_yaml=Path(plan.space.path).read_text(),
                       n_cells=plan.n_trials)
    store.mark_interrupted_runs(study.name)
    run_id = store.start_run(study.name, command)
    counts = {"complete": 0, "failed": 0, "stopped": 0}

    def event(kind: str, info: dict[str, Any]) -> None:
        if kind in counts:
            counts[kind] += 1
        on_event(kind, info)

    ctx = RunContext(plan, store, link, run_id, event)
    status, queued, skipped, rnd, stale = "finished", 0, 0, 0, 0
    try:
        takeover = take_over(store, link, study, run_id)
        stale = takeover.stale
        cells = plan.cells
        while True:
            rnd += 1
            q = enqueue_cells(store, link, study, cells, retry_failed=retry_failed) if plan.is_grid else \
                search_budget(store, link, study, takeover.stale_params)
            on_queued(rnd, q.to_run, stale if rnd == 1 else 0, q.skipped)
            skipped = q.skipped if rnd == 1 else skipped
            if q.to_run == 0 and rnd > 1:
                break  # what the policy asks for is all done, failed or waiting: nothing more to learn
            queued += q.to_run
            if q.to_run and not runner.run_round(ctx, Round(rnd, q.to_run)):
                status = "interrupted"
                break
            cells = next_round(plan, store.trials(study.name), policy)
            if not cells:
                break
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException:
        status = "failed"
        raise
    finally:
        try:
            runner.close()
        finally:
            wall = time.perf_counter() - t0
            store.finish_run(run_id, status, wall)
    return Outcome(study.name, store.url, queued, counts["complete"] + counts["stopped"], counts["failed"], stale,
                   skipped, wall, interrupted=status != "finished", rounds=rnd)


__all__ = ["EventFn", "Outcome", "QueuedFn", "Round", "RoundRunner", "RunContext", "run_study"]
