"""The driver's work per event stays small and constant as a study grows (issue 12, benchmarks/bench_scale.py):

* a grid's trial is claimed from Optuna's queue without `study.ask`, whose RDB cache re-reads every unfinished trial
  of the study on each call: the trials Optuna loads per claim do not grow with the queue;
* the callback writes epochs in batches: a few statements per flush however many trials reported, every epoch
  stored, a trial's epochs before its end;
* an epoch's value reaches Optuna only when a trial is stopped early, and PRUNED still keeps the last one;
* end to end on Tune's controller (benchmarks/sim_cluster.py: simulated trials, no worker processes): every trial
  and epoch is stored, and Tune does not snapshot the whole experiment on every trial's checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from sqlalchemy import event

from nas.config import load_study
from nas.driver import Round, RunContext
from nas.plan import plan_study
from nas.queue import enqueue_cells, open_optuna
from nas.records import TrialStart
from nas.store import Store

ROOT = Path(__file__).resolve().parents[1]
GRID = """
name: {name}
search_space: tiny_plain
fixed: {{dims: [8], depths: [1], readout: mean}}
factors:
  route: [uni, bi]
seeds: {seeds}
data: {{name: digits, n_train: 32, n_test: 32, img_size: 16}}
train: {{epochs: 3, batch_size: 16}}
execution: {{retries: 0}}
measure: {{skip: true}}
storage: {{url: "sqlite:///{root}/nas.db", artifacts: "{root}/artifacts", ray_results: "{root}/ray"}}
"""

pytestmark = pytest.mark.usefixtures("at_repo_root", "one_torch_thread")


def _context(tmp_path: Path, name: str, n_seeds: int) -> tuple[RunContext, Round]:
    """A grid of 2 × n_seeds cells queued in Optuna, as the driver leaves it before a round."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, seeds=list(range(n_seeds)), root=tmp_path))
    plan = plan_study(load_study(path))
    store = Store(plan.study.storage.url)
    study = plan.study
    store.upsert_study(name=study.name, question="", kind=study.kind, study_yaml=path.read_text(), config={},
                       search_space_yaml="", n_cells=plan.n_trials)
    link = open_optuna(store, study)
    q = enqueue_cells(store, link, study, plan.cells, retry_failed=False)
    return RunContext(plan, store, link, store.start_run(study.name, "test"), lambda kind, info: None), \
        Round(1, q.to_run)


def _count_trial_loads(fn) -> int:  # noqa: ANN001
    """How many of Optuna's trial rows `fn()` loads from the database (its ORM's load events)."""
    from optuna.storages._rdb.models import TrialModel

    n = [0]

    def loaded(*_: object) -> None:
        n[0] += 1

    event.listen(TrialModel, "load", loaded)
    try:
        fn()
    finally:
        event.remove(TrialModel, "load", loaded)
    return n[0]


def test_a_grid_trial_is_claimed_without_rereading_the_queue(tmp_path):
    from ray.tune.search import Searcher

    from nas.tune_adapter import TASK, StudySearcher

    loads = {}
    for n_seeds in (2, 30):
        ctx, rnd = _context(tmp_path / str(n_seeds), f"claim{n_seeds}", n_seeds)
        searcher = StudySearcher(ctx, rnd)
        configs = [searcher.suggest("t0")]
        # the second claim, with 2 · n_seeds - 1 trials still waiting and one running
        loads[n_seeds] = _count_trial_loads(lambda: configs.append(searcher.suggest("t1")))
        while (config := searcher.suggest(f"t{len(configs)}")) != Searcher.FINISHED:
            configs.append(config)
        # every cell once, in the queue's order, with its enqueued parameters and key
        assert [TrialStart.from_config(c[TASK]).key for c in configs] == [c.key for c in ctx.plan.cells]
        ot = ctx.optuna.study.get_trials(deepcopy=False)
        assert sorted(t.user_attrs["nas:key"] for t in ot) == sorted(c.key for c in ctx.plan.cells)
        assert {t.state.name for t in ot} == {"RUNNING"} and all(set(t.params) == {"route", "seed"} for t in ot)
        assert [t.params["seed"] for t in sorted(ot, key=lambda t: t.number)] == [c.seed for c in ctx.plan.cells]
    # the same few rows whatever the queue's length (`study.ask` loaded every unfinished trial: 9 and 65 rows)
    assert loads[30] == loads[2] <= 5, loads


def test_pruned_trials_keep_their_last_value_and_epochs_are_not_sent_one_by_one(tmp_path):
    from nas.tune_adapter import StudySearcher
    from nas.worker import FINAL

    ctx, rnd = _context(tmp_path, "pruned", 1)
    searcher = StudySearcher(ctx, rnd)
    searcher.suggest("stopped"), searcher.suggest("done")
    for epoch in (1, 2, 3):
        searcher.on_trial_result("stopped", {"epoch": epoch, "val_acc": 0.1 * epoch})
        searcher.on_trial_result("done", {"epoch": epoch, "val_acc": 0.2 * epoch})
    searcher.on_trial_complete("stopped", {"epoch": 2, "val_acc": 0.2})  # ASHA stopped it: no FINAL
    searcher.on_trial_complete("done", {"epoch": 3, "val_acc": 0.6, FINAL: True})
    by_state = {t.state.name: t for t in ctx.optuna.study.get_trials(deepcopy=False)}
    assert by_state["PRUNED"].value == pytest.approx(0.3)  # the last value reported, as Optuna keeps for PRUNED
    assert by_state["PRUNED"].intermediate_values == {3: pytest.approx(0.3)}  # one write, not one per epoch
    assert by_state["COMPLETE"].value == pytest.approx(0.6) and by_state["COMPLETE"].intermediate_values == {}


