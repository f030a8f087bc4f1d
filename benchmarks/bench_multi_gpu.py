"""A study across the GPUs of one host (issue 16), in one run: trials per hour on one GPU against all of them, the
same study through `--address` on a `ray start --head` cluster of this host, and a trial's worker killed mid-run.

    python benchmarks/bench_multi_gpu.py                         # on a multi-GPU machine (NCCL multicast stays off)
    python benchmarks/bench_multi_gpu.py --seeds 0-7 --out runs/multi_gpu
    python benchmarks/bench_multi_gpu.py --rehearse-on-cpu 2     # the orchestration on a CPU machine (see below)

Phases, each on a fresh SQLite database under --out, each a real `nas run` subprocess:
1. `one`: local Ray that sees one GPU (CUDA_VISIBLE_DEVICES = the first card), CPUs = slots a GPU holds.
2. `all`: local Ray that sees every GPU, CPUs scaled with them; the ratio of trials per hour is all / one (the
   driver's own count, and wall time with Ray's start-up); the store's `device` column says which physical GPU each
   trial ran on.
3. `cluster`: a head started with `ray start --head --num-gpus N` in its own process group (stopped by that group,
   never `ray stop`), `nas run --address`; once a trial has stored an epoch, one trial worker process
   (`ray::ImplicitFunc`) is SIGKILLed. The study must finish with every cell complete exactly once and the killed
   trial retried (attempts >= 2): the study's `execution.retries` must be at least 1 (the h200 profiles set 1).

`--rehearse-on-cpu N` checks this script where there is no GPU: every phase runs on a `ray start` head with N logical
GPUs (a CPU machine's local Ray has no GPU to give, so phases 1-2 cannot use it), trials train on the CPU
(`train.device=cpu`) on a small task, and the spread over GPUs cannot be read from the store (it records the device a
trial trained on). Its timings say nothing about GPUs.

Writes `multi_gpu.md` (the table) and `multi_gpu.json` under --out, and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dashboard import units as U  # noqa: E402
from nas.records import TrialState  # noqa: E402
from nas.store import Store  # noqa: E402

NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
FINISHED = re.compile(r"(\d+) trial\(s\) finished, (\d+) failed, in (\d+) s")
REHEARSAL_SETS = ["train.device=cpu", "data.n_train=512", "data.n_test=128", "data.img_size=32", "train.epochs=3",
                  "fixed.dims=[32]", "fixed.depths=[1]", "execution.gpu_memory_gb=null", "measure.skip=true"]


@dataclass
class Phase:
    name: str
    gpus: int
    cpus: int
    rc: int = -1
    trials: int = 0
    failed: int = 0
    driver_s: float | None = None
    wall_s: float = 0.0
    per_gpu: dict[str, int] = field(default_factory=dict)
    killed_pid: int | None = None
    retried: list[str] = field(default_factory=list)
    cells_once: bool | None = None
    note: str = ""

    @property
    def per_hour(self) -> float | None:
        return 3600 * self.trials / self.driver_s if self.driver_s else None


def _gpu_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def _gpu_names() -> str:
    """`2 × NVIDIA H200`, or every name where the cards differ."""
    names = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                           text=True).stdout.strip().splitlines()
    return f"{len(names)} × {names[0]}" if names and len(set(names)) == 1 else ", ".join(names)


def _seeds(text: str) -> list[int]:
    if "-" in text and "," not in text:
        lo, hi = text.split("-")
        return list(range(int(lo), int(hi) + 1))
    return [int(s) for s in text.split(",") if s.strip()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _trial_workers() -> list[int]:
    """PIDs of Ray Tune's trial actors (function trainables run as `ray::ImplicitFunc`)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "cmdline").read_bytes().startswith(b"ray::ImplicitFunc"):
                    pids.append(int(proc.name))
            except OSError:
                continue
    return sorted(pids)


def _store(db: Path) -> Store:
    return Store(f"sqlite:///{db}", read_only=True)


