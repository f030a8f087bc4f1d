"""Ray Tune's two hooks into the driver, on public Ray and Optuna APIs: the searcher (Tune asks it what to run next;
it asks Optuna and resolves the cell) and the callback (Tune tells it what happened; it writes the store).

The searcher resolves each trial's cell once, in the driver, and puts it in the trial's config (`TASK`): the worker
trains it as given and the callback records it as given. An invalid sampled point of a search is recorded as failed
and never reaches a worker.

Both run in the driver's one thread, for every trial and every epoch of a study, so each keeps its database work per
event small and constant (benchmarks/bench_scale.py measured what grows): a grid's cells are claimed from Optuna's
queue directly, not through `study.ask` (which re-reads every unfinished trial of the study from the database each
time); an epoch's value goes to Optuna only when a trial is stopped early (the one value PRUNED keeps); and the
callback writes epochs in batches, one transaction per `FLUSH_S`.
"""

from __future__ import annotations

import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.search import Searcher

from blocks import NasError

from .driver import Round, RunContext
from .database import EPOCH_METRICS
from .queue import KEY_ATTR
from .records import EpochReport, TrialOutcome, TrialStart, TrialState
from .space import existing_distributions, grid_distributions, search_distributions, suggest_fixed
from .trainable import TASK
from .worker import FINAL, MODEL_FILE

# the callback writes the epochs reported in the last second in one transaction (NAS_EPOCH_FLUSH_S=0: every report
# at once, as drills that kill the driver mid-trial need for trials shorter than a second)
FLUSH_S = float(os.environ.get("NAS_EPOCH_FLUSH_S", "1.0"))
EPOCH_KEYS = (*EPOCH_METRICS, "node_id", "device")  # what of an epoch's report the store keeps


