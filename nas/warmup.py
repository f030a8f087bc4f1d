"""Compile a GPU study's kernels once, in the background, while Ray starts.

Triton compiles a kernel the first time a process launches it (per set of compile-time constants, which include the
divisibility of integer arguments by 16) and keeps the binary in its on-disk cache. On a machine with a cold cache every
worker of a study's first wave compiled the same kernels at once: session 10's GPU study (benchmarks/RESULTS.md) spent
10.5-15 s on its first epochs against 4.9 s later, and the same study with the kernels cached took 61 s instead of
71 s. Ray and Tune take 13-21 s to start the first trial, so `nas run` spends that time running a one-epoch mini trial
of each arm's spec at the study's batch size, data shapes and settings in one background process (the same code path
as a trial: `nas.worker.run_task`), and the workers then load the kernels from the cache.

Local GPU studies only (a cluster's workers have their own caches); `execution.warm_kernels: false` turns it off. The
process never touches the study's database, and its failure changes nothing but the time the first wave takes (its
log: `<storage.ray_results>/kernel_warmup-<study>.log`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .interrupts import release_child
from .schema import Study

WARMUP_SECONDS = 120.0  # the warm-up stops starting new specs after this (the trials are running by then)
LOG_NAME = "kernel_warmup-{study}.log"  # one per study: several local drivers may share a folder


def wants_warmup(study: Study, cuda_available: bool) -> str | None:
    """Why the study gets no kernel warm-up, or None when it does."""
    ex, tr = study.execution, study.train
    if not ex.warm_kernels:
        return "execution.warm_kernels is false"
    if ex.address:
        return "the trials run on a Ray cluster (each node has its own kernel cache)"
    if tr.device == "cpu" or ex.gpus_per_trial <= 0:
        return "the trials do not run on a GPU"
    if not cuda_available:
        return "this machine has no CUDA device"
    return None


def mini_sizes(n: int, batch_size: int, full_batches: int) -> int:
    """A data set size with `full_batches` full batches and the real run's last partial batch (its own shapes)."""
    return min(n, full_batches * batch_size + n % batch_size)


def mini_study(study: Study, device: str | None = None) -> Study:
    """The study cut to a warm-up: one epoch on two full training batches and one full test batch, each with the real
    run's last partial batch (its own shapes); `device` overrides the trials' device (the tests run it on the CPU)."""
    d, tr = study.data, study.train
    data = d.model_copy(update={"n_train": mini_sizes(d.n_train, tr.batch_size, 2),
                                "n_test": mini_sizes(d.n_test, tr.batch_size, 1)})
    train = tr.model_copy(update={"epochs": 1, **({"device": device} if device else {})})
    return study.model_copy(update={"data": data, "train": train})


def warm_spec(study: Study, spec_json: str) -> float:
    """Run `spec_json` as a worker runs a trial of `study` (`nas.worker.run_task`, reports dropped); its seconds."""
    from .records import TrialStart
    from .worker import run_task

    t0 = time.perf_counter()
    run_task(study, TrialStart(number=0, optuna_trial_id=0, key="kernel warm-up", levels={}, params={}, spec_id="",
                               spec_json=spec_json, seed=0), lambda metrics, folder: None)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    """`python -m nas.warmup JOB.json`: JOB = {"study": the study's JSON, "specs": [spec JSON, ...], "device": None
    or a device string}. Prints one line per spec; a spec that fails is reported and skipped."""
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    study = mini_study(Study.model_validate(job["study"]), job.get("device"))
    start = time.perf_counter()
    for i, spec_json in enumerate(job["specs"]):
        if time.perf_counter() - start > WARMUP_SECONDS:
            print(f"stopped after {WARMUP_SECONDS:.0f} s: {len(job['specs']) - i} spec(s) not warmed", flush=True)
            break
        try:
            print(f"spec {i + 1}/{len(job['specs'])}: {warm_spec(study, spec_json):.1f} s",
                  flush=True)
        except Exception as exc:  # the trials will meet the same error and report it properly
            print(f"spec {i + 1}/{len(job['specs'])} failed: {type(exc).__name__}: {exc}", flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def start_warmup(study: Study, spec_jsons: list[str], device: str | None = None,
                 cuda_available: bool | None = None) -> subprocess.Popen | None:
    """Start the warm-up process for the distinct specs of `spec_jsons` (in order), or return None when the study
    gets none (`wants_warmup`). The caller stops it with `stop_warmup` when the study ends."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if wants_warmup(study, cuda_available) is not None:
        return None
    specs = list(dict.fromkeys(spec_jsons))
    folder = Path(study.storage.ray_results)
    folder.mkdir(parents=True, exist_ok=True)
    job: dict[str, Any] = {"study": study.model_dump(mode="json"), "specs": specs, "device": device}
    with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="warmup-", dir=folder, delete=False) as f:
        json.dump(job, f)
    log = open(folder / LOG_NAME.format(study=study.name), "w")  # noqa: SIM115 (the child writes it; closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "nas.warmup", f.name], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, preexec_fn=release_child)  # SIGTERM ends it (stop_warmup)
    proc.job_file, proc.log_file = Path(f.name), log  # type: ignore[attr-defined]
    return proc


def stop_warmup(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """End the warm-up process if it still runs, and remove its job file."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    proc.log_file.close()  # type: ignore[attr-defined]
    proc.job_file.unlink(missing_ok=True)  # type: ignore[attr-defined]


if __name__ == "__main__":
    raise SystemExit(main())