class Head:
    """`ray start --head` in its own process group, with token authentication; stopped by killing that group."""

    def __init__(self, out: Path, gpus: int, cpus: int, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {**env, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.temp = Path("/tmp") / f"rmg{self.port}"  # short: Ray's socket paths must fit 107 bytes
        ray = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", f"--port={self.port}",
               f"--num-cpus={cpus}", f"--num-gpus={gpus}", "--include-dashboard=false", "--disable-usage-stats",
               f"--temp-dir={self.temp}", "--node-ip-address=127.0.0.1"]
        with open(out / f"ray_head_{self.port}.log", "w") as log:
            self.proc = subprocess.Popen(ray, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                         start_new_session=True, cwd=ROOT)
            if self.proc.wait(timeout=180) != 0:
                raise RuntimeError(f"ray start failed: see {log.name}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            time.sleep(2)


def _run_phase(ph: Phase, args: argparse.Namespace, out: Path, env: dict[str, str], sets: list[str],
               address: str | None = None, kill: bool = False) -> Phase:
    db = out / f"{ph.name}.db"
    db.unlink(missing_ok=True)
    name = Path(args.study).stem
    cmd = [sys.executable, "-m", "nas.cli", "run", args.study, "--db", f"sqlite:///{db}",
           "--set", f"storage.artifacts={out / ph.name / 'artifacts'}",
           "--set", f"storage.ray_results={out / ph.name / 'ray'}"]
    if args.profile != "none":
        cmd += ["--profile", args.profile]
    for kv in sets:
        cmd += ["--set", kv]
    cmd += ["--address", address] if address else ["--set", f"execution.num_cpus={ph.cpus}"]
    log_path = out / f"{ph.name}.log"
    print(f"[{ph.name}] {ph.gpus} GPU(s), {ph.cpus} CPUs: {' '.join(cmd[2:])}", flush=True)
    t0 = time.monotonic()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while proc.poll() is None and time.monotonic() - t0 < args.phase_limit:
                time.sleep(0.5)
                if kill and ph.killed_pid is None and db.exists():
                    try:
                        store = _store(db)
                        stored = sum(len(store.epochs(t.id)) for t in store.trials(name))
                    except Exception:  # noqa: BLE001 - tables not created yet
                        continue
                    workers = _trial_workers()
                    if stored and workers:
                        ph.killed_pid = workers[0]
                        os.kill(ph.killed_pid, signal.SIGKILL)
                        print(f"[{ph.name}] killed trial worker pid {ph.killed_pid} after {stored} stored epoch(s)",
                              flush=True)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                ph.note = f"stopped at the phase limit ({args.phase_limit:.0f} s)"
    ph.wall_s = time.monotonic() - t0
    ph.rc = proc.wait()
    text = log_path.read_text()
    if m := FINISHED.search(text):
        ph.trials, ph.failed, ph.driver_s = int(m.group(1)), int(m.group(2)), float(m.group(3))
    if db.exists():
        trials = _store(db).trials(name)
        for t in trials:
            label = U.device(t.device)  # `GPU 1 (NVIDIA H200)`: the host's card, from the store's label
            ph.per_gpu[label] = ph.per_gpu.get(label, 0) + 1
        ph.retried = [t.key for t in trials if t.attempts >= 2]
        keys = [t.key for t in trials]
        ph.cells_once = len(keys) == len(set(keys)) and all(t.state == TrialState.COMPLETE for t in trials)
    print(f"[{ph.name}] rc {ph.rc}, {ph.trials} finished, {ph.failed} failed, driver {ph.driver_s} s, "
          f"wall {ph.wall_s:.0f} s, per GPU {ph.per_gpu}", flush=True)
    return ph


def _table(phases: list[Phase], gpus: int, device: str, rehearsal: bool) -> str:
    one = next((p for p in phases if p.name == "one"), None)
    head = f"device: {device}; {gpus} GPU(s)" + (" (logical: CPU rehearsal, timings say nothing)" if rehearsal else "")
    columns = ["phase", "GPUs", "CPUs", "trials", "failed", "driver s", "wall s", "trials/hour", "vs one GPU",
               "trials per GPU", "killed worker → retried", "every cell once"]
    lines = [head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for p in phases:
        ratio = f"{p.per_hour / one.per_hour:.2f}×" if one and one.per_hour and p.per_hour and p is not one else "-"
        killed = (f"pid {p.killed_pid} → {', '.join(k.split('/', 1)[-1] for k in p.retried) or 'none retried'}"
                  if p.killed_pid else "-")
        spread = ", ".join(f"{k}: {v}" for k, v in sorted(p.per_gpu.items())) or "-"
        per_hour = f"{p.per_hour:.0f}" if p.per_hour else "-"
        lines.append(f"| {p.name} | {p.gpus} | {p.cpus} | {p.trials} | {p.failed} | {p.driver_s or '-'} | "
                     f"{p.wall_s:.0f} | {per_hour} | {ratio} | {spread} | {killed} | {p.cells_once} |"
                     + (f" {p.note}" if p.note else ""))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--study", default="studies/cls_token_position.yaml")
    ap.add_argument("--profile", default="h200", help="the study's profile ('none': the file's own settings)")
    ap.add_argument("--seeds", default="0-4", help="a fixed seed list for every phase: '0-4' or '0,1,2'")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs to use (default: every card nvidia-smi lists)")
    ap.add_argument("--slots-per-gpu", type=int, default=16, help="CPUs per GPU (the h200 profiles: 1 CPU and "
                    "1/16 of a GPU per trial)")
    ap.add_argument("--phases", default="one,all,cluster")
    ap.add_argument("--phase-limit", type=float, default=400, help="seconds before a phase's driver gets SIGINT")
    ap.add_argument("--rehearse-on-cpu", type=int, default=0, metavar="N", help="N logical GPUs on a CPU machine")
    ap.add_argument("--out", default=os.environ.get("OUT", "runs/multi_gpu"))
    args = ap.parse_args()

    rehearsal = args.rehearse_on_cpu > 0
    gpus = args.rehearse_on_cpu if rehearsal else (args.gpus or _gpu_count())
    if gpus < 1:
        print("no GPU found (nvidia-smi -L lists none): run on a GPU machine or pass --rehearse-on-cpu N")
        return 2
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **NO_MULTICAST, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    seeds = _seeds(args.seeds)
    sets = [f"seeds=[{', '.join(map(str, seeds))}]"] + (REHEARSAL_SETS if rehearsal else [])
    cpu_cap = os.cpu_count() or 1
    device = "CPU rehearsal" if rehearsal else _gpu_names()
    phases: list[Phase] = []
    for name in [p.strip() for p in args.phases.split(",") if p.strip()]:
        n_gpu = 1 if name == "one" else gpus
        cpus = max(1, min(cpu_cap, args.slots_per_gpu * n_gpu)) if not rehearsal else max(1, min(cpu_cap, n_gpu))
        ph = Phase(name, n_gpu, cpus)
        if name == "one" and not rehearsal:
            ph_env = {**env, "CUDA_VISIBLE_DEVICES": env.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]}
        else:
            ph_env = env
        head = None
        try:
            if name == "cluster" or rehearsal:  # a CPU machine's local Ray has no GPU to give: a head with N
                head = Head(out, n_gpu, cpus, ph_env)
                ph_env = {**ph_env, **{k: head.env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}}
                kill_env = {**ph_env, "NAS_EPOCH_FLUSH_S": "0"} if name == "cluster" else ph_env
                phases.append(_run_phase(ph, args, out, kill_env, sets, address=head.address, kill=name == "cluster"))
            else:
                phases.append(_run_phase(ph, args, out, ph_env, sets))
        finally:
            if head:
                head.stop()
    table = _table(phases, gpus, device, rehearsal)
    (out / "multi_gpu.md").write_text(table + "\n")
    (out / "multi_gpu.json").write_text(json.dumps([asdict(p) | {"per_hour": p.per_hour} for p in phases], indent=1))
    print(table)
    ok = all(p.rc == 0 and p.failed == 0 and p.cells_once for p in phases)
    cluster = next((p for p in phases if p.name == "cluster"), None)
    if cluster and not (cluster.killed_pid and cluster.retried):
        print("the cluster phase killed no worker or retried no trial")
        ok = False
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
