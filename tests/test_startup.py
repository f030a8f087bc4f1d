"""`nas run` starts Ray (and MPS, the kernel warm-up) beside the CPU pre-flight (`plan_study(beside=)`,
`nas.execute.Startup`): the two overlap, a pre-flight's error still wins and leaves nothing running, the runner
adopts what was started instead of starting it again, and a study another driver owns starts nothing."""

from __future__ import annotations

import os
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from typer.testing import CliRunner

import nas.execute as execute
import nas.plan as plan_module
from nas.cli import app
from nas.config import load_study
from nas.driver import Round
from nas.errors import StudyConfigError
from nas.plan import plan_study

STUDY = "studies/cls_token_position.yaml"


def _sets(tmp_path) -> list[str]:
    return [f"storage.ray_results={tmp_path / 'ray'}", f"storage.artifacts={tmp_path / 'art'}"]


def test_beside_runs_on_the_calling_thread_while_the_preflights_run(tmp_path, monkeypatch):
    """Each pre-flight waits until `beside` has begun: run one after the other, the first pre-flight would time out."""
    begun = threading.Event()
    threads = set()
    real = plan_module.preflight_spec

    def preflight(spec, **kw):
        assert begun.wait(timeout=30), "the pre-flights did not run beside `beside`"
        threads.add(threading.current_thread())
        return real(spec, **kw)

    monkeypatch.setattr(plan_module, "preflight_spec", preflight)
    seen = []

    def beside(arms):
        seen.append((threading.current_thread(), [a.spec.id for a in arms]))
        begun.set()

    plan = plan_study(load_study(STUDY, sets=_sets(tmp_path)), timed=False, beside=beside)
    assert seen == [(threading.main_thread(), [a.spec.id for a in plan.arms])]
    assert threads and threading.main_thread() not in threads
    assert set(plan.preflight) == {a.spec.id for a in plan.arms}


def test_untimed_checks_run_side_by_side_and_the_first_arms_error_wins(tmp_path, monkeypatch):
    """`nas run`'s checks (untimed) run on several threads; whatever finishes first, a failure is reported for the
    first failing arm in the study's order, as one after the other would."""
    sf = load_study(STUDY, sets=_sets(tmp_path))
    arms = plan_study(sf, timed=False).arms
    assert len(arms) >= 2
    first = arms[0].spec.id
    lock, running, most = threading.Lock(), [0], [0]

    def slow_then_broken(spec, **kw):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.5 if spec.id == first else 0.1)
        with lock:
            running[0] -= 1
        raise ValueError("first arm" if spec.id == first else "a later arm")

    monkeypatch.setattr(plan_module, "preflight_spec", slow_then_broken)
    with pytest.raises(StudyConfigError, match=f"pre-flight failed for {re.escape(str(arms[0].levels))}.*first arm"):
        plan_study(sf, timed=False)
    assert most[0] == min(len(arms), os.cpu_count() or 1, plan_module.PREFLIGHT_THREADS)


def test_a_preflight_error_wins_over_besides(tmp_path, monkeypatch):
    def broken(spec, **kw):
        raise ValueError("shape mismatch deep in a mixer")

    def beside(arms):
        raise RuntimeError("Ray failed to start")

    monkeypatch.setattr(plan_module, "preflight_spec", broken)
    with pytest.raises(StudyConfigError, match="pre-flight failed.*shape mismatch"):
        plan_study(load_study(STUDY, sets=_sets(tmp_path)), timed=False, beside=beside)
    monkeypatch.undo()
    with pytest.raises(RuntimeError, match="Ray failed to start"):
        plan_study(load_study(STUDY, sets=_sets(tmp_path)), timed=False, beside=beside)


@pytest.fixture
def fake_startup(monkeypatch):
    """Startup's parts recorded instead of run: MPS off, a warm-up process stand-in, Ray never really started."""
    calls = []
    proc = SimpleNamespace(log_file=SimpleNamespace(name="warm.log"))
    monkeypatch.setattr(execute, "start_mps", lambda study: None)
    monkeypatch.setattr(execute, "stop_mps", lambda d: None)
    monkeypatch.setattr(execute, "start_warmup", lambda study, specs: calls.append(("warmup", len(specs))) or proc)
    monkeypatch.setattr(execute, "stop_warmup", lambda p: calls.append(("stop warmup", p)) if p else None)
    monkeypatch.setattr(execute, "bytecode_hint", lambda: None)
    monkeypatch.setattr(execute, "init_ray", lambda study: calls.append(("ray", None)))
    import ray

    monkeypatch.setattr(ray, "shutdown", lambda: calls.append(("shutdown", None)))
    return calls


