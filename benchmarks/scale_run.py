"""One run of `bench_scale.py`'s concurrency benchmark, in a process of its own (so its memory and its Ray are its
own): a grid study of simulated trials through the real driver (`nas.execute.run_study`: Tune's controller, our
searcher over Optuna, our callback, the store) on a simulated cluster of `--concurrent` trial slots
(`sim_cluster.py`). Prints one JSON line of measurements.

    python benchmarks/scale_run.py --db URL --concurrent 1000 --trials 2000 --epochs 5 --epoch-s 1.0 --out RUN.json

`--nas-root DIR` imports the `nas` package from DIR (bench_scale.py's "before": an older commit's `nas/`);
`--max-wall S` stops the study after S seconds as Ctrl+C would (Tune ends the experiment; what was measured stays).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

MODEL_BYTES = 100_000  # a tiny backbone's model file (safetensors of ~25k float32 parameters)
LEVELS = ["head", "middle", "tail", "double", "mean"]
ROUTES = ["bi", "cross4"]  # 10 cells a seed: up to 10,000 trials within the 1,000 seeds a study may list
STUDY = """
name: scale_sim
question: simulated trials (benchmarks/bench_scale.py)
search_space: tiny_plain
fixed: {{dims: [16], depths: [1]}}
factors:
  readout: [{levels}]
  route: [{routes}]
seeds: {seeds}
data: {{name: digits, n_train: 128, n_test: 64, img_size: 16}}
train: {{epochs: {epochs}, batch_size: 32, lr: 3.0e-3}}
execution: {{cpus_per_trial: 1, retries: 0}}
measure: {{skip: true}}
storage: {{url: "{url}", artifacts: "{root}/artifacts", ray_results: "{root}/ray"}}
"""


def sim_trainable(fail_every: int) -> type:
    """A Tune class trainable that trains nothing: each `step` is one epoch's report, shaped as `nas.worker` shapes
    it (the last with `final`, the cost and the objectives), and Tune's checkpoint at the end holds a model file of
    `MODEL_BYTES` (the callback copies it to the artifacts); one trial in `fail_every` raises after epoch 2."""
    from ray import tune

    from nas.records import TrialStart
    from nas.tune_adapter import TASK
    from nas.worker import FINAL, MODEL_FILE

    class SimTrial(tune.Trainable):
        def setup(self, config: dict[str, Any], study_json: dict[str, Any] | None = None) -> None:
            if study_json is not None:
                self.epochs = int(study_json["train"]["epochs"])
            self.task = TrialStart.from_config(config[TASK])
            self.rng = random.Random(self.task.number)
            self.epoch = 0

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            self.setup(new_config)
            return True

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            if self.epoch >= self.epochs:
                (Path(checkpoint_dir) / MODEL_FILE).write_bytes(b"\0" * MODEL_BYTES)

        def load_checkpoint(self, checkpoint: Any) -> None:
            pass

        def step(self) -> dict[str, Any]:
            self.epoch += 1
            acc = 0.5 + 0.05 * self.epoch + self.rng.gauss(0, 0.02)
            row = {"epoch": self.epoch, "train_loss": 1.0 / self.epoch, "val_loss": 1.1 / self.epoch,
                   "val_acc": acc, "lr": 1e-3, "seconds": 1.0, "node_id": "sim-node", "device": "cpu"}
            if fail_every and self.task.number % fail_every == fail_every - 1 and self.epoch == 2:
                raise RuntimeError("simulated failure after epoch 2")
            if self.epoch < self.epochs:
                return row
            return {**row, FINAL: True, "done": True, "num_params": 25_000, "cost": {"throughput": 1500.0,
                    "flops": 10**6}, "kernel_paths": {"selective_scan": "reference"}, "wall_seconds": 5.0,
                    "train_seconds": 4.0, "params": 25_000, "flops": 10**6, "throughput": 1500.0}

    return SimTrial


class Timers:
    """Wall-clock latency of chosen methods, by label (wrapped in place; `undo` puts them back)."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}
        self._undo: list[Callable[[], None]] = []

    def wrap(self, owner: Any, name: str, *labels: str) -> None:
        fn = getattr(owner, name)
        buckets = [self.samples.setdefault(label, []) for label in labels or (name,)]

        def timed(*args: Any, **kwargs: Any) -> Any:
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                for b in buckets:
                    b.append(time.perf_counter() - t)

        setattr(owner, name, timed)
        self._undo.append(lambda: setattr(owner, name, fn))

    def summary(self) -> dict[str, dict[str, float]]:
        return {k: pct(v) for k, v in self.samples.items() if v}