def _trial(trial_id: str, row_start: TrialStart, last: dict | None = None) -> SimpleNamespace:
    from nas.tune_adapter import TASK

    return SimpleNamespace(trial_id=trial_id, config={TASK: row_start.as_config()}, last_result=last or {},
                           checkpoint=None)


def test_the_callback_writes_epochs_in_batches(tmp_path):
    from nas.tune_adapter import StoreCallback, StudySearcher
    from nas.worker import FINAL

    ctx, rnd = _context(tmp_path, "batched", 20)  # 40 cells
    searcher = StudySearcher(ctx, rnd)
    starts = {f"t{i}": TrialStart.from_config(searcher.suggest(f"t{i}")["nas_task"]) for i in range(rnd.to_run)}
    trials = {tid: _trial(tid, s) for tid, s in starts.items()}
    cb = StoreCallback(ctx, tmp_path / "artifacts", flush_s=3600)
    for t in trials.values():
        cb.on_trial_start(0, [], t)
    statements = []
    listener = lambda *args: statements.append(args[2])  # noqa: E731 - (conn, cursor, statement, ...)
    event.listen(ctx.store.engine, "before_cursor_execute", listener)
    try:
        for epoch in (1, 2):
            for t in trials.values():
                cb.on_trial_result(0, [], t, {"epoch": epoch, "val_acc": 0.5, "train_loss": 1.0 / epoch,
                                              "node_id": "n1", "device": "cpu"})
        cb.on_step_end(0, [])  # within flush_s: nothing written yet
        assert statements == []
        cb.flush()
    finally:
        event.remove(ctx.store.engine, "before_cursor_execute", listener)
    # 80 epochs of 40 trials: a read of what exists, one insert, a read and one update of the trials' node
    # (one by one it was 4 statements an epoch)
    assert len(statements) <= 5, statements
    rows = {tid: cb.rows[tid] for tid in trials}
    assert all([e["epoch"] for e in ctx.store.epochs(r)] == [1, 2] for r in rows.values())
    assert {t.node_id for t in ctx.store.trials("batched")} == {"n1"}
    # a trial's last epoch is written before its end, whatever the flush period
    t0 = trials["t0"]
    cb.on_trial_result(0, [], t0, {"epoch": 3, "val_acc": 0.7})
    t0.last_result = {"epoch": 3, "val_acc": 0.7, FINAL: True}
    cb.on_trial_complete(0, [], t0)
    assert [e["epoch"] for e in ctx.store.epochs(rows["t0"])] == [1, 2, 3]
    assert ctx.store.trial(ctx.plan.study.name, starts["t0"].number).val_acc == pytest.approx(0.7)


def test_a_study_on_tunes_controller_stores_everything_without_a_snapshot_per_trial(tmp_path):
    """The real TuneRunner and Tune's controller, on simulated trials (benchmarks/sim_cluster.py)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import scale_run
        import sim_cluster
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    from ray.tune.execution.tune_controller import TuneController

    import nas.execute

    path = tmp_path / "sim.yaml"
    path.write_text(GRID.format(name="sim", seeds=list(range(6)), root=tmp_path))
    plan = plan_study(load_study(path))
    store = Store(plan.study.storage.url)
    snapshots = [0]
    save = TuneController.save_to_dir

    def counted(self) -> None:  # noqa: ANN001
        snapshots[0] += 1
        return save(self)

    train_cell = nas.execute.train_cell
    sim_cluster.install(slots=6, epoch_s=0.05, start_s=0.01)
    nas.execute.train_cell = scale_run.sim_trainable(fail_every=0)
    TuneController.save_to_dir = counted
    try:
        out = nas.execute.run_study(plan, store, max_concurrent=6)
    finally:
        TuneController.save_to_dir = save
        nas.execute.train_cell = train_cell
        sim_cluster.uninstall()
    trials = store.trials("sim")
    assert (out.completed, out.failed) == (12, 0) and len(trials) == 12
    assert {t.state for t in trials} == {"complete"} and all(len(store.epochs(t.id)) == 3 for t in trials)
    assert all(len(store.artifacts(t.id)) == 1 for t in trials)  # the model file of every trial copied
    assert {t.state.name for t in optuna.load_study(study_name="sim", storage=plan.study.storage.url).trials} == \
        {"COMPLETE"}
    # with CheckpointConfig(num_to_keep=1), each of the 12 trials' checkpoints forced one: 14 in all
    assert snapshots[0] <= 3, snapshots
