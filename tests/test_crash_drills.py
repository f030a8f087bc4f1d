"""Crash drill: the driver of a study is killed with SIGKILL at 10 moments chosen by a fixed-seed RNG, and after each
kill the same `nas run` command is started again; a last run finishes the study. Then:

- 0 finished trials lost: every trial complete at any kill is still complete, same row, same val_acc;
- 0 repeated: every cell is complete exactly once in our tables. Optuna's count is reported, and warned about, but
  not asserted: Tune tells the searcher (Optuna COMPLETE) before it calls our callback (our row complete), and a
  driver killed between the two leaves a cell COMPLETE in Optuna but running in our tables; the restart marks it
  stale and runs it again, so Optuna ends with two COMPLETE trials for that cell. The drill hit this once in four
  runs (the gap lasted seconds: the driver had stalled after Tune saved its experiment state);
- every stale trial re-queued: no Optuna trial is left RUNNING; every row marked stale has its Optuna trial failed,
  every Optuna trial a restart failed has a row marked stale (one the driver died before writing is written then), and
  the stale re-queues the restarts reported add up to no more than those rows;
- per-epoch curves of finished trials intact: epochs 1..E for each.

The moments are of three kinds: a delay after start (the driver may be planning, starting Ray or running trials),
"after N more trials finished in this run", and "while a trial is running with at least E epochs reported". Only the
driver's pid is killed (a crash, not a tidy shutdown); the local Ray it started must go away with it (its processes
fate-share with the driver); any still alive ORPHAN_GRACE_S after the kill are counted as orphans, reported and then
killed.

`run_drill` is shared with benchmarks/drill_crash.py, which prints the figures.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NAS = [sys.executable, "-m", "nas.cli"]
DRILL_SEED = 20261123
N_KILLS = 10
EPOCHS = 4  # long enough that the drill's study is still running at its later kill moments
NAME = "crash_drill"

STUDY = f"""
name: {NAME}
question: does a study survive its driver being killed?
search_space: tiny_plain
fixed: {{route: bi, dims: [16], depths: [1]}}
factors:
  readout: [head, middle, tail, double, mean, max]
