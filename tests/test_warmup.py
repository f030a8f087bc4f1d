"""The background kernel warm-up of a local GPU study (nas/warmup.py): when it runs, what it trains, and that the
process it starts ends and cleans up. On the CPU (no CUDA here), forced to a CPU device."""

from __future__ import annotations

import json

import pytest

from nas.config import load_study
from nas.plan import plan_study
from nas.warmup import LOG_NAME, main, mini_sizes, mini_study, start_warmup, stop_warmup, wants_warmup

STUDY = "studies/cls_token_position.yaml"


def _study(tmp_path, *sets: str):
    return load_study(STUDY, sets=[f"storage.ray_results={tmp_path}", *sets])


def test_only_local_gpu_studies_are_warmed(tmp_path):
    gpu = ("train.device=cuda", "execution.gpus_per_trial=0.25")
    assert wants_warmup(_study(tmp_path, *gpu).study, cuda_available=True) is None
    assert "no CUDA" in wants_warmup(_study(tmp_path, *gpu).study, cuda_available=False)
    assert "cluster" in wants_warmup(_study(tmp_path, *gpu, "execution.address=ray://10.0.0.1:10001").study, True)
    assert "false" in wants_warmup(_study(tmp_path, *gpu, "execution.warm_kernels=false").study, True)
    assert "not run on a GPU" in wants_warmup(_study(tmp_path, "execution.gpus_per_trial=0").study, True)
    assert "not run on a GPU" in wants_warmup(_study(tmp_path, "train.device=cpu",
                                                     "execution.gpus_per_trial=1").study, True)
    assert start_warmup(_study(tmp_path).study, ["{}"], cuda_available=False) is None


@pytest.mark.parametrize("n,batch,full,want", [(8192, 256, 2, 512), (1000, 64, 2, 168), (100, 64, 2, 100),
                                               (773, 32, 1, 37)])
def test_mini_sizes_keep_the_last_partial_batch(n, batch, full, want):
    assert mini_sizes(n, batch, full) == want


def test_mini_study_is_one_short_epoch_of_the_same_trials(tmp_path):
    st = _study(tmp_path, "train.device=cuda", "train.batch_size=64").study
    mini = mini_study(st, device="cpu")
    assert (mini.train.epochs, mini.train.device, mini.train.batch_size, mini.train.lr) == (1, "cpu", 64, st.train.lr)
    assert (mini.data.n_train, mini.data.n_test) == (mini_sizes(st.data.n_train, 64, 2), mini_sizes(st.data.n_test, 64, 1))
    assert (mini.data.name, mini.data.img_size, mini.measure) == (st.data.name, st.data.img_size, st.measure)
    assert mini_study(st).train.device == "cuda" and st.train.epochs > 1  # the original is left as it was


def test_warmup_processes_share_the_distinct_specs_from_both_ends_and_clean_up(tmp_path):
    """The real subprocesses, on the CPU: each distinct spec gets one one-epoch mini trial, from one of the two
    processes (one walks from the first spec, the other from the last); a broken one is reported and skipped, the
    shared log says so, and stopping them removes the job files and the claims."""
    sf = _study(tmp_path, "execution.gpus_per_trial=0.5")
    specs = [a.spec.to_json() for a in plan_study(sf, timed=False).arms][:2]
    broken = json.dumps({**json.loads(specs[0]), "dims": [-3]})
    warm = start_warmup(sf.study, [specs[0], specs[0], broken, specs[1]], device="cpu", cuda_available=True)
    assert warm is not None and len(warm.procs) == 2 and warm.claims.is_dir()
    warm.wait(timeout=300)
    jobs = list(warm.job_files)
    stop_warmup(warm)
    log = (tmp_path / LOG_NAME.format(study=sf.study.name)).read_text()
    assert warm.poll() == 0 and not any(j.exists() for j in jobs) and not warm.claims.exists()
    lines = log.splitlines()
    ran = sorted(line.split(":")[0].removesuffix(" failed") for line in lines if line.startswith("spec "))
    assert ran == ["spec 1/3", "spec 2/3", "spec 3/3"]  # each exactly once, between the two processes
    assert any(line.startswith("spec 2/3 failed: ") for line in lines)
    assert sum(line.startswith("done in ") for line in lines) == 2