class StudySearcher(Searcher):
    """Tune's searcher over our Optuna study: the next cell (a grid's, claimed from Optuna's queue; a search's, asked
    of Optuna's sampler), resolved; then `tell` the outcome (FAIL for a trial that errored after reporting epochs,
    PRUNED for one ASHA stopped)."""

    def __init__(self, ctx: RunContext, rnd: Round) -> None:
        st = ctx.plan.study
        metrics = [o.metric for o in st.objectives]
        modes = ["max" if d == "maximize" else "min" for d in st.directions]
        super().__init__(metric=metrics if len(metrics) > 1 else metrics[0],
                         mode=modes if len(modes) > 1 else modes[0])
        self.ctx, self.left, self.metrics = ctx, rnd.to_run, metrics
        self.distributions = grid_distributions(st, existing_distributions(ctx.optuna.study)) if ctx.plan.is_grid \
            else search_distributions(st)
        self.asked: dict[str, Any] = {}  # Tune trial id → optuna.Trial
        self.last: dict[str, tuple[float, int]] = {}  # Tune trial id → its last (value, epoch) of one objective
        # a grid's round runs the cells waiting in Optuna's queue (`nas.queue.enqueue_cells`), in Optuna's order
        self.waiting: deque[int] = deque(t.number for t in ctx.optuna.study.get_trials(
            deepcopy=False, states=(_ot_state("WAITING"),))) if ctx.plan.is_grid else deque()

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # our metric, mode and space come from the study

    # Tune pickles its searcher with the experiment state, for `Tuner.restore`, which we do not use (the store and
    # Optuna's tables resume a study): the live objects (store, Optuna study, event sink) stay in this process.
    def __getstate__(self) -> dict[str, Any]:
        return {"left": self.left, "metrics": self.metrics}

    def save(self, checkpoint_path: str) -> None:
        """Nothing to save: a study resumes from its database."""

    def restore(self, checkpoint_path: str) -> None:
        raise NotImplementedError("a study resumes from its database: run `nas run` again")

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        while self.left > 0:
            self.left -= 1
            if self.ctx.plan.is_grid:
                claimed = self._claim_waiting()
                if claimed is None:  # the queue ran dry (another driver took the rest)
                    self.left = 0
                    break
                ot_trial, ot_id = claimed
            else:
                ot_trial = self.ctx.optuna.study.ask(fixed_distributions=self.distributions)
                ot_id = self.ctx.optuna.trial_id(ot_trial.number)
            start = self._resolve(ot_trial, ot_id)
            if start is not None:
                self.asked[trial_id] = ot_trial
                return {**ot_trial.params, TASK: start.as_config()}
        return Searcher.FINISHED

    def _claim_waiting(self) -> tuple[Any, int] | None:
        """The next cell waiting in Optuna's queue, taken as `study.ask` takes it (WAITING → RUNNING; its enqueued
        parameters suggested), but without `ask`'s read of every unfinished trial of the study, which Optuna's RDB
        cache repeats on each call: O(trials running + waiting) per trial, the first thing that slowed a large grid
        (benchmarks/RESULTS.md, "Scale"). None when none is left."""
        import optuna

        link = self.ctx.optuna
        while self.waiting:
            number = self.waiting.popleft()
            ot_id = link.trial_id(number)
            try:
                if not link.storage.set_trial_state_values(ot_id, state=_ot_state("RUNNING")):
                    continue  # another process took it first
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            trial = optuna.Trial(link.study, ot_id)
            for name, dist in self.distributions.items():  # the enqueued values, recorded with their distributions
                suggest_fixed(trial, name, dist)
            return trial, ot_id
        return None

    def _resolve(self, ot_trial: Any, ot_id: int) -> TrialStart | None:
        """The asked trial's cell (a grid's looked up, a search's resolved now), or None when the point is invalid:
        then it is told FAIL and recorded as a failed attempt without training."""
        plan, params, number = self.ctx.plan, dict(ot_trial.params), ot_trial.number
        if plan.is_grid and KEY_ATTR not in ot_trial.user_attrs:  # not one of ours: enqueued by someone else
            self.ctx.optuna.study.tell(ot_trial, state=_ot_state("FAIL"))
            self.left = 0
            return None
        try:
            cell = plan.grid_cell(params) if plan.is_grid else plan.resolve_point(params)
        except NasError as e:
            self.ctx.optuna.study.tell(ot_trial, state=_ot_state("FAIL"))
            record_invalid(self.ctx, number, ot_id, params, str(e))
            return None
        if not plan.is_grid:  # a grid's cell carries its key from the queue
            ot_trial.set_user_attr(KEY_ATTR, cell.key)
        return TrialStart(number=number, optuna_trial_id=ot_id, key=cell.key, levels=cell.levels,
                          params=dict(cell.params), spec_id=cell.spec.id, spec_json=cell.spec.to_json(),
                          seed=cell.seed, budget=dict(cell.budget))

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self.asked and len(self.metrics) == 1 and result.get(self.metrics[0]) is not None \
                and "epoch" in result:
            self.last[trial_id] = (float(result[self.metrics[0]]), int(result["epoch"]))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        ot_trial = self.asked.pop(trial_id, None)
        last = self.last.pop(trial_id, None)
        if ot_trial is None:
            return
        tell = self.ctx.optuna.study.tell
        values = [None if result is None else result.get(m) for m in self.metrics]
        if error or result is None:
            tell(ot_trial, state=_ot_state("FAIL"), skip_if_finished=True)
        elif not result.get(FINAL):  # stopped early (ASHA): Optuna keeps the last reported value
            if last is not None:
                ot_trial.report(*last)
            tell(ot_trial, state=_ot_state("PRUNED"), skip_if_finished=True)
        elif any(v is None for v in values):
            tell(ot_trial, state=_ot_state("FAIL"), skip_if_finished=True)
        else:
            tell(ot_trial, [float(v) for v in values], skip_if_finished=True)


def _ot_state(name: str) -> Any:
    from optuna.trial import TrialState as OT

    return OT[name]


def record_invalid(ctx: RunContext, number: int, ot_id: int, params: dict[str, Any], error: str) -> None:
    """A sampled point that is not a valid model: one failed attempt in the store, no training."""
    st = ctx.plan.study
    seed = st.initial_seeds[0]
    row = ctx.store.trial_started(st.name, ctx.run_id, TrialStart(
        number=number, optuna_trial_id=ot_id, key=f"{st.name}/invalid/{number}",
        levels={k: str(v) for k, v in params.items()}, params=params, spec_id="", spec_json="", seed=seed,
        budget={"error": error}))
    ctx.store.trial_finished(row, TrialState.FAILED, error=f"invalid sampled point: {error}")
    ctx.on_event("failed", {"trial": f"optuna-{number}", "error": f"invalid sampled point: {error}"})


