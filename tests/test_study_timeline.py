"""benchmarks/study_timeline.py on a small store written here, with the trials' clock times set by hand: each row's
start, end and outside part, and the summary's overlap and sums."""

from __future__ import annotations

import datetime as dt
import importlib.util
import subprocess
import sys
from pathlib import Path

from sqlalchemy import update
from sqlalchemy.orm import Session

from nas.database import RunRow, TrialRow
from nas.records import TrialOutcome, TrialStart, TrialState
from nas.store import Store

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "study_timeline.py"
T0 = dt.datetime(2026, 12, 6, 12, 0, 0)
# (start s, end s, wall s, train s, epoch seconds) from the run's start; trials 0 and 1 overlap for 5 s
TRIALS = [(10.0, 30.0, 18.0, 15.0, (7.0, 8.0)), (25.0, 40.0, 12.0, 10.0, (5.0, 5.0)), (40.0, 50.0, 9.0, 8.0, (8.0,))]


def _timeline_module():
    spec = importlib.util.spec_from_file_location("study_timeline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _store(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'timeline.db'}"
    store = Store(url)
    store.upsert_study(name="t", question="q", kind="grid", study_yaml="", config={"name": "t"},
                       search_space_yaml="", n_cells=len(TRIALS))
    run = store.start_run("t", "nas run t")
    for n, (start, end, wall, train, epochs) in enumerate(TRIALS):
        row = store.trial_started("t", run, TrialStart(number=n, optuna_trial_id=n, key=f"t/cell{n}", levels={},
                                                       params={}, spec_id="s", spec_json="{}", seed=n))
        for e, seconds in enumerate(epochs, 1):
            store.record_epoch(row, e, {"val_acc": 0.5, "seconds": seconds})
        store.trial_finished(row, TrialState.COMPLETE, TrialOutcome(val_acc=0.5, wall_seconds=wall,
                                                                     train_seconds=train))
        with Session(store.engine) as s, s.begin():
            s.execute(update(TrialRow).where(TrialRow.id == row).values(
                started_at=T0 + dt.timedelta(seconds=start), finished_at=T0 + dt.timedelta(seconds=end)))
    store.finish_run(run, "finished", 55.0)
    with Session(store.engine) as s, s.begin():
        s.execute(update(RunRow).where(RunRow.id == run).values(started_at=T0,
                                                                finished_at=T0 + dt.timedelta(seconds=55)))
    store.engine.dispose()
    return url


def test_rows_and_summary(tmp_path):
    rows, sm = _timeline_module().timeline(_store(tmp_path))
    assert [r[3:7] for r in rows] == [[s, e, w, t] for s, e, w, t, _ in TRIALS]
    assert [r[7] for r in rows] == ["7.00 / 8.00", "5.00 / 5.00", "8.00"]
    assert [r[8] for r in rows] == [e - s - w for s, e, w, _, _ in TRIALS]  # 2, 3, 1 s outside the trials
    assert sm["trials"] == 3 and sm["first_start_s"] == 10.0 and sm["span_s"] == 50.0 and sm["run_end_s"] == 55.0
    assert sm["mean_overlap"] == (20 + 15 + 10) / (50 - 10)  # 45 trial-seconds over 40 s
    assert (sm["sum_train_s"], sm["sum_wall_s"], sm["sum_outside_s"]) == (33.0, 39.0, 6.0)


def test_command_line_prints_the_table(tmp_path):
    url = _store(tmp_path)
    out = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "timeline.db")], capture_output=True,
                         text=True, check=True, cwd=ROOT).stdout
    lines = out.splitlines()
    assert lines[0].startswith("| trial | cell |") and len([ln for ln in lines if ln.startswith("| ")]) == 4
    assert "3 trials; the first started 10.0 s after the run" in out and "1.12 trials at once" in out
    assert url.endswith("timeline.db")
