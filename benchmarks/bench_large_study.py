"""A study database with 10,000 trials: how long `nas list` and `nas show STUDY` take (issue 6: list < 1 s, show < 2 s).

The database is built as the driver would leave it, only faster: Optuna's trials through Optuna's own API
(`study.add_trials`, one COMPLETE trial per cell with its parameters and value) and our tables through the `Store`'s
models in bulk (one `nas_trials` row per trial, 4 epochs each, one artifact each). The grid is 5 class-token
placements × 2,000 seeds. Then, on that file:

  * in process: the CLI commands through Typer's CliRunner (imports already paid), median of several calls, plus the
    `Store` reads they make (`studies()`, `study()`, `trials()`) on their own;
  * as a user sees it: `python -m nas.cli list|show` in a subprocess, wall time including Python's start-up.

Usage: python benchmarks/bench_large_study.py [--trials 10000] [--epochs 4] [--repeats 5] [--db PATH] [--profile]
                                             [--no-optuna]
(`--db` keeps the database at PATH and reuses it when it already holds the study; `--no-optuna` leaves Optuna's
trials out of the build: `nas list` and `nas show` read our tables only, and 100,000 of them build in a minute.)
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STUDY = "large_study"
LEVELS = ["head", "middle", "tail", "double", "mean"]
TARGETS = {"nas list": 1.0, "nas show": 2.0}


def _config(n_seeds: int) -> dict:
    return {"name": STUDY, "question": "where should the class token go? (10,000-trial benchmark)",
            "factors": {"readout": LEVELS}, "reference": {"readout": "head"}, "seeds": list(range(n_seeds)),
            "data": {"name": "digits", "n_train": 1024, "n_test": 512, "img_size": 32},
            "objectives": [{"metric": "val_acc"}],
            "paper": {"source": "Vim, Table 5", "values": {"head": 75.2, "middle": 76.1}}}


def build(url: str, n_trials: int, epochs: int, *, with_optuna: bool = True) -> float:
    """Fill the database; returns the seconds it took. Without Optuna's trials (`with_optuna=False`: a grid's views
    and `nas show` read our tables only) 100,000 trials take a minute instead of a quarter of an hour."""
    import optuna
    from optuna.distributions import CategoricalDistribution, IntDistribution
    from sqlalchemy import insert

    from nas.store import ArtifactRow, EpochRow, Store, TrialRow

    t0 = time.perf_counter()
    n_seeds = -(-n_trials // len(LEVELS))
    store = Store(url)
    store.upsert_study(name=STUDY, question=_config(n_seeds)["question"], kind="grid", study_yaml=f"name: {STUDY}\n",
                       config=_config(n_seeds), search_space_yaml="name: tiny_plain\n", n_cells=n_trials)
    run_id = store.start_run(STUDY, "bench_large_study.py")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ot = optuna.create_study(storage=store.optuna_storage(), study_name=STUDY, direction="maximize")
    dists = {"readout": CategoricalDistribution(LEVELS), "seed": IntDistribution(0, n_seeds - 1)}
    rng = random.Random(0)
    cells = [(LEVELS[i % len(LEVELS)], i // len(LEVELS)) for i in range(n_trials)]
    accs = [0.6 + 0.05 * LEVELS.index(lv) / len(LEVELS) + rng.gauss(0, 0.02) for lv, _ in cells]
    id_of = {i: i + 1 for i in range(n_trials)}  # Optuna's ids as they would be, where its trials are not written
    if with_optuna:
        ot.add_trials([optuna.trial.create_trial(params={"readout": lv, "seed": s}, distributions=dists, value=a,
                                                 user_attrs={"nas:key": f"{STUDY}/{lv}/{s}"})
                       for (lv, s), a in zip(cells, accs)])
        id_of = {t.number: t._trial_id for t in ot.get_trials(deepcopy=False)}
    start = datetime(2026, 1, 1)
    rows = [{"study_name": STUDY, "run_id": run_id, "optuna_trial_id": id_of[i], "number": i,
             "key": f"{STUDY}/{lv}/{s}", "levels": {"readout": lv}, "params": {"readout": lv, "seed": s},
             "spec_id": f"spec_{lv}", "spec_json": '{"readout": "%s", "dims": [64], "depths": [4]}' % lv, "seed": s,
             "state": "complete", "attempts": 1, "node_id": "node-0", "device": "cpu",
             "started_at": start + timedelta(seconds=10 * i), "finished_at": start + timedelta(seconds=10 * i + 9),
             "val_acc": a, "val_loss": 1.0 - a, "num_params": 200_000 + 100 * LEVELS.index(lv),
             "values": {"val_acc": a}, "cost": {"throughput": 1000.0 + i % 7, "flops": 10**8},
             "budget": {}, "kernel_paths": {"selective_scan_paths": "reference"}, "wall_seconds": 9.0,
             "train_seconds": 8.0} for i, ((lv, s), a) in enumerate(zip(cells, accs))]
    with store.session() as sess:
        sess.execute(insert(TrialRow), rows)
    with store.session() as sess:
        ids = [r[0] for r in sess.execute(TrialRow.__table__.select().with_only_columns(TrialRow.id)
                                          .where(TrialRow.study_name == STUDY).order_by(TrialRow.id)).all()]
        sess.execute(insert(EpochRow), [{"trial_id": tid, "epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e,
                                         "val_acc": 0.5 + 0.02 * e, "lr": 1e-3, "seconds": 2.0}
                                        for tid in ids for e in range(1, epochs + 1)])
        sess.execute(insert(ArtifactRow), [{"trial_id": tid, "kind": "model", "path": f"/tmp/trial_{tid}.safetensors",
                                            "bytes": 800_000, "created_at": start} for tid in ids])
    store.finish_run(run_id, "finished", time.perf_counter() - t0)
    return time.perf_counter() - t0


def _has_study(url: str, n_trials: int) -> bool:
    from nas.errors import StoreError
    from nas.store import Store

    try:
        return any(r.name == STUDY and r.done == n_trials for r in Store(url, read_only=True).studies())
    except StoreError:
        return False


def _median_time(fn, repeats: int) -> tuple[float, float]:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], statistics.median(times)


def _cli_in_process(args: list[str]):  # noqa: ANN202
    from typer.testing import CliRunner

    from nas.cli import app

    def call() -> None:
        res = CliRunner().invoke(app, args, env={"COLUMNS": "150"})
        if res.exit_code != 0:
            raise SystemExit(f"nas {' '.join(args)} failed ({res.exit_code}):\n{res.output}")
    return call


def _cli_subprocess(args: list[str]):  # noqa: ANN202
    def call() -> None:
        proc = subprocess.run([sys.executable, "-m", "nas.cli", *args], cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "COLUMNS": "150"})
        if proc.returncode != 0:
            raise SystemExit(f"nas {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return call


def device() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{model}, {os.cpu_count()} cores (load average {load:.1f} at the start)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=10_000)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--db", type=Path, default=None, help="keep the database here (reused if it holds the study)")
    ap.add_argument("--profile", action="store_true", help="cProfile one in-process `nas show` (top 25 by cumtime)")
    ap.add_argument("--no-optuna", action="store_true", help="build our tables only (Optuna's study stays empty)")
    a = ap.parse_args()
    dev = device()
    tmp = tempfile.TemporaryDirectory()
    path = a.db or Path(tmp.name) / "large.db"
    url = f"sqlite:///{path.resolve()}"
    if _has_study(url, a.trials):
        print(f"reusing {url}")
    else:
        path.unlink(missing_ok=True)
        took = build(url, a.trials, a.epochs, with_optuna=not a.no_optuna)
        print(f"built {a.trials:,} trials × {a.epochs} epochs in {url} in {took:.1f} s")
    print(f"database file: {path.stat().st_size / 2**20:.1f} MiB")

    from nas.store import Store

    store = Store(url, read_only=True)
    rows: list[tuple[str, str, float, float, float | None]] = []
    for label, fn in [("Store.studies()", store.studies), ("Store.study()", lambda: store.study(STUDY)),
                      ("Store.trials()", lambda: store.trials(STUDY))]:
        first, med = _median_time(fn, a.repeats)
        rows.append((label, "in process", first, med, None))
    for cmd, args in [("nas list", ["list", "--db", url]), ("nas show", ["show", STUDY, "--db", url])]:
        first, med = _median_time(_cli_in_process(args), a.repeats)
        rows.append((cmd, "in process (CliRunner)", first, med, TARGETS[cmd]))
        first, med = _median_time(_cli_subprocess(args), max(2, a.repeats // 2))
        rows.append((cmd, "subprocess, incl. Python start-up", first, med, TARGETS[cmd]))
    first, med = _median_time(_cli_subprocess(["--help"]), 2)
    rows.append(("nas --help", "subprocess: start-up alone", first, med, None))
    for what in ("blocks", "scipy.stats"):  # what `nas list` / `nas show` import on the way (see RESULTS.md)
        first, med = _median_time(lambda: subprocess.run([sys.executable, "-c", f"import {what}"], cwd=ROOT,
                                                         check=True), 2)
        rows.append((f"import {what}", "subprocess: Python start-up + that import", first, med, None))

    print(f"\n{a.trials:,} trials × {a.epochs} epochs, SQLite; device: {dev}\n")
    print("| what | how | first (s) | median (s) | target (s) | met |")
    print("|---|---|---|---|---|---|")
    for label, how, first, med, target in rows:
        met = "" if target is None else ("yes" if med < target else "no")
        print(f"| {label} | {how} | {first:.3f} | {med:.3f} | {'' if target is None else f'< {target:g}'} | {met} |")
    if a.profile:
        import cProfile
        import pstats

        prof = cProfile.Profile()
        prof.runcall(_cli_in_process(["show", STUDY, "--db", url]))
        pstats.Stats(prof).sort_stats("cumulative").print_stats(25)
    tmp.cleanup()


if __name__ == "__main__":
    main()
