"""Run a study: Ray Tune schedules the trials, Optuna decides what to try, the driver records everything.

This is the only module that imports Ray. Order of work in `run_study`:

1. validate the study and its search space; probe the data (class count, missing paths);
2. expand a grid into factors × seeds (idempotent keys) and pre-flight every distinct spec on the CPU (build, one
   forward, parameter budget); `--dry-run` stops here and lists the trials with their estimated cost;
3. open the store; trials a dead driver left RUNNING are failed in Optuna, marked stale in our tables and re-queued;
   finished keys are never enqueued again;
4. Ray Tune runs the queued trials with `OptunaSearch` (our RDB storage, our study name); a Tune callback in the
   driver writes per-epoch curves, results, errors and model files. Workers never touch the database.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ray import tune

from blocks import ArchSpec, NasError

from .config import Study, StudyFile
from .errors import StudyConfigError
from .space import (SEED_PARAM, Cell, SearchSpace, cell_from_params, expand_grid, grid_distributions,
                    load_search_space, search_distributions, trial_spec)
from .store import Store

MODEL_FILE = "model.safetensors"
PREFLIGHT_BATCH = 8
_FINAL = "final"  # set in the last report of a trial that trained to the end


@dataclass
class Plan:
    """Everything known about a study before anything runs."""
    file: StudyFile
    space: SearchSpace
    num_classes: int
    cells: list[Cell]  # grid cells (empty for a search)
    preflight: dict[str, dict[str, Any]] = field(default_factory=dict)  # spec id → {params, forward_ms}

    @property
    def study(self) -> Study:
        return self.file.study


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


# ---------------------------------------------------------------------------------------------- planning
def _probe_data(study: Study, file: str) -> int:
    """Make the data on the CPU before anything runs: its class count, and any data error (a missing path, more
    images asked of a finite set than it has). Generated sets are probed with a small slice; digits in full (cheap)."""
    from .data import make_dataset

    d = study.data
    full = d.name == "digits"
    try:
        probe = make_dataset(d.name, seed=0, n_train=d.n_train if full else min(d.n_train, 32),
                             n_test=d.n_test if full else min(d.n_test, 32), img_size=d.img_size, **d.knobs)
    except NasError as e:
        raise StudyConfigError(str(e), file=file, key="data") from None
    return probe.num_classes


def preflight_spec(spec: ArchSpec) -> dict[str, Any]:
    """Build on the CPU and run two forward passes of a small batch: catches what validation on the meta device cannot
    (numerics, shape errors deep in a mixer) before any trial is scheduled."""
    import torch

    from blocks import build_backbone

    torch.manual_seed(0)
    model = build_backbone(spec, kernel_backend="reference").eval()
    x = torch.randn(PREFLIGHT_BATCH, spec.in_chans, spec.img_size, spec.img_size)
    with torch.no_grad():
        out = model(x)
        t = time.perf_counter()
        model(x)  # timed second: the first call pays one-off costs
    ms = (time.perf_counter() - t) * 1e3
    if out.shape != (PREFLIGHT_BATCH, spec.num_classes) or not torch.isfinite(out).all():
        raise NasError(f"spec {spec.id}: forward gave shape {tuple(out.shape)} / non-finite values")
    model.train()
    for i in range(2):  # one training step's cost (forward + backward), timed on the second
        t = time.perf_counter()
        model(x).float().square().mean().backward()
    step_ms = (time.perf_counter() - t) * 1e3
    return {"params": sum(p.numel() for p in model.parameters()), "forward_ms": ms, "step_ms": step_ms}


def plan_study(sf: StudyFile, progress: Callable[[str], None] | None = None) -> Plan:
    study = sf.study
    space = load_search_space(study.search_space, file=sf.path)
    if "throughput" in [o.metric for o in study.objectives] and study.measure.skip:
        raise StudyConfigError("objective 'throughput' needs measure.skip: false", file=sf.path, key="objectives")
    address = study.execution.address
    if address and address != "auto" and not address.startswith("ray://"):
        _check_reachable(address, file=sf.path)  # before anything is written, not when Ray starts
    num_classes = _probe_data(study, sf.path)
    if study.kind == "grid":
        cells = expand_grid(study, space, img_size=study.data.img_size, num_classes=num_classes, file=sf.path)
        specs = {c.spec.id: (c.spec, c.levels) for c in cells}
    else:
        cells = []
        base, _ = trial_spec(study, space, {}, img_size=study.data.img_size, num_classes=num_classes, file=sf.path)
        specs = {base.id: (base, {"(base)": "fixed choices"})}
    pre: dict[str, dict[str, Any]] = {}
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(study.execution.cpus_per_trial)))  # time it as a worker would run it
    try:
        for spec_id, (spec, levels) in specs.items():
            if progress:
                progress(f"pre-flight {levels}")
            try:
                pre[spec_id] = preflight_spec(spec)
            except Exception as e:  # noqa: BLE001 - any failure here is the spec's
                raise StudyConfigError(f"pre-flight failed for {levels}: {type(e).__name__}: {e}", file=sf.path,
                                       key="factors" if study.kind == "grid" else "fixed") from None
    finally:
        torch.set_num_threads(threads)
    return Plan(sf, space, num_classes, cells, pre)


def estimate_seconds(plan: Plan, preflight: dict[str, Any]) -> float:
    """Rough CPU time of one trial from the pre-flight timings (batch of 8, scaled linearly to the batch size):
    training steps plus one evaluation pass per epoch. A guide for planning, not a promise."""
    st = plan.study
    scale = st.train.batch_size / PREFLIGHT_BATCH
    steps = math.ceil(st.data.n_train / st.train.batch_size)
    evals = math.ceil(st.data.n_test / st.train.batch_size)
    return st.train.epochs * (steps * preflight["step_ms"] + evals * preflight["forward_ms"]) * scale / 1e3


# ------------------------------------------------------------------------------------------------ worker
def _payload(plan: Plan, artifacts: Path) -> dict[str, Any]:
    st = plan.study
    return {"study": st.model_dump(mode="json"), "space": plan.space.__dict__, "num_classes": plan.num_classes,
            "artifacts": str(artifacts)}


def train_cell(config: dict[str, Any], payload: dict[str, Any]) -> None:
    """The Ray Tune trainable: rebuild the trial's cell from its Optuna parameters, train, report every epoch; the
    last report carries the cost, the objective values and the model file as a checkpoint."""
    import ray
    import torch

    from blocks.model_file import save_backbone

    from .data import make_dataset
    from .trial import run_trial

    study = Study.model_validate(payload["study"])
    space = SearchSpace(**payload["space"])
    cell = cell_from_params(study, space, config, img_size=study.data.img_size, num_classes=payload["num_classes"])
    threads = max(1, int(study.execution.cpus_per_trial))
    torch.set_num_threads(threads)
    tr = study.train
    dev = torch.device("cuda" if tr.device == "cuda" or (tr.device == "auto" and torch.cuda.is_available())
                       else "cpu")
    if dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())  # memory APIs want an index
    if dev.type == "cuda" and study.execution.gpu_memory_gb:
        total = torch.cuda.get_device_properties(dev).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, study.execution.gpu_memory_gb / total), dev)
    node_id = ray.get_runtime_context().get_node_id()
    data = make_dataset(study.data.name, seed=cell.seed, n_train=study.data.n_train, n_test=study.data.n_test,
                        img_size=study.data.img_size, device=dev, **study.data.knobs)
    held: dict[str, Any] = {}
    fault = _injected_fault(cell)

    def report(epoch: int, row: dict[str, float]) -> None:
        msg = {**row, "epoch": epoch, "node_id": node_id, "device": str(dev)}
        if fault:
            tune.report(msg)
            raise RuntimeError(f"injected failure ({FAULT_ENV}={fault}) after epoch {epoch}")
        if epoch < tr.epochs:
            tune.report(msg)
        else:
            held.update(msg)  # the last epoch goes out with the cost and the model

    m = study.measure
    measure = {"skip": True} if m.skip else {"repeats": m.repeats, "resolutions": list(m.resolutions) or None}
    result = run_trial(cell.spec, data, epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr,
                       weight_decay=tr.weight_decay, warmup_epochs=tr.warmup_epochs, seed=cell.seed, device=dev,
                       amp=tr.amp, report=report, kernel_backend=tr.kernel_backend,
                       measure=measure, keep_model=True)
    last = result.metrics[-1]
    cost = result.cost
    final = {**held, _FINAL: True, "num_params": result.params, "cost": _jsonable(cost),
             "kernel_paths": result.kernel_paths, "wall_seconds": result.wall_seconds,
             "train_seconds": result.train_seconds, "val_acc": last["val_acc"], "val_loss": last["val_loss"],
             "train_loss": last["train_loss"], "params": result.params, "flops": cost.get("flops"),
             "throughput": cost.get("throughput"), "peak_memory_bytes": cost.get("peak_memory_bytes")}
    with tempfile.TemporaryDirectory() as tmp:
        save_backbone(result.model.cpu(), cell.spec, Path(tmp) / MODEL_FILE,
                      {"study": study.name, "key": cell.key, "seed": str(cell.seed), "val_acc": f"{last['val_acc']}"})
        tune.report(final, checkpoint=tune.Checkpoint.from_directory(tmp))


FAULT_ENV = "NAS_INJECT_FAULT"


def _injected_fault(cell: Cell) -> str:
    """Fault drills: `NAS_INJECT_FAULT=readout=tail` makes every trial at that level raise after its first epoch
    (reported first, so the failure comes after partial results, as a real crash would)."""
    spec = os.environ.get(FAULT_ENV, "")
    if "=" not in spec:
        return ""
    key, value = spec.split("=", 1)
    return spec if str(cell.levels.get(key)) == value else ""


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------------------------------------ driver
def _optuna_study(store: Store, study: Study):  # noqa: ANN202
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(storage=store.optuna_storage(), study_name=study.name, load_if_exists=True,
                               directions=study.directions)


def _check_directions(ot_study: Any, study: Study, url: str) -> None:
    import optuna

    want = [optuna.study.StudyDirection.MAXIMIZE if d == "maximize" else optuna.study.StudyDirection.MINIMIZE
            for d in study.directions]
    if list(ot_study.directions) != want:
        raise StudyConfigError(f"study {study.name!r} already exists in {url} with objectives "
                               f"{[d.name.lower() for d in ot_study.directions]}; this file asks for "
                               f"{study.directions}. Rename the study or use another --db.", key="objectives")


def requeue(store: Store, plan: Plan, ot_study: Any, *, retry_failed: bool) -> tuple[int, int, int]:
    """Fail what a dead driver left RUNNING, then enqueue every grid cell (or search slot) not yet done.

    Returns (queued now in total, stale re-queued, keys skipped because already done)."""
    from optuna.trial import TrialState

    study = plan.study
    storage = ot_study._storage
    # A driver killed between Tune telling Optuna "complete" and our callback writing the result leaves a finished
    # Optuna trial beside our 'running' row: the trial did finish, so it is kept (with Optuna's values), not re-run.
    by_id = {t._trial_id: t for t in ot_study.get_trials(deepcopy=False)}
    for ot_id, row in store.running_trials(study.name).items():
        t = by_id.get(ot_id)
        if t is not None and t.state == TrialState.COMPLETE:
            values = dict(zip([o.metric for o in study.objectives], t.values or []))
            store.trial_finished(row, state="complete", result={"val_acc": values.get("val_acc")}, values=values,
                                 error="finished while the driver stopped: values from Optuna, cost and model file "
                                       "not recorded")
    stale_ids = set(store.fail_stale_trials(study.name))
    stale_params: list[dict[str, Any]] = []
    for t in ot_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        storage.set_trial_system_attr(t._trial_id, "nas:stale", True)
        storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        stale_params.append(dict(t.params))
        stale_ids.discard(t._trial_id)
    waiting = ot_study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    done = store.completed_keys(study.name) | {t.user_attrs.get("nas:key") for t in by_id.values()
                                               if t.state == TrialState.COMPLETE and t.user_attrs.get("nas:key")}
    failed_keys = {t.key for t in store.trials(study.name, states=("failed",))} - done
    if study.kind == "grid":
        waiting_keys = {t.user_attrs.get("nas:key") for t in waiting}
        n_new = skipped = 0
        for c in plan.cells:
            if c.key in done:
                skipped += 1
            elif c.key in waiting_keys or (c.key in failed_keys and not retry_failed):
                continue
            else:
                ot_study.enqueue_trial(c.params, user_attrs={"nas:key": c.key})
                n_new += 1
        return len(waiting) + n_new, len(stale_params), skipped
    # search: re-ask the stale points first, then sample until n_trials have finished or failed
    for p in stale_params:
        ot_study.enqueue_trial(p)
    finished = len(store.trials(study.name, states=("complete", "stopped", "failed")))
    remaining = max(0, study.search.n_trials - finished)
    return remaining, len(stale_params), len(done)


def _sampler(study: Study):  # noqa: ANN202
    import optuna

    if study.kind == "grid":
        return optuna.samplers.RandomSampler(seed=0)  # never used: every grid trial is enqueued
    s = study.search
    if s.sampler == "random":
        return optuna.samplers.RandomSampler(seed=s.seed)
    if s.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=s.seed)
    return optuna.samplers.TPESampler(seed=s.seed, multivariate=True)


def _make_searcher(plan: Plan, store: Store):  # noqa: ANN202
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    class StudySearcher(OptunaSearch):
        """OptunaSearch that records a failed trial as FAIL even when it reported epochs before failing (the base
        class would tell Optuna COMPLETE with the partial result)."""

        def optuna_trial(self, trial_id: str):  # noqa: ANN202
            return self._ot_trials.get(trial_id)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if error and trial_id in self._ot_trials and trial_id not in self._completed_trials:
                try:
                    self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.FAIL)
                finally:
                    self._completed_trials.add(trial_id)
                return
            if result is not None and not result.get(_FINAL):
                # stopped early (ASHA): Optuna keeps the last reported value as a pruned trial
                try:
                    self._ot_study.tell(self._ot_trials[trial_id], state=optuna.trial.TrialState.PRUNED)
                finally:
                    self._completed_trials.add(trial_id)
                return
            super().on_trial_complete(trial_id, result, error)

    st = plan.study
    space = grid_distributions(st) if st.kind == "grid" else search_distributions(st)
    metrics = [o.metric for o in st.objectives]
    modes = ["max" if d == "maximize" else "min" for d in st.directions]
    return StudySearcher(space=space, metric=metrics if len(metrics) > 1 else metrics[0],
                         mode=modes if len(modes) > 1 else modes[0], sampler=_sampler(st),
                         study_name=st.name, storage=store.optuna_storage())


def _error_text(trial: Any) -> str:
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


class StoreCallback(tune.Callback):
    """Runs in the driver: the only writer of the study database. Tune pickles its callbacks with the experiment
    state (for `Tuner.restore`, which we do not use: the store resumes); the live objects stay in this process."""

    def __init__(self, plan: Plan, store: Store, run_id: int, searcher: Any, artifacts: Path,
                 on_event: Callable[[str, dict[str, Any]], None]) -> None:
        self.plan, self.store, self.run_id, self.searcher = plan, store, run_id, searcher
        self.artifacts, self.on_event = artifacts, on_event
        self.cells_by_key = {c.key: c for c in plan.cells}
        self.rows: dict[str, int] = {}
        self.last_beat = time.monotonic()

    def __getstate__(self) -> dict[str, Any]:
        return {"rows": dict(self.rows)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.rows, self.last_beat = state["rows"], time.monotonic()

    def _row(self, trial: Any) -> int | None:
        if trial.trial_id in self.rows:
            return self.rows[trial.trial_id]
        ot = self.searcher.optuna_trial(trial.trial_id)
        if ot is None:
            return None
        study, params = self.plan.study, dict(ot.params)
        try:
            cell = cell_from_params(study, self.plan.space, params, img_size=study.data.img_size,
                                    num_classes=self.plan.num_classes)
            cell = self.cells_by_key.get(cell.key, cell)
            spec_id, spec_json, key, levels, seed, budget = cell.spec.id, cell.spec.to_json(), cell.key, \
                cell.levels, cell.seed, cell.budget
        except NasError as e:  # an invalid sampled point: recorded; the worker fails with the same error
            spec_id, spec_json, key, levels, seed, budget = "", "", f"{study.name}/invalid/{ot.number}", \
                {k: str(v) for k, v in params.items()}, int(params.get(SEED_PARAM, study.seeds[0])), \
                {"error": str(e)}
        row = self.store.trial_started(study_name=study.name, run_id=self.run_id, optuna_trial_id=ot._trial_id,
                                       number=ot.number, key=key, levels=levels, params=params, spec_id=spec_id,
                                       spec_json=spec_json, seed=seed, budget=budget)
        self.rows[trial.trial_id] = row
        return row

    def on_trial_start(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        self.on_event("start", {"trial": trial.trial_id, "row": self._row(trial)})

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        # Tune restarts the same trial (same Optuna trial): forget its cached row so the restart's on_trial_start goes
        # through `trial_started` again, which counts the attempt and marks the row running
        self.rows.pop(trial.trial_id, None)
        self.on_event("retry", {"trial": trial.trial_id, "error": _error_text(trial)})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:  # noqa: ANN001
        row = self._row(trial)
        if row is not None and "epoch" in result:
            self.store.record_epoch(row, int(result["epoch"]), result)
        self.on_event("epoch", {"trial": trial.trial_id, "epoch": result.get("epoch"),
                                "val_acc": result.get("val_acc")})

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        row = self._row(trial)
        if row is None:
            return
        study = self.plan.study
        res = dict(trial.last_result or {})
        final = bool(res.get(_FINAL))
        values = {o.metric: res.get(o.metric) for o in study.objectives}
        self.store.trial_finished(row, state="complete" if final else "stopped", result=res, values=values)
        ckpt = trial.checkpoint
        if final and ckpt is not None and (Path(ckpt.path) / MODEL_FILE).exists():
            number = self.searcher.optuna_trial(trial.trial_id).number
            dst = self.artifacts / study.name / f"trial_{number:05d}.safetensors"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(ckpt.path) / MODEL_FILE, dst)
            self.store.add_artifact(row, dst)
        self.on_event("complete" if final else "stopped", {"trial": trial.trial_id, "val_acc": res.get("val_acc")})

    def on_trial_error(self, iteration, trials, trial, **info) -> None:  # noqa: ANN001
        row = self._row(trial)
        err = _error_text(trial)
        if row is not None:
            self.store.trial_finished(row, state="failed", error=err, result=None)
        self.on_event("failed", {"trial": trial.trial_id, "error": err.splitlines()[0] if err else ""})

    def on_step_end(self, iteration, trials, **info) -> None:  # noqa: ANN001
        if time.monotonic() - self.last_beat > 10:
            self.store.heartbeat(self.run_id)
            self.last_beat = time.monotonic()


def trial_slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the Ray cluster can hold at once (CPU and GPU limits; at least 1)."""
    import ray

    res = ray.cluster_resources()
    slots = int(res.get("CPU", 1) // cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial:
        slots = min(slots, int(res.get("GPU", 0) // gpus_per_trial))
    return max(1, slots)


def _check_reachable(address: str, timeout_s: float = 10.0, file: str | None = None) -> None:
    """Fail fast on a cluster that is not there (ray.init would wait a long time)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or address, int(port) if port.isdigit() else 6379), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise StudyConfigError(f"no Ray cluster answers at {address!r} ({e}); start it with `ray start --head` or "
                               "check the address", file=file, key="execution.address") from None


def _init_ray(study: Study) -> None:
    import ray

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our progress bar replaces Tune's tables
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
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
        ray.init(num_cpus=ex.num_cpus, **kwargs)


def run_study(plan: Plan, store: Store, *, command: str = "", retry_failed: bool = False,
              max_concurrent: int | None = None,
              on_event: Callable[[str, dict[str, Any]], None] = lambda kind, info: None,
              on_queued: Callable[[int, int, int], None] = lambda q, s, d: None) -> Outcome:
    """Queue what is not done yet and run it; returns counts for the closing summary."""
    t0 = time.perf_counter()
    study, sf = plan.study, plan.file
    other = store.active_driver(study.name)
    if other:
        raise StudyConfigError(f"study {study.name!r} is being run right now by driver {other} (database "
                               f"{store.url}); wait for it to finish or stop it, then run this command again to "
                               "resume", key="name")
    ot_study = _optuna_study(store, study)
    _check_directions(ot_study, study, store.url)
    store.upsert_study(name=study.name, question=study.question, kind=study.kind, study_yaml=sf.text,
                       config=study.model_dump(mode="json"), search_space_yaml=Path(plan.space.path).read_text(),
                       n_cells=len(plan.cells) if study.kind == "grid" else study.search.n_trials)
    store.mark_interrupted_runs(study.name)
    queued, stale, skipped = requeue(store, plan, ot_study, retry_failed=retry_failed)
    on_queued(queued, stale, skipped)
    run_id = store.start_run(study.name, command)
    if queued == 0:
        store.finish_run(run_id, "finished", time.perf_counter() - t0)
        return Outcome(study.name, store.url, 0, 0, 0, stale, skipped, time.perf_counter() - t0)

    import ray
    from ray.tune.schedulers import ASHAScheduler

    _init_ray(study)
    artifacts = Path(study.storage.artifacts).resolve()
    results_dir = Path(study.storage.ray_results).resolve()
    ex = study.execution
    searcher = _make_searcher(plan, store)
    counts = {"complete": 0, "failed": 0, "stopped": 0}

    def event(kind: str, info: dict[str, Any]) -> None:
        if kind in counts:
            counts[kind] += 1
        on_event(kind, info)

    callback = StoreCallback(plan, store, run_id, searcher, artifacts, event)
    scheduler = None
    if ex.asha is not None:
        obj = study.objectives[0]
        scheduler = ASHAScheduler(metric=obj.metric, mode="max" if obj.resolved_direction == "maximize" else "min",
                                  time_attr="training_iteration", max_t=study.train.epochs,
                                  grace_period=ex.asha.grace_period, reduction_factor=ex.asha.reduction_factor)
    resources = {"cpu": ex.cpus_per_trial, "gpu": ex.gpus_per_trial}
    concurrent = max_concurrent or ex.max_concurrent or trial_slots(ex.cpus_per_trial, ex.gpus_per_trial)
    # Tune keeps one pending trial at a time for a searcher unless told otherwise: trials would run one by one
    os.environ["TUNE_MAX_PENDING_TRIALS_PG"] = str(concurrent)
    trainable = tune.with_resources(tune.with_parameters(train_cell, payload=_payload(plan, artifacts)), resources)
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=queued,
                                    max_concurrent_trials=concurrent, reuse_actors=True),
        run_config=tune.RunConfig(name=f"{study.name}-run{run_id}", storage_path=str(results_dir),
                                  callbacks=[callback], verbose=0,
                                  failure_config=tune.FailureConfig(max_failures=ex.retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )
    status = "finished"
    try:
        tuner.fit()
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException:
        status = "failed"
        raise
    finally:
        wall = time.perf_counter() - t0
        store.finish_run(run_id, status, wall)
        if not ex.address:
            ray.shutdown()
    return Outcome(study.name, store.url, queued, counts["complete"] + counts["stopped"], counts["failed"], stale,
                   skipped, wall, interrupted=status != "finished")


__all__ = ["Outcome", "Plan", "estimate_seconds", "plan_study", "preflight_spec", "run_study", "train_cell"]
