"""CUDA MPS for packed local GPU studies (nas/mps.py): when a study gets a daemon, that the daemon is started with
its private folders and stopped with the environment restored, the errors when it cannot start, and that the runner
starts it before the warm-up and Ray and stops it after Ray. A stand-in `nvidia-cuda-mps-control` on PATH records
how it was called (no GPU here)."""

from __future__ import annotations

import json
import os
import stat

import pytest

from nas.config import load_study
from nas.errors import StudyConfigError
from nas.mps import CONTROL, ENV, start_mps, stop_mps, wants_mps
from nas.plan import plan_study

STUDY = "studies/cls_token_position.yaml"
PACKED = ("train.device=cuda", "execution.gpus_per_trial=0.25", "execution.cuda_mps=true")


def _study(tmp_path, *sets: str):
    return load_study(STUDY, sets=[f"storage.ray_results={tmp_path / 'ray'}", *sets]).study


def _fake_control(tmp_path, monkeypatch, exit_code: int = 0, say: str = ""):
    """A stand-in daemon control on PATH; each call appends {args, stdin, pipe, log} to calls.jsonl."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.jsonl"
    script = bin_dir / CONTROL
    script.write_text(f"""#!/usr/bin/env python3
import json, os, sys
stdin = "" if sys.stdin.isatty() else sys.stdin.read()
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"args": sys.argv[1:], "stdin": stdin, "pipe": os.environ.get("{ENV[0]}"),
                        "log": os.environ.get("{ENV[1]}")}}) + "\\n")
print({say!r}, file=sys.stderr)
sys.exit({exit_code})
""")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return log


def _calls(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_only_packed_local_gpu_studies_asking_for_it_get_mps(tmp_path):
    assert wants_mps(_study(tmp_path, *PACKED), cuda_available=True) is None
    assert "false" in wants_mps(_study(tmp_path, *PACKED[:2]), True)  # off by default
    assert "cluster" in wants_mps(_study(tmp_path, *PACKED, "execution.address=ray://10.0.0.1:10001"), True)
    assert "whole GPU" in wants_mps(_study(tmp_path, *PACKED, "execution.gpus_per_trial=1"), True)
    assert "not run on a GPU" in wants_mps(_study(tmp_path, *PACKED, "execution.gpus_per_trial=0"), True)
    assert "no CUDA" in wants_mps(_study(tmp_path, *PACKED), cuda_available=False)
    assert start_mps(_study(tmp_path, *PACKED), cuda_available=False) is None


def test_daemon_starts_in_private_folders_and_stop_restores_the_environment(tmp_path, monkeypatch):
    log = _fake_control(tmp_path, monkeypatch)
    study = _study(tmp_path, *PACKED)
    daemon = start_mps(study, cuda_available=True)
    folder = tmp_path / "ray" / f"mps-{study.name}"
    assert daemon is not None and daemon.folder == folder.resolve()
    assert os.environ[ENV[0]] == str(folder.resolve() / "pipe") and (folder / "pipe").is_dir()
    assert os.environ[ENV[1]] == str(folder.resolve() / "log") and (folder / "log").is_dir()
    stop_mps(daemon)
    assert all(name not in os.environ for name in ENV)  # as before the study
    start, stop = _calls(log)
    assert start["args"] == ["-d"] and start["pipe"] == str(folder.resolve() / "pipe")
    assert stop["args"] == [] and stop["stdin"] == "quit\n" and stop["pipe"] == start["pipe"]


def test_missing_control_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing there
    with pytest.raises(StudyConfigError, match="nvidia-cuda-mps-control.*cuda_mps: false"):
        start_mps(_study(tmp_path, *PACKED), cuda_available=True)


def test_failing_daemon_says_why_and_leaves_the_environment_alone(tmp_path, monkeypatch):
    _fake_control(tmp_path, monkeypatch, exit_code=1, say="An instance of this daemon is already running")
    with pytest.raises(StudyConfigError, match="exit 1: An instance of this daemon is already running"):
        start_mps(_study(tmp_path, *PACKED), cuda_available=True)
    assert all(name not in os.environ for name in ENV)


def test_tune_runner_starts_mps_first_and_stops_it_after_ray(tmp_path, monkeypatch, run_events):
    """MPS before the warm-up and Ray (they inherit its environment), each said on the console; `close` stops it after
    Ray's shutdown, also when the round ended early."""
    from types import SimpleNamespace

    import nas.execute as execute
    from nas.driver import Round

    calls = []
    daemon = SimpleNamespace(folder="runs/ray/mps-x")
    monkeypatch.setattr(execute, "start_mps", lambda study: calls.append(("mps", study.execution.cuda_mps)) or daemon)
    monkeypatch.setattr(execute, "stop_mps", lambda d: calls.append(("stop mps", d)))
    monkeypatch.setattr(execute, "start_warmup", lambda study, specs: calls.append(("warmup", None)))
    monkeypatch.setattr(execute, "stop_warmup", lambda proc: calls.append(("stop warmup", proc)))
    monkeypatch.setattr(execute, "init_ray", lambda study: calls.append(("ray", None)))
    monkeypatch.setattr(execute, "bytecode_hint", lambda: None)  # tests/test_bytecode.py checks that line
    monkeypatch.setattr(execute, "check_fits", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt))  # end here
    runner = execute.TuneRunner(plan_study(load_study(STUDY, sets=[f"storage.ray_results={tmp_path}",
                                                                   "execution.cuda_mps=true"]), timed=False))
    with pytest.raises(KeyboardInterrupt):
        runner.run_round(run_events, Round(1, 1))
    runner.started = False  # Ray is mocked: close must not shut it down
    runner.close()
    assert calls == [("mps", True), ("warmup", None), ("ray", None), ("stop warmup", None), ("stop mps", daemon)]
    texts = [info["text"] for kind, info in run_events.events if kind == "setup"]
    assert texts[0] == "CUDA MPS daemon started (folders: runs/ray/mps-x)" and texts[1].startswith("Ray started in ")
