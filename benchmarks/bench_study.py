"""Wall time of the default study (README's main job) and the platform's overhead.

Two ways to run the same trials, in the same process tree, one after the other:
  * platform: `nas run studies/cls_token_position.yaml` (local Ray, OptunaSearch, SQLite store, model files);
  * baseline: a plain Python loop calling `nas.trial.run_trial` for every cell, one trial at a time with a worker's thread count,
    nothing stored.

Printed: total wall time of each, the summed training time of the trials (from the store), the overhead ratio
total / (summed training time / concurrency), and platform / baseline. Usage:

    python benchmarks/bench_study.py [--study studies/cls_token_position.yaml] [--set k=v ...] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run_platform(study: str, sets: list[str], tmp: Path) -> tuple[float, str]:
    args = [sys.executable, "-m", "nas.cli", "run", study, "--db", f"sqlite:///{tmp / 'nas.db'}",
            "--set", f"storage.artifacts={tmp / 'artifacts'}", "--set", f"storage.ray_results={tmp / 'ray'}"]
    for s in sets:
        args += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "COLUMNS": "160"})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"nas run failed:\n{proc.stdout}\n{proc.stderr}")
    return wall, proc.stdout


def run_baseline(study: str, sets: list[str]) -> tuple[float, float]:
    import torch

    from nas.config import load_study
    from nas.data import make_dataset
    from nas.plan import plan_study
    from nas.trial import run_trial

    plan = plan_study(load_study(study, sets=sets))
    st = plan.study
    torch.set_num_threads(int(plan.study.execution.cpus_per_trial))  # as in a worker: no oversubscription
    t0 = time.perf_counter()
    train = 0.0
    for cell in plan.cells:
        data = make_dataset(st.data.name, seed=cell.seed, n_train=st.data.n_train, n_test=st.data.n_test,
                            img_size=st.data.img_size, **st.data.knobs)
        r = run_trial(cell.spec, data, epochs=st.train.epochs, batch_size=st.train.batch_size, lr=st.train.lr,
                      weight_decay=st.train.weight_decay, warmup_epochs=st.train.warmup_epochs, seed=cell.seed,
                      measure={"repeats": st.measure.repeats})
        train += r.train_seconds
    return time.perf_counter() - t0, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default="studies/cls_token_position.yaml")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--skip-baseline", action="store_true")
    args = ap.parse_args()

    from nas.records import TrialState
    from nas.store import Store

    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        wall, out = run_platform(args.study, args.sets, tmp)
        store = Store(f"sqlite:///{tmp / 'nas.db'}", read_only=True)
        name = store.studies()[0].name
        trials = store.trials(name, states=(TrialState.COMPLETE,))
        train = sum(t.train_seconds or 0 for t in trials)
        trial_wall = sum(t.wall_seconds or 0 for t in trials)
        info = store.study(name)
        concurrency = max(1, int((os.cpu_count() or 1) // info.config["execution"]["cpus_per_trial"]))
    print("\n".join(line for line in out.splitlines() if "trial(s)" in line))
    base_wall = base_train = None
    if not args.skip_baseline:
        base_wall, base_train = run_baseline(args.study, args.sets)
    cpu = platform.processor() or platform.machine()
    print(f"\ndevice: CPU ({os.cpu_count()} cores, {cpu}); study {name}: {len(trials)} trials, concurrency "
          f"{concurrency}")
    print(f"| run | wall (s) | summed training (s) | summed trial wall (s) | total / (training / concurrency) | "
          f"vs baseline |")
    print("|---|---|---|---|---|---|")
    print(f"| platform (`nas run`, local Ray, {concurrency} at a time) | {wall:.1f} | {train:.1f} | {trial_wall:.1f} "
          f"| {wall / (train / concurrency):.2f} | "
          f"{'–' if base_wall is None else f'{wall / base_wall:.2f}× the time'} |")
    if base_wall is not None:
        print(f"| baseline (plain loop in one process, 1 trial at a time, nothing stored) | {base_wall:.1f} | {base_train:.1f} "
              f"| – | {base_wall / base_train:.2f} | 1.00 |")


if __name__ == "__main__":
    main()