def test_the_second_process_starts_from_the_last_spec(tmp_path, monkeypatch, capsys):
    """`from_end` walks the list backwards and skips what the other process has claimed."""
    import nas.warmup as warmup

    sf = _study(tmp_path)
    seen = []
    monkeypatch.setattr(warmup, "warm_spec", lambda study, spec: seen.append(spec) or 0.0)
    claims = tmp_path / "claims"
    claims.mkdir()
    assert warmup.claim(claims, 0)  # the other process has spec 1
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"study": sf.study.model_dump(mode="json"), "specs": ["a", "b", "c"], "device": "cpu",
                               "from_end": True, "claims": str(claims)}))
    assert main([str(job)]) == 0
    assert seen == ["c", "b"]
    assert capsys.readouterr().out.splitlines()[:2] == ["spec 3/3: 0.0 s", "spec 2/3: 0.0 s"]
    assert not warmup.claim(claims, 2) and warmup.claim(None, 2)


def test_stop_ends_a_running_warmup(tmp_path, monkeypatch):
    """Warm-up processes still running when the study ends are terminated (here: jobs that sleep in place of
    training)."""
    import nas.warmup as warmup

    sf = _study(tmp_path, "execution.gpus_per_trial=0.5")
    shim = tmp_path / "python"
    shim.write_text("#!/bin/sh\nexec sleep 60\n")
    shim.chmod(0o755)
    monkeypatch.setattr(warmup.sys, "executable", str(shim))
    warm = start_warmup(sf.study, ["{}", "[]"], cuda_available=True)
    assert warm.poll() is None and len(warm.procs) == 2
    stop_warmup(warm, timeout=5)
    assert all(p.returncode is not None for p in warm.procs) and not any(j.exists() for j in warm.job_files)
    one = start_warmup(sf.study, ["{}", "{}"], cuda_available=True)  # one distinct spec: one process, no claims
    assert len(one.procs) == 1 and one.claims is None
    stop_warmup(one, timeout=5)


def test_main_reports_the_time_budget(tmp_path, monkeypatch, capsys):
    """Past WARMUP_SECONDS no further spec starts (the trials are running by then)."""
    import nas.warmup as warmup

    sf = _study(tmp_path)
    monkeypatch.setattr(warmup, "WARMUP_SECONDS", -1.0)
    job = tmp_path / "job.json"
    job.write_text(json.dumps({"study": sf.study.model_dump(mode="json"), "specs": ["{}", "{}"], "device": "cpu"}))
    assert main([str(job)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "stopped after -1 s: 2 spec(s) not warmed" and out[-1].startswith("done in ")


def test_tune_runner_starts_the_warmup_before_ray_and_stops_it_on_close(tmp_path, monkeypatch, run_events):
    """The runner starts the warm-up with the arms' specs before Ray starts, says so with its log, and `close` (which
    the driver calls however the study ends) stops it."""
    from types import SimpleNamespace

    import nas.execute as execute
    from nas.driver import Round

    calls = []
    proc = SimpleNamespace(log_file=SimpleNamespace(name="warm.log"))
    monkeypatch.setattr(execute, "start_warmup", lambda study, specs: calls.append(("start", specs)) or proc)
    monkeypatch.setattr(execute, "stop_warmup", lambda p: calls.append(("stop", p)))

    def no_ray(study):
        calls.append(("ray", None))
        raise KeyboardInterrupt  # stop the round here: nothing below needs to run

    monkeypatch.setattr(execute, "init_ray", no_ray)
    monkeypatch.setattr(execute, "bytecode_hint", lambda: None)  # tests/test_bytecode.py checks that line
    plan = plan_study(_study(tmp_path), timed=False)
    runner = execute.TuneRunner(plan)
    with pytest.raises(KeyboardInterrupt):
        runner.run_round(run_events, Round(1, 1))
    runner.started = False  # Ray never started: close must not shut it down
    runner.close()
    assert calls == [("start", [a.spec.to_json() for a in plan.arms]), ("ray", None), ("stop", proc)]
    assert run_events.events == [("setup", {"text": "kernel warm-up running in the background (log: warm.log)"})]