class StoreCallback(tune.Callback):
    """Runs in the driver: the only writer of the study database. Epochs are written in batches (`flush`: every
    `flush_s` seconds, before a trial's end is written, at the end of the round), a trial's start and end at once.
    Tune pickles its callbacks with the experiment state (for `Tuner.restore`, which we do not use: the store
    resumes); the live objects stay in this process."""

    def __init__(self, ctx: RunContext, artifacts: Path, *, flush_s: float = FLUSH_S) -> None:
        self.ctx, self.artifacts, self.flush_s = ctx, artifacts, flush_s
        self.rows: dict[str, int] = {}
        self.pending: list[EpochReport] = []
        self.last_beat = self.last_flush = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": dict(self.rows), "flush_s": self.flush_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rows, self.flush_s, self.pending = state["rows"], state.get("flush_s", FLUSH_S), []
        self.last_beat = self.last_flush = time.monotonic()

    def flush(self) -> None:
        """Write the epochs reported since the last flush, in one transaction."""
        if self.pending:
            batch, self.pending = self.pending, []
            self.ctx.store.record_epochs(batch)
        self.last_flush = time.monotonic()

    def _row(self, trial: Trial) -> int | None:
        if trial.trial_id not in self.rows and TASK in trial.config:
            start = TrialStart.from_config(trial.config[TASK])
            self.rows[trial.trial_id] = self.ctx.store.trial_started(self.ctx.plan.study.name, self.ctx.run_id,
                                                                     start)
        return self.rows.get(trial.trial_id)

    def on_trial_start(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        self.ctx.on_event("start", {"trial": trial.trial_id, "row": self._row(trial)})

    def on_trial_recover(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        # Tune restarts the same trial (same Optuna trial): forget its cached row so the restart's on_trial_start goes
        # through `trial_started` again, which counts the attempt and marks the row running
        self.flush()
        self.rows.pop(trial.trial_id, None)
        self.ctx.on_event("retry", {"trial": trial.trial_id, "error": error_text(trial)})

    def on_trial_result(self, iteration: int, trials: list[Trial], trial: Trial, result: dict[str, Any],
                        **info: Any) -> None:
        row = self._row(trial)
        if row is not None and "epoch" in result:
            self.pending.append(EpochReport(row, int(result["epoch"]), {k: result[k] for k in EPOCH_KEYS
                                                                        if k in result}))
        self.ctx.on_event("epoch", {"trial": trial.trial_id, "epoch": result.get("epoch"),
                                    "val_acc": result.get("val_acc")})

    def on_trial_complete(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        row = self._row(trial)
        if row is None:
            return
        self.flush()  # its epochs before its end
        st = self.ctx.plan.study
        res = dict(trial.last_result or {})
        final = bool(res.get(FINAL))
        outcome = TrialOutcome.from_report(res, [o.metric for o in st.objectives])
        self.ctx.store.trial_finished(row, TrialState.COMPLETE if final else TrialState.STOPPED, outcome)
        ckpt = trial.checkpoint
        if final and ckpt is not None and (Path(ckpt.path) / MODEL_FILE).exists():
            number = TrialStart.from_config(trial.config[TASK]).number
            dst = self.artifacts / st.name / f"trial_{number:05d}.safetensors"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(ckpt.path) / MODEL_FILE, dst)
            self.ctx.store.add_artifact(row, dst)
        self.ctx.on_event("complete" if final else "stopped", {"trial": trial.trial_id, "val_acc": res.get("val_acc")})

    def on_trial_error(self, iteration: int, trials: list[Trial], trial: Trial, **info: Any) -> None:
        row = self._row(trial)
        err = error_text(trial)
        if row is not None:
            self.flush()
            self.ctx.store.trial_finished(row, TrialState.FAILED, error=err)
        self.ctx.on_event("failed", {"trial": trial.trial_id, "error": err.splitlines()[0] if err else ""})

    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_flush >= self.flush_s:
            self.flush()
        if now - self.last_beat > 10:
            self.ctx.store.heartbeat(self.ctx.run_id)
            self.last_beat = time.monotonic()

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.flush()


def error_text(trial: Trial) -> str:
    """The worker's exception (first line) and the end of Ray's traceback text."""
    try:
        err = trial.get_error()
    except Exception:  # noqa: BLE001
        err = None
    text = str(err) if err is not None else ""
    if not text and trial.error_file and os.path.exists(trial.error_file):
        text = Path(trial.error_file).read_text()
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    # the worker's exception is the last line of Ray's traceback text
    tail = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln or "Diverged" in ln), "")
    return (tail or (lines[-1] if lines else "unknown error")).strip()[:2000] + ("\n\n" + text[-6000:] if text
                                                                                 else "")


__all__ = ["FLUSH_S", "TASK", "StoreCallback", "StudySearcher", "error_text", "record_invalid"]
