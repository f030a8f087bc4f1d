"""CUDA MPS for a local GPU study that packs several trials on one GPU (`execution.cuda_mps: true`).

Without MPS the GPU time-slices between processes: kernels of packed trials never run at the same time, so a trial
whose kernels leave most of the GPU idle (small batches, short sequences) keeps it idle for the others too (issue 14:
4 packed trials of the cls_token GPU profile ran 1.03x faster than one at a time, 1.2x with MPS started by hand). The
Multi-Process Service runs the kernels of every client process on one GPU context, side by side.

`nas run` starts a private MPS control daemon (its pipe and log folders under `<storage.ray_results>/mps-<study>/`,
so it touches no system-wide daemon) before the kernel warm-up and Ray, points every process it starts at it through
`CUDA_MPS_PIPE_DIRECTORY` / `CUDA_MPS_LOG_DIRECTORY`, and stops it after Ray has shut down. Local Ray only: on a
cluster (`--address`) start MPS on the nodes yourself. The daemon is NVIDIA's `nvidia-cuda-mps-control` (part of the
driver utilities); a study that asks for MPS on a machine without it stops before training, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StudyConfigError
from .interrupts import release_child
from .schema import Study

CONTROL = "nvidia-cuda-mps-control"
ENV = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
KEY = "execution.cuda_mps"


def wants_mps(study: Study, cuda_available: bool | None = None) -> str | None:
    """Why the study gets no MPS daemon, or None when it does (`cuda_available` None: asks torch, only when the study's
    settings alone do not already say no)."""
    ex, tr = study.execution, study.train
    if not ex.cuda_mps:
        return f"{KEY} is false"
    if ex.address:
        return "the trials run on a Ray cluster (start MPS on its nodes yourself)"
    if tr.device == "cpu" or ex.gpus_per_trial <= 0:
        return "the trials do not run on a GPU"
    if ex.gpus_per_trial >= 1:
        return "each trial has a whole GPU (MPS only helps trials that share one)"
    if cuda_available is None:
        import torch

        cuda_available = torch.cuda.is_available()
    if not cuda_available:
        return "this machine has no CUDA device"
    return None


@dataclass
class MPSDaemon:
    """A running private MPS control daemon and the environment it replaced (restored by `stop`)."""

    folder: Path
    env: dict[str, str]
    saved: dict[str, str | None] = field(default_factory=dict)

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the daemon to quit (it ends once its clients have), then restore this process's environment."""
        try:
            subprocess.run([CONTROL], input="quit\n", text=True, env={**os.environ, **self.env}, timeout=timeout,
                           capture_output=True, check=False)
        finally:
            for name, value in self.saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def start_mps(study: Study, cuda_available: bool | None = None) -> MPSDaemon | None:
    """Start the daemon and export its folders to the processes this one starts (Ray's workers, the warm-up), or
    return None when the study gets none (`wants_mps`). Raises StudyConfigError when MPS was asked for but cannot
    start (no `nvidia-cuda-mps-control`, or the daemon fails), before anything is trained."""
    if wants_mps(study, cuda_available) is not None:
        return None
    control = shutil.which(CONTROL)
    if control is None:
        raise StudyConfigError(f"CUDA MPS was asked for but {CONTROL!r} is not on PATH (it comes with NVIDIA's driver "
                               "utilities); install it, or set execution.cuda_mps: false", key=KEY)
    folder = (Path(study.storage.ray_results) / f"mps-{study.name}").resolve()
    env = {ENV[0]: str(folder / "pipe"), ENV[1]: str(folder / "log")}
    for path in env.values():
        Path(path).mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run([control, "-d"], env={**os.environ, **env}, capture_output=True, text=True, timeout=30,
                              preexec_fn=release_child)  # the daemon it forks keeps no held signal mask
    except subprocess.TimeoutExpired as exc:
        raise StudyConfigError(f"the CUDA MPS daemon did not start within 30 s (log: {env[ENV[1]]}); set "
                               "execution.cuda_mps: false to run without it", key=KEY) from exc
    if done.returncode != 0:
        said = (done.stderr or done.stdout).strip()[-500:]
        raise StudyConfigError(f"the CUDA MPS daemon failed to start (exit {done.returncode}: {said or 'no output'}; "
                               f"log: {env[ENV[1]]}); is another MPS server running on this GPU? Set "
                               "execution.cuda_mps: false to run without it", key=KEY)
    daemon = MPSDaemon(folder, env, {name: os.environ.get(name) for name in ENV})
    os.environ.update(env)
    return daemon


def stop_mps(daemon: MPSDaemon | None) -> None:
    if daemon is not None:
        daemon.stop()


__all__ = ["CONTROL", "MPSDaemon", "start_mps", "stop_mps", "wants_mps"]