def test_a_failed_preflight_leaves_nothing_running(tmp_path, monkeypatch, fake_startup):
    """`nas run` began the warm-up and Ray beside the pre-flight; the pre-flight fails: exit 2 with its message, and
    both are stopped."""
    arms = len(plan_study(load_study(STUDY, sets=_sets(tmp_path)), timed=False).arms)
    monkeypatch.setattr(plan_module, "preflight_spec", lambda spec, **kw: (_ for _ in ()).throw(ValueError("NaN")))
    result = CliRunner().invoke(app, ["run", STUDY, "--db", f"sqlite:///{tmp_path / 'nas.db'}",
                                      *[a for s in _sets(tmp_path) for a in ("--set", s)]], terminal_width=200)
    assert result.exit_code == 2 and "pre-flight failed" in result.output, result.output
    assert fake_startup[:2] == [("warmup", arms), ("ray", None)]
    assert fake_startup[2:] == [("stop warmup", fake_startup[2][1]), ("shutdown", None)]
    assert not (tmp_path / "nas.db").exists()  # a failed check writes nothing


def test_the_runner_adopts_a_begun_startup(tmp_path, monkeypatch, fake_startup, run_events):
    """Ray and the warm-up began beside the pre-flight: the first round starts neither again, prints their lines
    (Ray's says where it started) and closing the runner stops both once."""
    plan = plan_study(load_study(STUDY, sets=_sets(tmp_path)), timed=False)
    startup = execute.Startup(plan.study)
    startup.begin([a.spec.to_json() for a in plan.arms], where=", beside the pre-flight")
    assert run_events.events == []  # no progress yet: the lines wait
    runner = execute.TuneRunner(plan, startup=startup)
    assert runner.started
    monkeypatch.setattr(execute, "check_fits", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))  # end here
    with pytest.raises(KeyboardInterrupt):
        runner.run_round(run_events, Round(1, 1))
    runner.close()
    startup.close()  # the CLI closes it again: nothing happens twice
    assert [c[0] for c in fake_startup] == ["warmup", "ray", "stop warmup", "shutdown"]
    texts = [info["text"] for kind, info in run_events.events if kind == "setup"]
    assert texts[0] == "kernel warm-up running in the background (log: warm.log)"
    assert texts[1].startswith("Ray started in ") and texts[1].endswith(" s, beside the pre-flight")


def test_a_study_another_driver_owns_starts_nothing(tmp_path, monkeypatch, fake_startup):
    import nas.cli as cli

    monkeypatch.setattr(cli, "_store_would_open", lambda study: False)
    monkeypatch.setattr(execute, "run_study", lambda *a, **k: (_ for _ in ()).throw(StudyConfigError("busy")))
    result = CliRunner().invoke(app, ["run", STUDY, "--db", f"sqlite:///{tmp_path / 'nas.db'}",
                                      *[a for s in _sets(tmp_path) for a in ("--set", s)]], terminal_width=200)
    assert result.exit_code == 2 and "busy" in result.output, result.output
    assert fake_startup == []


def test_stop_requests_ask_tune_first_then_interrupt(monkeypatch):
    """nas/interrupts.py: outside a round a stop request is a KeyboardInterrupt; inside one the first goes to Tune's
    own stop request (SIGUSR1) while Tune listens, the second interrupts; installing takes SIGINT and SIGTERM and
    gives them back."""
    import os
    import signal

    from nas.interrupts import StopRequests

    with pytest.raises(KeyboardInterrupt):
        StopRequests()(signal.SIGTERM, None)
    stops, sent = StopRequests(), []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(sig))
    monkeypatch.setattr(signal, "getsignal", lambda sig: signal.SIG_DFL)
    with stops.round(), pytest.raises(KeyboardInterrupt):  # Tune not listening yet (SIGUSR1 at its default)
        stops(signal.SIGTERM, None)
    stops = StopRequests()
    monkeypatch.setattr(signal, "getsignal", lambda sig: (lambda *a: None))  # Tune's handler
    with stops.round():
        stops(signal.SIGINT, None)
        with pytest.raises(KeyboardInterrupt):
            stops(signal.SIGINT, None)
    assert sent == [signal.SIGUSR1] and stops.count == 2
    monkeypatch.undo()
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with stops.installed():
        assert stops.count == 0
        assert signal.getsignal(signal.SIGINT) is stops and signal.getsignal(signal.SIGTERM) is stops
    assert {s: signal.getsignal(s) for s in before} == before


HELD = """
import os, signal, threading, time
from nas.interrupts import StopRequests

stops, seen = StopRequests(), []
with stops.installed():
    try:
        with stops.held():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as ray.init does: ignored while held
            worker = threading.Thread(target=time.sleep, args=(0.5,))  # started inside: keeps the signals blocked
            worker.start()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.3)
            seen.append("inside, not interrupted")
        seen.append("after held: not interrupted")
    except KeyboardInterrupt:
        seen.append("interrupted on the way out")
    worker.join()
    seen.append("ours" if signal.getsignal(signal.SIGTERM) is stops else "lost")
print(seen)
"""


