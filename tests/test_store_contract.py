"""The store's contract, the same on every backend: SQLite file, SQLite in memory and PostgreSQL (a throwaway server
started by tests/_postgres.py). Every write the driver makes and every read `nas show`, `nas list`, `nas export` and
the dashboard make, JSON round trips, non-finite numbers stored as NULL, errors that name what is missing, read-only
stores that refuse writes, and Optuna's own tables in the same database. Last, one real `nas run` of a tiny study
against PostgreSQL through the CLI: the platform runs there unchanged."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nas.errors import StoreError
from nas.records import EpochReport, TrialOutcome, TrialStart, TrialState
from nas.store import STALE_ERROR, Store
from tests._postgres import postgres_server, postgres_url  # noqa: F401 - fixtures

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["sqlite_file", "sqlite_memory", "postgresql"]
NESTED = {"dims": [16, 32], "mixer": {"name": "ssm", "params": {"d_state": 8, "ratio": 0.5}}, "flag": True,
          "none": None, "text": "µ-ünïcode ✓", "empty": {}}


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    if request.param == "sqlite_file":
        return f"sqlite:///{tmp_path / 'nas.db'}"
    if request.param == "sqlite_memory":
        return "sqlite://"
    return request.getfixturevalue("postgres_url")


def _study(store: Store, name: str = "s1", n_cells: int = 4) -> None:
    store.upsert_study(name=name, question="where should the class token go?", kind="grid",
                       study_yaml=f"name: {name}\n", config={"name": name, "factors": {"readout": ["head", "tail"]},
                                                            "nested": NESTED},
                       search_space_yaml="name: tiny\n", n_cells=n_cells)


def _trial(store: Store, run_id: int, ot_id: int, *, study: str = "s1", level: str = "head", seed: int = 0) -> int:
    return store.trial_started(study, run_id, TrialStart(
        number=ot_id, optuna_trial_id=ot_id, key=f"{study}/{level}/{seed}", levels={"readout": level},
        params={"readout": level, "seed": seed}, spec_id=f"spec{level}", spec_json='{"readout": "%s"}' % level,
        seed=seed, budget={"params": 200000, "achieved": 199000, "knob": "width"}))


def test_study_and_run_round_trip(url):
    store = Store(url)
    _study(store)
    _study(store, n_cells=6)  # upsert: the second call updates the same row
    run = store.start_run("s1", "nas run studies/s1.yaml")
    info = store.study("s1")
    assert info.question == "where should the class token go?" and info.kind == "grid"
    assert info.cells == 6 and info.status == "running" and info.study_yaml == "name: s1\n"
    assert info.config["nested"] == NESTED  # JSON round trip, nesting, unicode, None and bools kept
    assert info.search_space_yaml == "name: tiny\n"
    (r,) = info.runs
    assert r.id == run and r.status == "running" and r.code_version and r.hardware["cpus"]
    store.heartbeat(run)
    store.finish_run(run, "finished", 12.5)
    info = store.study("s1")
    assert info.status == "finished" and info.runs[0].wall_seconds == 12.5
    assert info.runs[0].finished_at >= info.runs[0].started_at
    run2 = store.start_run("s1", "again")
    assert store.mark_interrupted_runs("s1") == 1
    assert [x.status for x in store.study("s1").runs] == ["finished", "interrupted"] and run2 > run
    assert store.study("s1").run_of(None).id == run2


def test_trial_lifecycle_epochs_artifacts(url, tmp_path):
    store = Store(url)
    _study(store)
    run = store.start_run("s1", "cmd")
    a = _trial(store, run, 1, level="head")
    b = _trial(store, run, 2, level="tail")
    assert a != b
    store.record_epoch(a, 1, {"train_loss": 2.0, "val_loss": 1.9, "val_acc": 0.3, "lr": 1e-3, "seconds": 0.5,
                              "node_id": "node-a", "device": "cpu", "ignored": 1})
    store.record_epoch(a, 2, {"train_loss": 1.5, "val_loss": 1.4, "val_acc": 0.5})
    store.record_epoch(a, 2, {"val_acc": 0.55})  # a re-report of the same epoch updates it, never duplicates it
    assert store.epochs(a) == [
        {"epoch": 1, "train_loss": 2.0, "val_loss": 1.9, "val_acc": 0.3, "lr": 1e-3, "seconds": 0.5},
        {"epoch": 2, "train_loss": 1.5, "val_loss": 1.4, "val_acc": 0.55, "lr": None, "seconds": None}]
    assert store.epochs(b) == []
    cost = {"throughput": 1234.5, "flops": 10**12, "by_resolution": {"32": {"ms": 1.5}}}
    store.trial_finished(a, TrialState.COMPLETE, TrialOutcome(
        val_acc=0.55, val_loss=1.4, num_params=3_000_000_000, cost=cost, kernel_paths={"scan": "reference"},
        wall_seconds=3.0, train_seconds=2.5, values={"val_acc": 0.55, "throughput": 1234.5}))
    store.trial_finished(b, TrialState.FAILED, error="RuntimeError: boom\n\ntraceback …")
    model = tmp_path / "m.safetensors"
    model.write_bytes(b"x" * 1000)
    store.add_artifact(a, model)
    store.add_artifact(a, model, kind="onnx")
    ta, tb = store.trials("s1")
    assert (ta.id, tb.id) == (a, b) and (ta.number, tb.number) == (1, 2)
    assert ta.state is TrialState.COMPLETE and ta.state == "complete" and ta.val_acc == 0.55
    assert ta.num_params == 3_000_000_000  # > 2**31
    assert ta.cost == cost and ta.kernel_paths == {"scan": "reference"} and ta.values["throughput"] == 1234.5
    assert ta.node_id == "node-a" and ta.device == "cpu" and tb.device is None
    assert ta.levels == {"readout": "head"} and ta.seed == 0
    assert ta.budget == {"params": 200000, "achieved": 199000, "knob": "width"}
    assert ta.row()["readout"] == "head" and ta.row()["throughput"] == 1234.5
    assert ta.finished_at >= ta.started_at and ta.wall_seconds == 3.0
    assert tb.state == "failed" and tb.error.startswith("RuntimeError: boom") and tb.val_acc is None
    assert [t.id for t in store.trials("s1", states=(TrialState.FAILED,))] == [b]
    assert store.trial("s1", 2).id == b
    with pytest.raises(StoreError, match="no trial number 7"):
        store.trial("s1", 7)
    arts = store.artifacts(a)
    assert [(x.kind, x.bytes, x.path) for x in arts] == [("model", 1000, str(model)), ("onnx", 1000, str(model))]
    assert store.artifacts(b) == []


def test_a_batch_of_epochs_is_stored_as_one_by_one(url):
    """`record_epochs` (the callback's batched write) leaves what `record_epoch` calls in the same order leave."""
    reports = [EpochReport(1, 1, {"train_loss": 2.0, "val_acc": 0.3, "node_id": "n1", "device": "cpu"}),
               EpochReport(2, 1, {"val_acc": 0.2, "lr": float("nan")}),
               EpochReport(1, 2, {"val_acc": 0.5, "seconds": 1.5}),
               EpochReport(1, 2, {"val_acc": 0.55}),  # a re-report in the same batch
               EpochReport(1, 3, {"val_acc": 0.6, "node_id": "n2"})]  # the trial moved
    store = Store(url)
    rows = {}
    for name in ("one_by_one", "batched"):
        _study(store, name=name)
        run = store.start_run(name, "cmd")
        rows[name] = {i: _trial(store, run, i, study=name) for i in (1, 2)}
    one, many = rows["one_by_one"], rows["batched"]
    for r in reports:
        store.record_epoch(one[r.trial_id], r.epoch, r.metrics)
    store.record_epoch(one[2], 1, {"val_acc": 0.25})
    mine = [EpochReport(many[r.trial_id], r.epoch, r.metrics) for r in reports]
    store.record_epochs(mine[:2])
    store.record_epochs(mine[2:])  # epoch 1 of trial 2 exists now: the next batch updates it, never duplicates it
    store.record_epochs([EpochReport(many[2], 1, {"val_acc": 0.25})])
    for i in (1, 2):
        assert store.epochs(many[i]) == store.epochs(one[i])
    assert store.epochs(many[1])[1] == {"epoch": 2, "train_loss": None, "val_loss": None, "val_acc": 0.55,
                                        "lr": None, "seconds": 1.5}
    assert store.epochs(many[2]) == [{"epoch": 1, "train_loss": None, "val_loss": None, "val_acc": 0.25, "lr": None,
                                      "seconds": None}]  # NaN stored as NULL
    assert [(t.node_id, t.number) for t in store.trials("batched")] == \
        [(t.node_id, t.number) for t in store.trials("one_by_one")] == [("n2", 1), (None, 2)]


def test_restart_of_a_trial_counts_attempts_and_stale_trials_are_failed(url):
    store = Store(url)
    _study(store)
    _study(store, name="other")
    run = store.start_run("s1", "cmd")
    a = _trial(store, run, 1)
    store.record_epoch(a, 1, {"val_acc": 0.1})
    assert _trial(store, run, 1) == a  # the same Optuna trial restarted by Ray: same row, one more attempt
    b = _trial(store, run, 2, level="tail")
    store.trial_finished(b, TrialState.COMPLETE, TrialOutcome(val_acc=0.9))
    o = _trial(store, run, 3, study="other")
    assert store.fail_stale_trials("s1") == [1]
    assert store.fail_stale_trials("s1") == []  # idempotent
    ta = store.trial("s1", 1)
    assert ta.state == "stale" and ta.error == STALE_ERROR and ta.finished_at is not None
    assert ta.attempts == 2 and store.trial("s1", 2).attempts == 1  # the readers' view counts the restart
    assert store.trial("other", 3).state == "running" and o  # another study's running trial is left alone
    assert store.completed_keys("s1") == {"s1/tail/0"}
    store.trial_finished(_trial(store, run, 4, level="mid"), TrialState.STOPPED, TrialOutcome(val_acc=0.4))
    assert store.completed_keys("s1") == {"s1/tail/0", "s1/mid/0"}
    assert store.completed_keys("nope") == set()


def test_studies_listing_counts_states_and_best(url):
    store = Store(url)
    _study(store, "s1")
    _study(store, "s2")
    run = store.start_run("s1", "cmd")
    for i, (state, acc) in enumerate([("complete", 0.7), ("complete", 0.8), ("failed", None), ("running", None),
                                      ("stopped", 0.95)], start=1):
        t = _trial(store, run, i, level=f"l{i}")
        if state != "running":
            store.trial_finished(t, TrialState(state), TrialOutcome(val_acc=acc) if acc is not None else None)
    rows = {r.name: r for r in store.studies()}
    assert set(rows) == {"s1", "s2"}
    r = rows["s1"]
    assert [r.counts[s] for s in ("complete", "failed", "running", "stopped", "stale")] == [2, 1, 1, 1, 0]
    assert (r.done, r.failed, r.running, r.interrupted) == (3, 1, 1, 0)
    assert r.best_val_acc == pytest.approx(0.8)  # best over complete trials only
    assert r.cells == 4 and r.kind == "grid"
    assert rows["s2"].done == 0 and rows["s2"].best_val_acc is None


def test_non_finite_numbers_are_stored_as_null(url):
    store = Store(url)
    _study(store)
    run = store.start_run("s1", "cmd")
    t = _trial(store, run, 1)
    store.record_epoch(t, 1, {"train_loss": float("nan"), "val_loss": float("inf"), "val_acc": float("-inf"),
                              "lr": "not a number", "seconds": 1.0})
    assert store.epochs(t) == [{"epoch": 1, "train_loss": None, "val_loss": None, "val_acc": None, "lr": None,
                                "seconds": 1.0}]
    store.trial_finished(t, TrialState.FAILED, TrialOutcome(
        val_acc=math.nan, val_loss=math.inf, cost={"throughput": math.nan, "flops": 5, "by_res": [math.inf, 1.0]},
        values={"val_acc": math.nan, "throughput": -math.inf}))
    (v,) = store.trials("s1")
    assert v.val_acc is None and v.values == {"val_acc": None, "throughput": None}
    assert v.cost == {"throughput": None, "flops": 5, "by_res": [None, 1.0]}  # inside JSON too: valid JSON


def test_unknown_study_is_an_error_naming_what_exists(url):
    store = Store(url)
    with pytest.raises(StoreError, match="database is empty"):
        store.study("nope")
    _study(store, "s1")
    with pytest.raises(StoreError, match=r"no study named 'nope'.*studies there: s1"):
        store.study("nope")
    assert store.trials("nope") == []


def test_read_only_store_reads_and_refuses_writes(url, tmp_path):
    if url.startswith("sqlite://") and not url.startswith("sqlite:///"):
        pytest.skip("an in-memory database exists only inside its writer's engine: a second, read-only Store "
                    "opens a new empty database (nothing to read)")
    writer = Store(url)
    _study(writer)
    run = writer.start_run("s1", "cmd")
    t = _trial(writer, run, 1)
    reader = Store(url, read_only=True)
    assert [r.name for r in reader.studies()] == ["s1"] and reader.trials("s1")[0].id == t
    writes = [lambda: _study(reader, "s9"), lambda: reader.start_run("s1", "x"), lambda: _trial(reader, run, 5),
              lambda: reader.record_epoch(t, 1, {"val_acc": 0.5}),
              lambda: reader.record_epochs([EpochReport(t, 2, {"val_acc": 0.5})]),  # bulk: no ORM flush to stop it
              lambda: reader.trial_finished(t, TrialState.COMPLETE), lambda: reader.fail_stale_trials("s1")]
    for write in writes:
        with pytest.raises(StoreError, match="read-only"):
            write()
    assert [r.name for r in writer.studies()] == ["s1"] and writer.epochs(t) == []
    assert writer.trials("s1")[0].state == "running" and len(writer.study("s1").runs) == 1


def test_unreachable_database_is_a_store_error(tmp_path):
    with pytest.raises(StoreError, match="no study database"):
        Store(f"sqlite:///{tmp_path / 'missing.db'}", read_only=True)
    with pytest.raises(StoreError, match="cannot open the study database"):
        Store("postgresql+psycopg://nas@127.0.0.1:1/none")


def test_optuna_shares_the_database(url):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    store = Store(url)
    storage = store.optuna_storage()
    study = optuna.create_study(storage=storage, study_name="s1", direction="maximize")
    study.enqueue_trial({"readout": "tail", "seed": 1})
    study.optimize(lambda tr: 0.1 + 0.2 * (tr.suggest_categorical("readout", ["head", "tail"]) == "tail")
                   + 0.01 * tr.suggest_int("seed", 0, 1), n_trials=3)
    _study(store)  # our tables beside Optuna's in the same database
    # in memory, only the same storage object sees that database; a file or a server is opened again by URL
    again = optuna.load_study(study_name="s1", storage=storage if url == "sqlite://" else url)
    assert len(again.trials) == 3 and again.trials[0].params == {"readout": "tail", "seed": 1}
    assert again.best_value == pytest.approx(0.31)
    assert [r.name for r in store.studies()] == ["s1"]
    if url == "sqlite://":
        return
    # readers open Optuna's tables the same way as ours: read-only (on SQLite the file itself refuses writes)
    reader = optuna.load_study(study_name="s1", storage=Store(url, read_only=True).optuna_storage())
    assert len(reader.trials) == 3 and reader.best_value == pytest.approx(0.31)
    if url.startswith("sqlite:///"):
        with pytest.raises(Exception) as refused:  # noqa: PT011 - Optuna wraps the driver's error
            reader.enqueue_trial({"readout": "head", "seed": 0})
        assert "readonly" in f"{refused.value!r} {refused.value.__cause__!r} {refused.value.__context__!r}"
        assert len(optuna.load_study(study_name="s1", storage=url).trials) == 3


# ----------------------------------------------------------------------------------- nas run on PostgreSQL
STUDY = """
name: pg_study
question: does the platform run unchanged on PostgreSQL?
search_space: tiny_plain
fixed: {route: bi, dims: [16], depths: [1]}
factors:
  readout: [head, middle]
reference: {readout: head}
seeds: [0]
data: {name: digits, n_train: 128, n_test: 64, img_size: 16}
train: {epochs: 1, batch_size: 32, lr: 3.0e-3, warmup_epochs: 0.5}
execution: {cpus_per_trial: 1, retries: 0, num_cpus: 2}
measure: {repeats: 1}
"""


def _nas(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "COLUMNS": "200"})


