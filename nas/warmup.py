"""Compile a GPU study's kernels once, in the background, while Ray starts.

Triton compiles a kernel the first time a process launches it (per set of compile-time constants, which include the
divisibility of integer arguments by 16) and keeps the binary in its on-disk cache. On a machine with a cold cache every
worker of a study's first wave compiled the same kernels at once: session 10's GPU study (benchmarks/RESULTS.md) spent
10.5-15 s on its first epochs against 4.9 s later, and the same study with the kernels cached took 61 s instead of
71 s. Ray and Tune take 13-21 s to start the first trial, so `nas run` spends that time running a one-epoch mini trial
of each arm's spec at the study's batch size, data shapes and settings in background processes (the same code path
as a trial: `nas.worker.run_task`), and the workers then load the kernels from the cache.

Two processes share the specs, one from each end of the list, each claiming a spec before it runs it: a cold cache
made one process spend most of the start-up on the first spec's kernels while the last arm, whose kernels differ
(a grid's arms often differ in token count, and Triton compiles a kernel again when a length's divisibility by 16
changes), was still waiting when its trials started: session 18's H200 study compiled the `mean` readout's kernels in
a trial of the second wave, whose first epoch took 8.1 s instead of ~3 s. A grid's first and last arms differ the
most, so walking from both ends reaches both kinds first. Each process holds one CUDA context and one mini trial's
memory (at the study's batch size and `gpu_memory_gb` cap) while it runs.

Local GPU studies only (a cluster's workers have their own caches); `execution.warm_kernels: false` turns it off. The
processes never touch the study's database, and their failure changes nothing but the time the first wave takes
(their log: `<storage.ray_results>/kernel_warmup-<study>.log`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .interrupts import release_child
from .schema import Study

WARMUP_SECONDS = 120.0  # the warm-up stops starting new specs after this (the trials are running by then)
LOG_NAME = "kernel_warmup-{study}.log"  # one per study: several local drivers may share a folder
WARMUP_PROCESSES = 2  # one walks the specs from the first, the other from the last (the docstring says why)


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


def claim(folder: Path | None, index: int) -> bool:
    """True when this process is the first to take spec `index` (a file created exclusively in `folder`); always
    True without a folder (one process)."""
    if folder is None:
        return True
    try:
        os.close(os.open(folder / f"spec-{index}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def main(argv: list[str] | None = None) -> int:
    """`python -m nas.warmup JOB.json`: JOB = {"study": the study's JSON, "specs": [spec JSON, ...], "device": None
    or a device string, "from_end": walk the specs from the last, "claims": a folder shared with the other process
    or None}. Prints one line per spec it runs; a spec that fails is reported and skipped."""
    job = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    study = mini_study(Study.model_validate(job["study"]), job.get("device"))
    specs = job["specs"]
    order = list(range(len(specs)))[::-1] if job.get("from_end") else list(range(len(specs)))
    claims = Path(job["claims"]) if job.get("claims") else None
    start = time.perf_counter()
    for pos, i in enumerate(order):
        if time.perf_counter() - start > WARMUP_SECONDS:
            left = sum(1 for j in order[pos:] if claims is None or not (claims / f"spec-{j}").exists())
            print(f"stopped after {WARMUP_SECONDS:.0f} s: {left} spec(s) not warmed", flush=True)
            break
        if not claim(claims, i):
            continue
        try:
            print(f"spec {i + 1}/{len(specs)}: {warm_spec(study, specs[i]):.1f} s", flush=True)
        except Exception as exc:  # the trials will meet the same error and report it properly
            print(f"spec {i + 1}/{len(specs)} failed: {type(exc).__name__}: {exc}", flush=True)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


@dataclass
class Warmup:
    """The warm-up's processes (one or two), their shared log and the files to remove when they end."""
    procs: list[subprocess.Popen]
    log_file: Any  # the open log (its `.name` is shown to the user)
    job_files: list[Path] = field(default_factory=list)
    claims: Path | None = None

    def poll(self) -> int | None:
        """None while any process runs, else the first non-zero exit status (0 when all succeeded)."""
        codes = [p.poll() for p in self.procs]
        if any(c is None for c in codes):
            return None
        return next((c for c in codes if c), 0)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        for p in self.procs:
            p.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.poll() or 0


def start_warmup(study: Study, spec_jsons: list[str], device: str | None = None,
                 cuda_available: bool | None = None, processes: int = WARMUP_PROCESSES) -> Warmup | None:
    """Start the warm-up processes for the distinct specs of `spec_jsons` (in order; at most `processes`, one per
    end of the list), or return None when the study gets none (`wants_warmup`). The caller stops them with
    `stop_warmup` when the study ends."""
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if wants_warmup(study, cuda_available) is not None:
        return None
    specs = list(dict.fromkeys(spec_jsons))
    folder = Path(study.storage.ray_results)
    folder.mkdir(parents=True, exist_ok=True)
    count = max(1, min(processes, len(specs)))
    claims = Path(tempfile.mkdtemp(prefix="warmup-claims-", dir=folder)) if count > 1 else None
    log_path = folder / LOG_NAME.format(study=study.name)
    log_path.write_text("")
    log = open(log_path, "a")  # noqa: SIM115 (appended to by every process: whole lines, never overwritten)
    warm = Warmup([], log, [], claims)
    for k in range(count):
        job: dict[str, Any] = {"study": study.model_dump(mode="json"), "specs": specs, "device": device,
                               "from_end": k == 1, "claims": str(claims) if claims else None}
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="warmup-", dir=folder, delete=False) as f:
            json.dump(job, f)
        warm.job_files.append(Path(f.name))
        warm.procs.append(subprocess.Popen([sys.executable, "-m", "nas.warmup", f.name], stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           preexec_fn=release_child))  # SIGTERM ends it (stop_warmup)
    return warm


def stop_warmup(warm: Warmup | None, timeout: float = 10.0) -> None:
    """End the warm-up processes still running, and remove their job files and claims."""
    if warm is None:
        return
    for p in warm.procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in warm.procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    warm.log_file.close()
    for job in warm.job_files:
        job.unlink(missing_ok=True)
    if warm.claims is not None:
        shutil.rmtree(warm.claims, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
