"""`nas run` end to end on the CPU, through the real CLI in a subprocess (local Ray, SQLite): the study finishes and
prints its table, everything lands in the database, Optuna opens that database unchanged, a second run repeats
nothing, a failing trial is recorded while the study completes, a SIGKILLed driver resumes with no trial lost or
repeated, and an exported model gives the same logits as the same trial trained again in this process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
NAS = [sys.executable, "-m", "nas.cli"]

STUDY = """
name: {name}
question: tiny end-to-end check
search_space: tiny_plain
fixed: {{route: bi, dims: [16], depths: [1]}}
factors:
  readout: {levels}
reference: {{readout: head}}
seeds: [0, 1]
data: {{name: digits, n_train: {n_train}, n_test: 64, img_size: 16}}
train: {{epochs: {epochs}, batch_size: 32, lr: 3.0e-3, warmup_epochs: 0.5}}
execution: {{cpus_per_trial: 1, retries: 0, num_cpus: 2}}
measure: {{repeats: 1}}
paper: {{source: Vim Table 5, values: {{head: 75.2, middle: 76.1}}}}
"""


def _write_study(tmp: Path, name: str, levels: str = "[head, middle]", epochs: int = 2, n_train: int = 128) -> Path:
    path = tmp / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUDY.format(name=name, levels=levels, epochs=epochs, n_train=n_train))
    return path


def _args(tmp: Path) -> list[str]:
    return ["--db", f"sqlite:///{tmp / 'nas.db'}", "--set", f"storage.artifacts={tmp / 'artifacts'}",
            "--set", f"storage.ray_results={tmp / 'ray'}"]


def _nas(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*NAS, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})})


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One small study run to the end: 2 placements × 2 seeds, 2 epochs."""
    tmp = tmp_path_factory.mktemp("e2e")
    study = _write_study(tmp, "e2e_study")
    t0 = time.perf_counter()
    proc = _nas("run", str(study), *_args(tmp))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return tmp, study, proc, time.perf_counter() - t0


def _store(tmp: Path):
    from nas.store import Store

    return Store(f"sqlite:///{tmp / 'nas.db'}", read_only=True)


def test_study_runs_to_its_table(finished):
    tmp, _, proc, seconds = finished
    assert seconds < 120, f"the tiny study took {seconds:.0f} s"
    out = proc.stdout
    assert "4 trial(s) finished, 0 failed" in out
    assert re.search(r"Ray started in \d+\.\d s", out) and re.search(r"first trial started \d+\.\d s after", out)
    for word in ("readout", "head", "middle", "(reference)", "95% CI", "Δ vs head", "paper"):
        assert word in out, word
    store = _store(tmp)
    trials = store.trials("e2e_study")
    assert len(trials) == 4 and {t.state for t in trials} == {"complete"}
    assert sorted((t.levels["readout"], t.seed) for t in trials) == [("head", 0), ("head", 1), ("middle", 0),
                                                                     ("middle", 1)]
    for t in trials:
        assert 0.0 <= t.val_acc <= 1.0 and t.num_params > 0
        assert t.cost["throughput"] > 0 and t.cost["flops"] > 0
        assert t.kernel_paths and t.node_id
        assert [e["epoch"] for e in store.epochs(t.id)] == [1, 2]
        (art,) = store.artifacts(t.id)
        assert Path(art.path).is_file()
    info = store.study("e2e_study")
    assert "readout" in info.study_yaml and info.runs[0].status == "finished"
    assert info.runs[0].hardware["cpus"] and info.runs[0].code_version