def test_held_signals_wait_for_the_way_out_and_stay_ours():
    """`StopRequests.held()` (around ray.init and the checks beside it): a SIGTERM that comes inside waits and becomes
    a KeyboardInterrupt on the way out; a handler someone else sets meanwhile is ignored. In a fresh interpreter: the
    test process's own threads could take the signal."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", HELD], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(["inside, not interrupted", "interrupted on the way out", "ours"]), out.stdout


CHILD = """
import signal, subprocess, sys
from nas.interrupts import STOPS, release_child

PROBE = ("import os, signal; print(sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])"
         " if s in (signal.SIGINT, signal.SIGTERM)), os.getpgrp() == os.getpid())")

def child(**kw):  # the signals a child starts with blocked, and whether it leads a process group of its own
    return subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, **kw).stdout.strip()

seen = {}
with STOPS.installed(), STOPS.held():
    seen["this process"] = sorted(s.name for s in signal.pthread_sigmask(signal.SIG_BLOCK, []) if s in (2, 15))
    seen["ours (preexec_fn)"] = child(preexec_fn=release_child)
    # Ray's way: its own preexec_fn blocks SIGINT; the fork hook has undone our block and moved the child before it
    seen["as Ray starts one"] = child(preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}))
seen["after, as Ray starts one"] = child(preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT}))
print(seen)
"""


def test_processes_started_while_held_keep_no_block_and_leave_the_group():
    """Ray's processes, the kernel warm-up and the MPS daemon start inside `held()`. A blocked SIGTERM passes to a
    child through fork and exec: before `release_child`, every Ray process and worker of a run ignored SIGTERM
    (`ray.shutdown` waited 1 s on each before SIGKILL, ~5 s a run). Each also gets a process group of its own, so a
    signal to the driver's group reaches the driver alone; a child started after the hold is left as it is."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str({"this process": ["SIGINT", "SIGTERM"], "ours (preexec_fn)": "[] True",
                                      "as Ray starts one": "['SIGINT'] True",
                                      "after, as Ray starts one": "['SIGINT'] False"}), out.stdout


def test_the_store_look_before_starting_anything(tmp_path):
    """`nas run` starts Ray beside the pre-flight only when its database will open and no other live driver owns the
    study: a new SQLite file in a folder that takes files yes (nothing is written by looking), a folder that cannot
    be made or a server that refuses the connection no."""
    from nas.cli import _store_would_open
    from nas.store import Store

    def study(url: str):
        sets = _sets(tmp_path) + [f"storage.url={url}"]
        return load_study(STUDY, sets=sets).study

    new = tmp_path / "sub" / "new.db"
    assert _store_would_open(study(f"sqlite:///{new}")) and not new.exists() and not new.parent.exists()
    assert not _store_would_open(study("sqlite:////proc/nope/x.db"))
    assert not _store_would_open(study("postgresql+psycopg://nobody@127.0.0.1:1/x"))
    existing = tmp_path / "old.db"
    Store(f"sqlite:///{existing}")  # tables, no running driver
    assert _store_would_open(study(f"sqlite:///{existing}"))


def test_a_trial_the_local_ray_cannot_hold_is_refused(monkeypatch):
    """A GPU study on a machine without a GPU (or a trial wanting more CPUs than Ray has) waited for ever, silently:
    Tune keeps such trials pending. The runner refuses it with the key to change."""
    import ray

    from nas.errors import StudyConfigError
    from nas.execute import check_fits

    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0})
    check_fits(2, 0)  # fits
    with pytest.raises(StudyConfigError, match=r"execution.gpus_per_trial.*0.25 GPU\(s\) but the local Ray has 0"):
        check_fits(2, 0.25, "s.yaml")
    with pytest.raises(StudyConfigError, match=r"execution.cpus_per_trial.*32 CPU\(s\) but the local Ray has 16"):
        check_fits(32, 0)
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 1.0})
    check_fits(2, 0.25)


DRY_RUN_THEN_RUN = """
import sys
from typer.testing import CliRunner
import nas.cli
import nas.plan
from nas.errors import StudyConfigError

sets = [a for s in sys.argv[1:] for a in ("--set", s)]
run = ["run", "studies/cls_token_position.yaml", *sets]
result = CliRunner().invoke(nas.cli.app, [*run, "--dry-run"], terminal_width=200)
print("dry run:", result.exit_code, "ray" in sys.modules)

seen = []

def checks(*args, **kwargs):  # records what was imported when the checks began, then stops the run
    seen.append("nas.execute" in sys.modules)
    raise StudyConfigError("stop here")

nas.plan._preflight_all = checks
nas.cli._store_would_open = lambda study: False  # start nothing beside the checks
result = CliRunner().invoke(nas.cli.app, run, terminal_width=200)
print("checks:", *seen)
print("run:", result.exit_code, "stop here" in result.output)
"""