@pytest.mark.slow
def test_nas_run_on_postgresql(postgres_url, tmp_path):
    import optuna
    from typer.testing import CliRunner

    from nas.cli import app

    study = tmp_path / "studies" / "pg_study.yaml"
    study.parent.mkdir()
    study.write_text(STUDY)
    db = ["--db", postgres_url]
    proc = _nas("run", str(study), *db, "--set", f"storage.artifacts={tmp_path / 'artifacts'}",
                "--set", f"storage.ray_results={tmp_path / 'ray'}", "--max-concurrent", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 trial(s) finished, 0 failed" in proc.stdout and "(reference)" in proc.stdout
    store = Store(postgres_url, read_only=True)
    trials = store.trials("pg_study")
    assert sorted((t.levels["readout"], t.state) for t in trials) == [("head", "complete"), ("middle", "complete")]
    for t in trials:
        assert 0 <= t.val_acc <= 1 and t.num_params > 0 and t.node_id and t.cost["flops"] > 0
        assert [e["epoch"] for e in store.epochs(t.id)] == [1]
        assert Path(store.artifacts(t.id)[0].path).is_file()
    assert store.completed_keys("pg_study") == {t.key for t in trials}  # what a resumed run skips
    ot = optuna.load_study(study_name="pg_study", storage=postgres_url)
    assert sorted(t.state.name for t in ot.trials) == ["COMPLETE", "COMPLETE"]
    # the readers, in this process (the CLI's start-up is not what this test is about)
    listing = CliRunner().invoke(app, ["list", *db], env={"COLUMNS": "200"})
    show = CliRunner().invoke(app, ["show", "pg_study", *db], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "pg_study" in listing.output, listing.output
    assert show.exit_code == 0 and "middle" in show.output and "(reference)" in show.output, show.output