def test_optuna_opens_our_database_unchanged(finished):
    import optuna

    tmp = finished[0]
    study = optuna.load_study(study_name="e2e_study", storage=f"sqlite:///{tmp / 'nas.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 4
    assert {(t.params["readout"], t.params["seed"]) for t in done} == {("head", 0), ("head", 1), ("middle", 0),
                                                                       ("middle", 1)}
    assert all(0.0 <= t.value <= 1.0 for t in done)


def test_second_run_repeats_nothing(finished):
    tmp, study, _, _ = finished
    proc = _nas("run", str(study), *_args(tmp))
    assert proc.returncode == 0, proc.stderr
    assert "4 trial(s) already done, 0 to run" in proc.stdout
    assert len(_store(tmp).trials("e2e_study")) == 4


def test_show_list_and_export_then_load_gives_the_trained_model(finished, tmp_path):
    from blocks import load_backbone
    from nas.data import make_dataset
    from nas.trial import run_trial

    tmp = finished[0]
    db = ["--db", f"sqlite:///{tmp / 'nas.db'}"]
    show = _nas("show", "e2e_study", *db)
    assert show.returncode == 0 and "middle" in show.stdout and "paper" in show.stdout
    listing = _nas("list", *db)
    assert listing.returncode == 0 and "e2e_study" in listing.stdout
    out = tmp_path / "best.safetensors"
    exp = _nas("export", "e2e_study", "-o", str(out), *db)
    assert exp.returncode == 0, exp.stderr
    model = load_backbone(out)
    best = max(_store(tmp).trials("e2e_study"), key=lambda t: t.val_acc)
    assert model.spec.id == best.spec_id
    # the same trial trained again here (same seed, one thread, as in the worker) gives the same weights
    torch.set_num_threads(1)
    data = make_dataset("digits", seed=best.seed, n_train=128, n_test=64, img_size=16)
    again = run_trial(model.spec, data, epochs=2, batch_size=32, lr=3e-3, weight_decay=0.05, warmup_epochs=0.5,
                      seed=best.seed, measure={"skip": True}, keep_model=True)
    assert again.val_acc == best.val_acc
    x = data.x_test[:8]
    with torch.no_grad():
        assert torch.equal(model(x), again.model.eval()(x))


def test_failing_trial_is_recorded_and_the_study_completes(tmp_path):
    study = _write_study(tmp_path, "fails", levels="[head, tail]", epochs=2)
    proc = _nas("run", str(study), *_args(tmp_path), env={"NAS_INJECT_FAULT": "readout=tail"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "2 trial(s) finished, 2 failed" in proc.stdout
    trials = _store(tmp_path).trials("fails")
    failed = [t for t in trials if t.state == "failed"]
    assert len(failed) == 2 and all(t.levels["readout"] == "tail" for t in failed)
    assert all("injected failure" in t.error for t in failed)
    import optuna

    ot = optuna.load_study(study_name="fails", storage=f"sqlite:///{tmp_path / 'nas.db'}")
    states = sorted(t.state.name for t in ot.trials)
    assert states == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]  # not COMPLETE with the partial epoch-1 value
    # a later run does not repeat failed trials unless asked to
    again = _nas("run", str(study), *_args(tmp_path))
    assert "2 trial(s) already done, 0 to run" in again.stdout
    retry = _nas("run", str(study), *_args(tmp_path), "--retry-failed")
    assert retry.returncode == 0 and "2 trial(s) finished, 0 failed" in retry.stdout


def test_sigkill_of_the_driver_then_resume_loses_and_repeats_nothing(tmp_path):
    from nas.store import Store

    # 6 epochs of 1,536 images (about a second each on a CI core): a window to see one trial early in its run
    study = _write_study(tmp_path, "killed", levels="[head, middle, tail]", epochs=6, n_train=1536)
    cmd = [*NAS, "run", str(study), *_args(tmp_path), "--max-concurrent", "1"]
    # every epoch is stored as it is reported, so the kill can wait for a trial early in its 6 epochs: killed at the
    # moment the third trial finished, the driver would leave nothing stale to re-queue (a loaded run saw that)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "NAS_EPOCH_FLUSH_S": "0"})
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if not (tmp_path / "nas.db").exists():
                continue
            try:
                store = Store(url, read_only=True)
                trials = store.trials("killed")
                early = [t for t in trials if t.state == "running" and 1 <= len(store.epochs(t.id)) <= 3]
            except Exception:  # noqa: BLE001 - tables not created yet
                continue
            if sum(t.state == "complete" for t in trials) >= 2 and early:
                break
        else:
            pytest.fail("the study never reached two finished trials and one running")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = Store(url, read_only=True).trials("killed")
    done_before = {t.key: t.val_acc for t in before if t.state == "complete"}
    assert len(done_before) >= 2
    resumed = _nas("run", str(study), *_args(tmp_path))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "stale trial(s) from an interrupted run re-queued" in resumed.stdout
    after = Store(url, read_only=True).trials("killed")
    complete = [t for t in after if t.state == "complete"]
    assert len(complete) == 6 and len({t.key for t in complete}) == 6  # none lost, none repeated
    assert {t.key: t.val_acc for t in complete if t.key in done_before} == done_before  # kept as they were
    assert any(t.state == "stale" for t in after)
    import optuna

    ot = optuna.load_study(study_name="killed", storage=url)
    assert not [t for t in ot.trials if t.state == optuna.trial.TrialState.RUNNING]


def test_a_second_driver_on_a_running_study_is_refused(tmp_path, monkeypatch):
    """A live driver (here: a sleeping process standing in for it) owns the study; `nas run` exits 2, starts no Ray
    and fails none of its trials."""
    from typer.testing import CliRunner

    from nas.cli import app
    from nas.store import Store

    monkeypatch.chdir(ROOT)
    study = _write_study(tmp_path, "busy")
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    store.upsert_study(name="busy", question="", kind="grid", study_yaml="", config={}, search_space_yaml="",
                       n_cells=4)
    run_id = store.start_run("busy", "nas run busy")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        import socket

        with store.session() as s:
            from nas.store import RunRow

            s.get(RunRow, run_id).driver = f"{socket.gethostname()}:{sleeper.pid}"
        import nas.execute as execute

        ray_starts = []
        monkeypatch.setattr(execute, "init_ray", ray_starts.append)  # nas run starts Ray beside its pre-flight
        result = CliRunner().invoke(app, ["run", str(study), *_args(tmp_path)], terminal_width=200)
        assert result.exit_code == 2 and "is being run right now" in result.output, result.output
        assert store.study("busy").runs[0].status == "running"
        assert ray_starts == []
    finally:
        sleeper.kill()
        sleeper.wait()
    # once that driver is gone, its run is marked interrupted and the study runs (checked up to Ray start-up)
    assert store.active_driver("busy") is None


def _ray_heads() -> set[int]:
    """PIDs of the GCS servers running on this machine (one per local Ray)."""
    heads = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"gcs_server" in (entry / "cmdline").read_bytes():
                    heads.add(int(entry.name))
            except OSError:
                continue
    return heads


@pytest.mark.parametrize("sig, to", [(signal.SIGTERM, "driver"), (signal.SIGINT, "group"), (signal.SIGTERM, "group")],
                         ids=["kill", "ctrl-c in a terminal", "timeout"])
def test_sigterm_or_ctrl_c_stops_the_run_as_interrupted_and_leaves_no_ray(tmp_path, sig, to):
    """`kill` (SIGTERM to the driver), Ctrl-C in a terminal (SIGINT to its process group) and `timeout` (SIGTERM to
    the group) all end the run as interrupted, with the summary and the resume hint printed, and shut the run's Ray
    down (before nas/interrupts.py, SIGTERM killed the driver at once and left Ray running, and Ctrl-C stored the run
    as finished; Ray's processes have groups of their own, or `timeout` would kill the GCS under the driver)."""
    from nas.store import Store

    study = _write_study(tmp_path, "stopped", levels="[head, middle, tail]", epochs=6, n_train=1536)
    before = _ray_heads()
    proc = subprocess.Popen([*NAS, "run", str(study), *_args(tmp_path), "--max-concurrent", "1"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env={**os.environ, "COLUMNS": "200", "NAS_EPOCH_FLUSH_S": "0"})
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                store = Store(url, read_only=True)
                trials = store.trials("stopped")
                if any(t.state == "complete" for t in trials) and any(
                        t.state == "running" and store.epochs(t.id) for t in trials):
                    break
            except Exception:  # noqa: BLE001 - not created yet
                continue
        else:
            pytest.fail("the study never reached a finished trial and a running one")
        os.kill(proc.pid, sig) if to == "driver" else os.killpg(proc.pid, sig)  # a new session: its group's id
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "interrupted; run the same command to resume" in " ".join(out.split()), out  # rich wraps lines
    assert Store(url, read_only=True).study("stopped").runs[-1].status == "interrupted"
    assert _ray_heads() <= before, "the run's Ray outlived its driver"