def test_a_dry_run_never_imports_ray_and_a_run_imports_tune_before_the_checks(tmp_path):
    """`--dry-run` plans and stops: Ray is never imported. A run imports nas.execute (Ray Tune) before the checks'
    threads start: beside them it took 3 s instead of ~1 on the H200 (the GIL, turn by turn). Fresh interpreter."""
    import subprocess
    import sys

    sets = [*_sets(tmp_path), f"storage.url=sqlite:///{tmp_path / 'nas.db'}", "factors={readout: [head, tail]}",
            "data.n_train=64", "data.n_test=32"]
    out = subprocess.run([sys.executable, "-c", DRY_RUN_THEN_RUN, *sets], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.strip().splitlines()[-3:] == ["dry run: 0 False", "checks: True", "run: 2 True"], \
        out.stdout + out.stderr


def test_imports_beside_load_in_order_and_stop_quietly_at_a_missing_one(monkeypatch):
    """`import_beside` gives Optuna's alembic and the closing table's scipy.stats a head start on a daemon thread
    (while ray.init waits, while the trials run); a module it cannot load ends it without an error: the real import
    later says what is wrong."""
    import sys

    from nas.beside import import_beside

    for name in ("colorsys", "wave"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    import_beside("colorsys", "no_such_module_here", "wave").join(timeout=30)
    assert "colorsys" in sys.modules and "wave" not in sys.modules


def test_users_of_a_head_start_wait_for_it(tmp_path, monkeypatch):
    """Whoever imports what a side thread is importing waits for that thread first (nas/beside.py: two threads in
    one package's circular imports hand each other half-initialised modules). Here a module takes 0.5 s to import;
    `wait_for_imports` returns only once it is whole, and Optuna's two entry points call it."""
    import sys
    import time

    import nas.beside as beside
    import nas.database as database
    import nas.queue as queue

    (tmp_path / "slow_module_for_beside.py").write_text("import time\ntime.sleep(0.5)\nDONE = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    thread = beside.import_beside("slow_module_for_beside")
    t0 = time.perf_counter()
    beside.wait_for_imports()
    assert not thread.is_alive() and sys.modules["slow_module_for_beside"].DONE
    assert time.perf_counter() - t0 < 5 and thread not in beside._THREADS
    waits = []
    monkeypatch.setattr(beside, "wait_for_imports", lambda timeout=60.0: waits.append("wait"))
    with pytest.raises(Exception):  # noqa: B017 - only the wait before the import matters here
        queue.open_optuna(None, None)
    with pytest.raises(Exception):  # noqa: B017
        database.optuna_storage("not a url")
    assert waits == ["wait", "wait"]
    import nas.stats as stats  # scipy's users in the statistics (adaptive seeds call them while the trials run)

    monkeypatch.setattr(stats, "wait_for_imports", lambda timeout=60.0: waits.append("stats"))
    stats.t_pvalue(2.0, 3)
    stats.min_detectable_difference(1.0, 4, 0.05)
    assert waits == ["wait", "wait", "stats", "stats"]


def test_a_local_ray_prestarts_no_workers_and_a_cluster_is_left_as_it_is(tmp_path, monkeypatch):
    """Tune's trial actors never run in Ray's prestarted workers (their runtime environment differs), so a local Ray
    starts none (LOCAL_RAY_CONFIG); joining a cluster passes no system config (the cluster's own settings hold)."""
    import ray

    seen = []

    def fake_init(**kw):  # Ray writes its session's spilling folder into the dict it is given
        seen.append({k: dict(v) if isinstance(v, dict) else v for k, v in kw.items()})
        kw.get("_system_config", {})["object_spilling_config"] = "/tmp/ray/session_1"

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", fake_init)
    execute.init_ray(load_study(STUDY, sets=[f"storage.ray_results={tmp_path}"]).study)
    execute.init_ray(load_study(STUDY, sets=[f"storage.ray_results={tmp_path}",
                                             "execution.address=ray://10.0.0.1:10001"]).study)
    assert seen[0]["_system_config"] == {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
    assert "_system_config" not in seen[1] and seen[1]["address"] == "ray://10.0.0.1:10001"
    assert execute.LOCAL_RAY_CONFIG == {"enable_worker_prestart": False, "prestart_worker_first_driver": False}