seeds: [0, 1]
data: {{name: digits, n_train: 128, n_test: 64, img_size: 16}}
train: {{epochs: {EPOCHS}, batch_size: 32, lr: 3.0e-3, warmup_epochs: 0.5}}
execution: {{cpus_per_trial: 1, retries: 0, num_cpus: 2}}
measure: {{skip: true}}
"""
N_CELLS = 12
ORPHAN_GRACE_S = 120.0


@dataclass
class Moment:
    kind: str  # delay | finished | epoch
    value: float  # seconds after start | trials finished in this run | epochs reported by a running trial

    def __str__(self) -> str:
        return {"delay": f"{self.value:.1f} s after start", "finished": f"after {int(self.value)} trial(s) finished",
                "epoch": f"a trial running with >= {int(self.value)} epoch(s)"}[self.kind]


@dataclass
class Kill:
    moment: Moment
    reached: bool  # False: the driver ended before the moment came (nothing was killed)
    at_s: float  # seconds after start
    complete: int  # trials complete in the database at the kill
    running: int  # our rows running at the kill
    lingering: int  # processes of the driver's tree still alive 1 s after the kill
    orphans: int = 0  # ... and still alive ORPHAN_GRACE_S after the kill
    orphan_names: list[str] = field(default_factory=list)
    gone_after_s: float | None = None  # when the drill waited for its processes: how long after the kill they went


@dataclass
class DrillResult:
    kills: list[Kill] = field(default_factory=list)
    lost: int = 0
    repeated: int = 0
    repeated_in_optuna: int = 0
    stale_rows: int = 0  # our rows marked stale
    optuna_stale: int = 0  # Optuna trials failed as stale by a restart (their rows are marked stale)
    requeued_reported: int = 0  # sum of "N stale trial(s) ... re-queued" printed by the restarts
    left_running_in_optuna: int = 0
    stale_rows_unmarked: int = 0  # rows marked stale whose Optuna trial was not failed
    failed_without_row: int = 0  # Optuna trials failed (by a restart: nothing else fails here) with no stale row
    broken_curves: int = 0
    complete: int = 0
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"crash drill (seed {DRILL_SEED}): {sum(k.reached for k in self.kills)} of {len(self.kills)} kills "
                 f"landed, {self.seconds:.0f} s"]
        for i, k in enumerate(self.kills, 1):
            lines.append(f"  kill {i:2d}: {str(k.moment):38s} " + (
                f"at {k.at_s:5.1f} s, {k.complete:2d} complete, {k.running} running, {k.lingering} process(es) "
                f"alive 1 s later, {k.orphans} orphan(s)" + (f" (the last went {k.gone_after_s:.0f} s after the kill)"
                                                             if k.gone_after_s else "")
                + (f" {k.orphan_names}" if k.orphan_names else "")
                if k.reached else "not reached (the driver ended first)"))
        lines.append(f"  finished trials lost: {self.lost}; repeated: {self.repeated} (Optuna: "
                     f"{self.repeated_in_optuna}); stale trials re-queued: {self.optuna_stale} (reported by the "
                     f"restarts: {self.requeued_reported}; our rows marked stale: {self.stale_rows}); left RUNNING in "
                     f"Optuna: {self.left_running_in_optuna}; failed in Optuna without a stale row: "
                     f"{self.failed_without_row}; broken curves: {self.broken_curves}; complete: "
                     f"{self.complete}/{N_CELLS}")
        return "\n".join(lines)


def drill_moments(seed: int = DRILL_SEED, n: int = N_KILLS) -> list[Moment]:
    """A fixed mix of kinds (delays, after-finished, mid-trial in turn: 4 / 3 / 3 of 10, 2 / 2 / 1 of 5) in a seeded
    order with seeded values."""
    rng = random.Random(seed)
    kinds = (["delay", "finished", "epoch"] * n)[:n]
    rng.shuffle(kinds)
    values = {"delay": lambda: round(rng.uniform(1.0, 14.0), 1), "finished": lambda: rng.randint(1, 2),
              "epoch": lambda: rng.randint(0, EPOCHS - 1)}
    return [Moment(k, values[k]()) for k in kinds]


def _processes() -> dict[int, int]:
    """pid → parent pid of every live, non-zombie process."""
    out = {}
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                out[int(proc.name)] = int(fields[1])
    return out


def _descendants(pid: int) -> set[int]:
    table = _processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in table.items() if pp in frontier} - found
        found |= frontier
    return found


def _name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    return " ".join(a.decode(errors="replace") for a in argv[:2])[:120]


def _alive(pids: set[int]) -> set[int]:
    table = _processes()
    return {p for p in pids if p in table}


def _snapshot(url: str) -> tuple[dict[str, tuple[int, float]], set[int]]:
    """(key → (row id, val_acc) of complete trials, ids of running rows); empty before the tables exist."""
    from nas.store import Store

    try:
        trials = Store(url, read_only=True).trials(NAME)
    except Exception:  # noqa: BLE001 - no database or tables yet
        return {}, set()
    return ({t.key: (t.id, t.val_acc) for t in trials if t.state == "complete"},
            {t.id for t in trials if t.state == "running"})


def _epochs_of_running(url: str, old: set[int]) -> list[int]:
    """Epochs reported by each running trial of this driver (rows in `old` are the dead driver's, not yet marked
    stale)."""
    from nas.store import Store

    try:
        store = Store(url, read_only=True)
        return [len(store.epochs(t.id)) for t in store.trials(NAME, states=("running",)) if t.id not in old]
    except Exception:  # noqa: BLE001
        return []


def run_drill(tmp: Path, moments: list[Moment] | None = None, log=lambda msg: None) -> DrillResult:  # noqa: ANN001
    moments = drill_moments() if moments is None else moments
    study = tmp / "studies" / f"{NAME}.yaml"
    study.parent.mkdir(parents=True, exist_ok=True)
    study.write_text(STUDY)
    db = tmp / "nas.db"
    url = f"sqlite:///{db}"
    cmd = [*NAS, "run", str(study), "--db", url, "--set", f"storage.artifacts={tmp / 'artifacts'}",
           "--set", f"storage.ray_results={tmp / 'ray'}", "--max-concurrent", "2"]
    # every epoch written as it is reported: the drill's trials are shorter than the driver's 1-s batch, and its
    # mid-trial moments wait for a running trial's epochs in the database
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1", "NAS_EPOCH_FLUSH_S": "0"}
    env.pop("RAY_ADDRESS", None)
    result = DrillResult()
    seen_complete: dict[str, tuple[int, float]] = {}
    trees: list[tuple[float, set[int]]] = []  # per kill: when, and the dead driver's process tree at that moment
    t_drill = time.perf_counter()
    for i, m in enumerate(moments):
        out_path = tmp / f"run{i:02d}.out"
        with open(out_path, "w") as out:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True)
        t0 = time.monotonic()
        done_before, running_before = _snapshot(url)
        base = len(done_before)
        reached = False
        while proc.poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.1)
            if m.kind == "delay":
                reached = time.monotonic() - t0 >= m.value
            elif m.kind == "finished":
                reached = len(_snapshot(url)[0]) - base >= m.value
            else:
                reached = any(e >= m.value for e in _epochs_of_running(url, running_before))
            if reached:
                break
        tree: set[int] = set()
        if proc.poll() is None:
            reached = True  # the moment came (or, past 120 s, the drill kills anyway)
            tree = _descendants(proc.pid)
            os.kill(proc.pid, signal.SIGKILL)
        at = time.monotonic() - t0
        proc.wait(timeout=60)  # reaped: a zombie's pid would look alive to the next driver's check
        time.sleep(1.0)
        lingering = _alive(tree)
        trees.append((time.monotonic(), tree))
        complete, running = _snapshot(url)
        for key, (row, acc) in complete.items():
            seen_complete.setdefault(key, (row, acc))
        result.kills.append(Kill(m, reached, at, len(complete), len(running), len(lingering)))
        result.outputs.append(out_path.read_text())
        log(f"kill {i + 1}: {m} → " + (f"killed at {at:.1f} s, {len(complete)} complete, {len(running)} running, "
                                       f"{len(lingering)} of its processes alive 1 s later" if reached else
                                       "driver ended first"))
    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    result.outputs.append(final.stdout + final.stderr)
    assert final.returncode == 0, final.stdout + final.stderr
    _count_orphans(result, trees)
    result.seconds = time.perf_counter() - t_drill
    _tally(result, url, seen_complete)
    log(result.summary())
    return result


def _count_orphans(result: DrillResult, trees: list[tuple[float, set[int]]], grace_s: float = ORPHAN_GRACE_S) -> None:
    """Processes of a killed driver's tree still alive `grace_s` after the kill are orphans (they are ours, so they are
    killed once counted). Ray's agents outlive a SIGKILLed driver by up to a minute: they notice the dead raylet
    within ~2 s but then try to report it to the dead GCS until that RPC times out."""
    for kill, (t_kill, tree) in zip(result.kills, trees):
        waited = False
        while _alive(tree) and time.monotonic() < t_kill + grace_s:
            waited = True
            time.sleep(0.5)
        left = _alive(tree)
        if waited and not left:
            kill.gone_after_s = time.monotonic() - t_kill
        kill.orphans, kill.orphan_names = len(left), sorted(_name(p) for p in left)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _tally(result: DrillResult, url: str, seen_complete: dict[str, tuple[int, float]]) -> None:
    import optuna
    from optuna.trial import TrialState

    from nas.store import Store

    store = Store(url, read_only=True)
    trials = store.trials(NAME)
    complete = [t for t in trials if t.state == "complete"]
    by_key: dict[str, list[Any]] = {}
    for t in complete:
        by_key.setdefault(t.key, []).append(t)
    result.complete = len(by_key)
    result.repeated = sum(len(v) - 1 for v in by_key.values())
    now = {t.key: (t.id, t.val_acc) for t in complete}
    result.lost = sum(1 for k, v in seen_complete.items() if now.get(k) != v)
    result.stale_rows = sum(t.state == "stale" for t in trials)
    result.broken_curves = sum([e["epoch"] for e in store.epochs(t.id)] != list(range(1, EPOCHS + 1))
                               for t in complete)
    ot = optuna.load_study(study_name=NAME, storage=url)
    ot_trials = ot.get_trials(deepcopy=False)
    result.left_running_in_optuna = sum(t.state == TrialState.RUNNING for t in ot_trials)
    failed_in_optuna = {t.number for t in ot_trials if t.state == TrialState.FAIL}
    ot_done: dict[str, int] = {}
    for t in ot_trials:
        if t.state == TrialState.COMPLETE:
            ot_done[t.user_attrs.get("nas:key")] = ot_done.get(t.user_attrs.get("nas:key"), 0) + 1
    result.repeated_in_optuna = sum(n - 1 for n in ot_done.values())
    stale_numbers = {r["number"] for r in _rows(url) if r["state"] == "stale"}
    result.optuna_stale = len(stale_numbers & failed_in_optuna)
    result.stale_rows_unmarked = len(stale_numbers - failed_in_optuna)
    result.failed_without_row = len(failed_in_optuna - stale_numbers)
    result.requeued_reported = sum(int(m) for out in result.outputs
                                   for m in re.findall(r"(\d+) stale trial\(s\) from an interrupted run re-queued",
                                                       out))


def _rows(url: str) -> list[dict[str, Any]]:
    from sqlalchemy import text

    from nas.store import make_engine

    with make_engine(url, read_only=True).connect() as con:
        return [dict(r._mapping) for r in con.execute(text(f"select number, state from nas_trials "
                                                           f"where study_name = '{NAME}'"))]


CI_KILLS = 5  # the suite's drill (CI has 2 cores and 20 minutes for everything); benchmarks/drill_crash.py runs 10


def test_moments_are_fixed_and_mixed():
    for n in (CI_KILLS, N_KILLS):
        a, b = drill_moments(n=n), drill_moments(n=n)
        assert [str(m) for m in a] == [str(m) for m in b] and len(a) == n
        assert {m.kind for m in a} == {"delay", "finished", "epoch"}


def test_crash_drill_loses_and_repeats_nothing(tmp_path):
    r = run_drill(tmp_path, drill_moments(n=CI_KILLS), log=lambda msg: print(msg, flush=True))
    print(r.summary())
    landed = [k for k in r.kills if k.reached]
    assert len(landed) >= CI_KILLS - 1, r.summary()  # the study must still be running at (nearly) every moment
    assert r.complete == N_CELLS, r.summary()
    assert r.lost == 0, r.summary()
    assert r.repeated == 0, r.summary()
    if r.repeated_in_optuna:  # a known gap (see the module's docstring): reported, not failed
        warnings.warn(f"{r.repeated_in_optuna} cell(s) COMPLETE twice in Optuna's tables: the driver died between "
                      "Optuna's tell and our row's update", stacklevel=1)
    assert r.left_running_in_optuna == 0, r.summary()
    assert r.stale_rows_unmarked == 0, r.summary()  # every stale row's Optuna trial was failed and re-queued
    assert r.failed_without_row == 0, r.summary()  # every Optuna trial a restart failed is recorded as stale
    assert r.stale_rows <= r.optuna_stale, r.summary()
    assert r.requeued_reported <= r.optuna_stale, r.summary()  # a restart killed before printing reports nothing
    assert r.optuna_stale >= 1, r.summary()  # the mid-trial kills did leave stale trials
    assert r.broken_curves == 0, r.summary()
    assert sum(k.orphans for k in landed) == 0, r.summary()
