"""Run a study on Ray Tune: the thin adapter between the driver's rounds (`nas.driver`) and Ray.

Order of work in `run_study`: the plan is made before (`nas.plan`: validated, pre-flighted, no Ray); the driver takes
over from a dead driver, queues the round's cells in Optuna and calls `TuneRunner.run_round`, which starts Ray once
(unless `nas run` began it beside the pre-flight: `Startup`) and runs the round with a `tune.Tuner`: our searcher
(`nas.tune_adapter.StudySearcher`) asks Optuna and hands each trial its resolved cell, the trainable
(`nas.trainable`) runs `nas.worker.run_task` on a worker, and our callback writes the store. Workers never touch the
database. This module, `nas.tune_adapter` and `nas.trainable` are the only ones that import Ray. `nas.interrupts`
makes Ctrl-C and SIGTERM end a run as interrupted, with nothing left running.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune

from .beside import import_beside
from .bytecode import bytecode_hint
from .driver import EventFn, Outcome, QueuedFn, Round, RunContext
from .driver import run_study as drive
from .errors import StudyConfigError
from .interrupts import STOPS, stop_requested
from .mps import start_mps, stop_mps
from .plan import Plan
from .rounds import DEFAULT_POLICY, SeedPolicy
from .schema import Study
from .store import Store
from .trainable import train_cell
from .tune_adapter import StoreCallback, StudySearcher
from .warmup import Warmup, start_warmup, stop_warmup


class Startup:
    """What a local study starts before its first trial, in this order: the CUDA MPS daemon (when asked; the warm-up
    and Ray's workers inherit its environment, nas/mps.py), the kernel warm-up (the kernels compile in the background
    while Ray starts, nas/warmup.py) and Ray. `nas run` begins it beside the CPU pre-flight (`plan_study(beside=)`),
    so Ray's few seconds of start-up overlap the checks; `TuneRunner` begins it at its first round otherwise. Each
    step's line goes to `say`, or waits for `tell` until the run's progress is up."""

    def __init__(self, study: Study) -> None:
        self.study = study
        self.mps: Any = None  # nas.mps.MPSDaemon while one runs
        self.warmup: Warmup | None = None
        self.ray = False  # Ray started (or joined) by `begin`
        self.lines: list[dict[str, Any]] = []
        self.say: Callable[[dict[str, Any]], None] | None = None

    def tell(self, say: Callable[[dict[str, Any]], None]) -> None:
        """Send the lines so far, and every later one, to `say`."""
        self.say = say
        lines, self.lines = self.lines, []
        for info in lines:
            say(info)

    def _line(self, text: str, **extra: Any) -> None:
        info = {"text": text, **extra}
        self.say(info) if self.say else self.lines.append(info)

    def begin(self, specs: list[str], where: str = "") -> None:
        """Start what the study needs (`specs`: the arms' spec JSON, for the warm-up); `where` ends Ray's line."""
        ex = self.study.execution
        self.mps = start_mps(self.study)
        if self.mps is not None:
            self._line(f"CUDA MPS daemon started (folders: {self.mps.folder})")
        self.warmup = start_warmup(self.study, specs)
        if self.warmup is not None:
            self._line(f"kernel warm-up running in the background (log: {self.warmup.log_file.name})")
        hint = None if ex.address else bytecode_hint()  # a cluster's workers run in their own environments
        if hint:
            self._line(hint)
        # the driver opens Optuna's tables next (alembic, ~0.4-1 s of imports): loaded while ray.init waits on Ray's
        # processes to come up
        import_beside("optuna", "alembic.command", "alembic.config", "alembic.migration", "alembic.script",
                      "optuna.storages._rdb.models")
        t0 = time.perf_counter()
        self.ray = True  # from here `close` shuts Ray down, however far it got
        with STOPS.held():  # Ctrl-C / SIGTERM wait until Ray is up (nas/interrupts.py)
            init_ray(self.study)
        seconds = time.perf_counter() - t0
        self._line(f"Ray {'joined' if ex.address else 'started'} in {seconds:.1f} s{where}", seconds=seconds)

    def close(self, shutdown_ray: bool | None = None) -> None:
        """Stop the warm-up, a local Ray (when `shutdown_ray`, default: when `begin` started it; a cluster joined
        with `--address` keeps running) and the MPS daemon. Safe to call twice."""
        stop_warmup(self.warmup)
        self.warmup = None
        try:
            if (self.ray if shutdown_ray is None else shutdown_ray) and not self.study.execution.address:
                import ray

                ray.shutdown()
            self.ray = False
        finally:
            stop_mps(self.mps)  # after Ray: its workers were the daemon's clients
            self.mps = None


class TuneRunner:
    """Runs each round with a `tune.Tuner`; starts Ray on the first round that has trials unless `startup` already
    did, stops it at the end (a local Ray only: a cluster joined with `--address` keeps running)."""

    def __init__(self, plan: Plan, *, max_concurrent: int | None = None, startup: Startup | None = None) -> None:
        self.plan, self.max_concurrent = plan, max_concurrent
        self.startup = startup or Startup(plan.study)
        self.started = self.startup.ray

    def run_round(self, ctx: RunContext, rnd: Round) -> bool:
        from ray.tune.schedulers import ASHAScheduler

        study = self.plan.study
        ex = study.execution
        self.startup.tell(lambda info: ctx.on_event("setup", info))  # lines of a start begun beside the pre-flight
        if not self.started:
            self.startup.begin([a.spec.to_json() for a in self.plan.arms])
            self.started = True
        scheduler = None
        if ex.asha is not None:
            obj = study.objectives[0]
            scheduler = ASHAScheduler(metric=obj.metric, mode="max" if obj.resolved_direction == "maximize" else "min",
                                      time_attr="training_iteration", max_t=study.train.epochs,
                                      grace_period=ex.asha.grace_period, reduction_factor=ex.asha.reduction_factor)
        if not ex.address:  # a cluster's autoscaler may still add the nodes a trial needs
            check_fits(ex.cpus_per_trial, ex.gpus_per_trial, self.plan.file.path)
        concurrent = self.max_concurrent or ex.max_concurrent or trial_slots(ex.cpus_per_trial, ex.gpus_per_trial)
        # Tune keeps one pending trial at a time for a searcher unless told otherwise: trials would run one by one
        os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrent)
        trainable = tune.with_resources(tune.with_parameters(train_cell, study_json=study.model_dump(mode="json")),
                                        {"cpu": ex.cpus_per_trial, "gpu": ex.gpus_per_trial})
        name = f"{study.name}-run{ctx.run_id}" + (f"-round{rnd.number}" if rnd.number > 1 else "")
        callback = StoreCallback(ctx, Path(study.storage.artifacts).resolve())
        # no CheckpointConfig(num_to_keep): a trial reports one checkpoint (its model, at the end), so there is nothing
        # to prune, and with num_to_keep Tune snapshots the whole experiment (every trial, as JSON) on each trial's
        # checkpoint: O(trials) per finished trial (benchmarks/RESULTS.md, "Scale")
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(search_alg=StudySearcher(ctx, rnd), scheduler=scheduler,
                                        num_samples=rnd.to_run, max_concurrent_trials=concurrent, reuse_actors=True),
            run_config=tune.RunConfig(name=name, storage_path=str(Path(study.storage.ray_results).resolve()),
                                      callbacks=[callback], verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=ex.retries)),
        )
        try:
            with STOPS.round():  # Ctrl-C / SIGTERM: Tune stops the trials, the round ends interrupted
                tuner.fit()
        except KeyboardInterrupt:
            return False
        finally:
            callback.flush()  # the epochs of the last second, however the round ended
        return not stop_requested()

    def close(self) -> None:
        self.startup.close(shutdown_ray=self.started)


def check_fits(cpus_per_trial: float, gpus_per_trial: float, file: str | None = None) -> None:
    """Refuse a study whose trial asks for more CPUs or GPUs than the local Ray has: Tune would wait for them for
    ever, with nothing on screen (e.g. a GPU study started on a machine without a GPU)."""
    import ray

    res = ray.cluster_resources()
    for what, want, key in (("CPU", cpus_per_trial, "cpus_per_trial"), ("GPU", gpus_per_trial, "gpus_per_trial")):
        have = res.get(what, 0)
        if want > have:
            hint = (" Run it on a machine with a GPU, or set execution.gpus_per_trial: 0 and train.device: cpu."
                    if what == "GPU" else " Lower execution.cpus_per_trial, or give Ray more (execution.num_cpus).")
            raise StudyConfigError(f"each trial asks for {want:g} {what}(s) but the local Ray has {have:g}: no trial "
                                   f"could ever start.{hint}", file=file, key=f"execution.{key}")


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster can hold at once (CPU and GPU limits; at least 1)."""
    import ray

    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
    return max(1, slots)


# A local Ray starts no idle workers ahead of time. By default its raylet starts one per CPU when the driver connects,
# for tasks to come; Tune gives its trial actors a runtime environment of their own (environment variables), so the
# raylet starts a fresh process for every trial and never uses those (benchmarks/RESULTS.md, session 19). On a 16-CPU
# machine that was 16 interpreters importing Ray during the start-up, beside Ray's own agents, the checks and the
# kernel warm-up.
LOCAL_RAY_CONFIG = {"enable_worker_prestart": False, "prestart_worker_first_driver": False}


def init_ray(study: Study) -> None:
    """Start a local Ray (or join `execution.address`) with Tune's own output and loggers off: our progress bar and
    the store report what happens."""
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar replaces Tune's tables
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")  # Ctrl-C goes to nas.interrupts (its docstring)
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # cost objectives come with the last epoch
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
    for name in ("ray.tune", "ray.train", "ray.air"):  # failures are shown by our progress and stored with the trial
        logging.getLogger(name).setLevel(logging.CRITICAL)
    if ray.is_initialized():
        return
    ex = study.execution
    # workers' stdout stays in Ray's logs (errors come back through Tune and are stored with the trial)
    kwargs: dict[str, Any] = dict(include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                                  configure_logging=True)
    if ex.address:
        ray.init(address=ex.address, **kwargs)
    else:
        ray.init(num_cpus=ex.num_cpus, _system_config=dict(LOCAL_RAY_CONFIG), **kwargs)  # a copy: Ray adds to it


def run_study(plan: Plan, store: Store, *, command: str = "", retry_failed: bool = False,
              max_concurrent: int | None = None, on_event: EventFn = lambda kind, info: None,
              on_queued: QueuedFn = lambda r, q, s, d: None, policy: SeedPolicy | None = DEFAULT_POLICY,
              startup: Startup | None = None) -> Outcome:
    """Queue what is not done yet and run it on Ray Tune, round after round; returns counts for the summary.
    `startup`: what `nas run` began beside the pre-flight (`Startup`); it is closed with the run."""
    with STOPS.installed():
        return drive(plan, store, TuneRunner(plan, max_concurrent=max_concurrent, startup=startup), command=command,
                     retry_failed=retry_failed, on_event=on_event, on_queued=on_queued, policy=policy)


__all__ = ["Startup", "TuneRunner", "check_fits", "init_ray", "run_study", "train_cell", "trial_slots"]