def pct(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)

    def q(p: float) -> float:
        return s[min(len(s) - 1, int(p * len(s)))]

    return {"n": len(s), "p50_ms": 1e3 * q(0.50), "p95_ms": 1e3 * q(0.95), "p99_ms": 1e3 * q(0.99),
            "mean_ms": 1e3 * statistics.fmean(s), "total_s": sum(s)}


def rss_mib() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            out[line.split(":")[0]] = int(line.split()[1]) / 1024
    return out


def run(url: str, concurrent: int, trials: int, epochs: int, epoch_s: float, fail_every: int,
        root: Path, profile: str | None, max_wall: float | None = None) -> dict[str, Any]:
    import signal
    import threading

    import optuna

    import nas.execute
    import sim_cluster
    from nas.config import load_study
    from nas.plan import plan_study
    from nas.store import Store

    seeds = -(-trials // (len(LEVELS) * len(ROUTES)))
    path = root / "scale_sim.yaml"
    path.write_text(STUDY.format(levels=", ".join(LEVELS), routes=", ".join(ROUTES), seeds=list(range(seeds)),
                                 epochs=epochs, url=url, root=root))
    plan = plan_study(load_study(path))
    store = Store(url)
    timers = Timers()
    from nas.tune_adapter import StoreCallback, StudySearcher

    # every write of the store (record_epoch calls record_epochs where the store batches: one of them is timed)
    batched = hasattr(Store, "record_epochs")
    for name in ("trial_started", "record_epochs" if batched else "record_epoch", "trial_finished", "heartbeat",
                 "add_artifact"):
        timers.wrap(Store, name, f"store.{name}", "store: every write")
    timers.wrap(optuna.Study, "ask", "optuna.ask")
    timers.wrap(optuna.Study, "tell", "optuna.tell")
    timers.wrap(optuna.Trial, "report", "optuna.report")
    timers.wrap(optuna.Study, "enqueue_trial", "optuna.enqueue_trial")
    for name in ("suggest", "on_trial_complete"):  # our searcher: a trial's start (ask or claim) and its tell
        timers.wrap(StudySearcher, name, f"searcher.{name}")
    for name in ("on_trial_result", "on_trial_complete", "on_step_end"):
        timers.wrap(StoreCallback, name, f"callback.{name}")

    managers = sim_cluster.install(slots=concurrent, epoch_s=epoch_s)
    nas.execute.train_cell = sim_trainable(fail_every)  # the trainable TuneRunner wraps and hands to Tune
    epochs_at: list[float] = []
    cpu_at: list[float] = []  # the driver's CPU seconds (process minus simulated workers) at each report
    ended_at: list[float] = []  # when each trial ended (complete, stopped or failed)
    queued_at: list[float] = []
    counts: dict[str, int] = {}
    last_print = [time.monotonic()]

    def on_event(kind: str, info: dict[str, Any]) -> None:
        counts[kind] = counts.get(kind, 0) + 1
        if kind in ("complete", "stopped", "failed"):
            ended_at.append(time.monotonic())
        if kind == "epoch":
            epochs_at.append(time.monotonic())
            cpu_at.append(time.process_time() - managers[-1].worker_s)
            if epochs_at[-1] - last_print[0] > 10:
                last_print[0] = epochs_at[-1]
                print(f"  … {len(epochs_at):,} reports, {counts.get('complete', 0):,} trials complete",
                      file=sys.stderr, flush=True)

    def on_queued(rnd: int, q: int, stale: int, done: int) -> None:
        queued_at.append(time.monotonic())

    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    mem0 = rss_mib()
    capped = threading.Event()

    def cap() -> None:
        capped.set()
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(max_wall or 1e9, cap)
    timer.daemon = True
    if max_wall:
        timer.start()
    t0, c0 = time.monotonic(), time.process_time()
    if prof:
        prof.enable()
    out = nas.execute.run_study(plan, store, max_concurrent=concurrent, on_event=on_event, on_queued=on_queued)
    timer.cancel()
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    mgr = managers[-1]
    n = len(epochs_at)
    ours = sum(v["total_s"] for k, v in timers.summary().items() if k.startswith(("searcher.", "callback.")))
    driver_cpu = cpu - mgr.worker_s
    return {"url": url.split(":")[0], "concurrent": concurrent, "trials": trials, "epochs": epochs,
            "epoch_s": epoch_s, "offered_per_s": concurrent / epoch_s, "reports": n, "sim_results": mgr.results,
            "completed": out.completed, "failed": out.failed, "started": counts.get("start", 0), "wall_s": wall,
            "capped": capped.is_set(),
            "queue_s": (queued_at[0] - t0) if queued_at else float("nan"),
            "first_report_after_queue_s": epochs_at[0] - queued_at[0] if epochs_at and queued_at else float("nan"),
            "first_report_s": epochs_at[0] - t0 if epochs_at else float("nan"),
            **steady(epochs_at, cpu_at, ended_at), "mean_reports_per_s": n / wall,
            "ours_ms_per_report": 1e3 * ours / max(1, n), "driver_cpu_s": driver_cpu,
            "sim_worker_cpu_s": mgr.worker_s, "driver_cpu_ms_per_report": 1e3 * driver_cpu / max(1, n),
            "lag": pct(mgr.lags) if mgr.lags else {}, "timers": timers.summary(), "mem_before_mib": mem0,
            "mem_after_mib": rss_mib(), "load_avg": os.getloadavg()}


def steady(epochs_at: list[float], cpu_at: list[float], ended_at: list[float]) -> dict[str, float]:
    """Rates in the steady window, from the 10 % to the 90 % report: reports and trial ends a second, the driver's
    CPU a report and its share of one core."""
    n = len(epochs_at)
    i, j = n // 10, (9 * n) // 10
    span = epochs_at[j] - epochs_at[i] if n >= 10 else 0.0
    if span <= 0:  # (almost) nothing reported: no steady state to speak of
        return dict.fromkeys(("steady_reports_per_s", "steady_trials_ended_per_s", "steady_driver_cpu_ms_per_report",
                              "steady_driver_cpu_share"), float("nan"))
    return {"steady_reports_per_s": (j - i) / span,
            "steady_trials_ended_per_s": sum(epochs_at[i] <= t <= epochs_at[j] for t in ended_at) / span,
            "steady_driver_cpu_ms_per_report": 1e3 * (cpu_at[j] - cpu_at[i]) / (j - i),
            "steady_driver_cpu_share": (cpu_at[j] - cpu_at[i]) / span}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", required=True)
    ap.add_argument("--concurrent", type=int, default=100)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--epoch-s", type=float, default=1.0)
    ap.add_argument("--fail-every", type=int, default=100, help="one trial in N fails after epoch 2 (0: none)")
    ap.add_argument("--profile", help="cProfile the driver into this file")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--nas-root", help="import the nas package from this folder (an older commit's nas/)")
    ap.add_argument("--max-wall", type=float, help="stop the study after this many seconds")
    a = ap.parse_args()
    if a.nas_root:
        sys.path.insert(0, a.nas_root)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        res = run(a.db, a.concurrent, a.trials, a.epochs, a.epoch_s, a.fail_every, Path(tmp), a.profile, a.max_wall)
    res["nas"] = str(Path(sys.modules["nas"].__file__).parent)
    line = json.dumps(res)
    if a.out:
        a.out.write_text(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
