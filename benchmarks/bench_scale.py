"""Scale past one machine, in simulation (issue 12): how many trials the driver can keep running at once, where it
breaks first, and how long Optuna takes to suggest a point as a search grows.

    python benchmarks/bench_scale.py --quick          # a few minutes: 100 and 1,000 at once, SQLite and PostgreSQL
    python benchmarks/bench_scale.py                  # 100 / 1,000 / 5,000 at once, before and after, suggest times
    python benchmarks/bench_scale.py --only suggest   # only Optuna's suggest times

1. Concurrency (`scale_run.py`, one process per run): a grid study of simulated trials through the real driver
   (`nas.execute.run_study`: `tune.Tuner` and Tune's controller, our searcher over Optuna, our callback, the store)
   on a simulated cluster of N trial slots (`sim_cluster.py`: Ray's actor manager replaced by trainables in the
   driver's process, whose every `train` call answers one epoch about a second later). Each slot runs two trials of
   `--epochs` epochs: N / epoch_s reports a second are offered to the driver. Measured: the reports per second it
   sustains (steady window: from the 10 % to the 90 % report), its CPU per report, how late it takes a result (lag),
   the latency of every store write and of Optuna's calls, its memory. On SQLite (a file) and on PostgreSQL (a server
   started here on loopback with its durable defaults: fsync and synchronous_commit on). "before" runs the same
   benchmark on `nas/` as of `--before` (git), "after" on this tree.
2. Suggest: Optuna's `ask` for the search space of studies/search_accuracy_vs_throughput.yaml with 100 / 1,000 /
   5,000 / 10,000 finished trials in the database (TPE as our searches configure it, one and two objectives;
   NSGA-II), and then with 100 / 1,000 trials left running beside the most finished (10,000; with --quick 1,000 and
   100 running): Optuna re-reads every unfinished trial on each ask.

Not exercised: Ray's core (scheduling 1,000 actors, the GCS, object transfer, networks between nodes), the workers
(training, checkpoint upload) and the dashboard. See sim_cluster.py.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]
BEFORE = "15a4418"  # main when issue 12 started: the searcher, callback and store before the fixes measured here


def postgres() -> Any:
    """A PostgreSQL server on loopback as tests/_postgres.py starts one, but with its durable defaults."""
    from tests._postgres import running_server, skip_reason

    reason = skip_reason()
    if reason:
        raise SystemExit(f"PostgreSQL runs skipped: {reason}")
    return running_server(durable=True)


def before_tree(rev: str, dest: Path) -> Path:
    """`nas/` as of commit `rev`, unpacked under dest (imported first by scale_run.py --nas-root)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / "nas.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev, "nas"], check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    return dest


def concurrency_run(url: str, n: int, args: argparse.Namespace, nas_root: Path | None, out: Path) -> dict:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "scale_run.py"), "--db", url, "--concurrent", str(n),
           "--trials", str(args.trials_per_slot * n), "--epochs", str(args.epochs), "--epoch-s", str(args.epoch_s),
           "--max-wall", str(args.max_wall), "--out", str(out)]
    if nas_root:
        cmd += ["--nas-root", str(nas_root)]
    t = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"},
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not out.exists():
        print(f"    scale_run.py failed ({proc.returncode}):\n{proc.stderr[-4000:]}", flush=True)
        return None
    res = json.loads(out.read_text())
    print(f"    {time.monotonic() - t:.0f} s: {res['steady_reports_per_s']:.0f} reports/s of {n / args.epoch_s:.0f} "
          f"offered, {res['steady_driver_cpu_ms_per_report']:.1f} ms CPU per report, {res['started']:,} trials "
          f"started, {res['reports']:,} reports", flush=True)
    return res


def concurrency(args: argparse.Namespace, work: Path) -> list[dict]:
    rows = []
    with (postgres() if "postgresql" in args.backends else _nothing()) as pg:
        urls = {"sqlite": lambda: f"sqlite:///{work / f'{uuid.uuid4().hex[:8]}.db'}",
                "postgresql": lambda: pg.create_database(f"s_{uuid.uuid4().hex[:10]}")}
        before = before_tree(args.before, work / "before") if args.before_at else None
        plan = [("after", b, n) for b in args.backends for n in args.concurrency]
        plan += [("before", b, n) for b in args.backends for n in args.before_at]
        for variant, backend, n in plan:
            print(f"  {variant} ({args.before if variant == 'before' else 'this tree'}), {backend}, {n:,} at once",
                  flush=True)
            res = concurrency_run(urls[backend](), n, args, before if variant == "before" else None,
                                  work / f"{variant}-{backend}-{n}.json")
            if res is not None:
                rows.append({"variant": variant, "backend": backend, **res})
                save(args, rows, [])
    return rows


def save(args: argparse.Namespace, conc: list[dict], sug: list[dict]) -> None:
    """Everything measured so far, as JSON (after every run: a long benchmark cut short keeps what it has)."""
    if args.out:
        args.out.write_text(json.dumps({"device": device(), "concurrency": conc, "suggest": sug}, indent=1))


@contextmanager
def _nothing() -> Iterator[None]:
    yield None


# ------------------------------------------------------------------------------------------------------ suggest
def suggest(args: argparse.Namespace, work: Path) -> list[dict]:
    """Optuna's ask time against the number of finished (and running) trials, on SQLite."""
    import optuna

    from nas.config import load_study
    from nas.space import search_distributions

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = load_study(ROOT / "studies" / "search_accuracy_vs_throughput.yaml").study
    dists = search_distributions(study)
    url = f"sqlite:///{work / 'suggest.db'}"
    rng = random.Random(0)
    rows = []
    warm = optuna.create_study(directions=["maximize"] * 2, sampler=optuna.samplers.TPESampler(seed=0))
    for _ in range(12):  # TPE's and NSGA-II's first use in a process pays imports: not a cost of the study's size
        warm.tell(warm.ask(fixed_distributions=dists), [rng.random(), rng.random()])
    optuna.create_study(sampler=optuna.samplers.NSGAIISampler(seed=0), directions=["maximize"] * 2).ask()
    samplers = {"TPE (1 objective)": (1, lambda: optuna.samplers.TPESampler(seed=0, multivariate=True)),
                "TPE (2 objectives)": (2, lambda: optuna.samplers.TPESampler(seed=0, multivariate=True)),
                "NSGA-II (2 objectives)": (2, lambda: optuna.samplers.NSGAIISampler(seed=0))}
    for n_obj in (1, 2):
        name = f"suggest_{n_obj}"
        optuna.create_study(storage=url, study_name=name, directions=["maximize"] * n_obj)
        have = 0
        for n in args.suggest_sizes:
            _add_trials(url, name, dists, n - have, n_obj, rng, optuna.trial.TrialState.COMPLETE)
            have = n
            for label, (k, make) in samplers.items():
                if k == n_obj:
                    rows.append({"sampler": label, "finished": n, "running": 0, **_ask_times(url, name, make, dists,
                                                                                             args.repeats)})
                    print(f"  {label}, {n:,} finished: ask {rows[-1]['ask_ms_median']:.0f} ms", flush=True)
        if n_obj == 1:  # then trials left running, as a search with many at once has them
            ran = 0
            for running in args.suggest_running:
                _add_trials(url, name, dists, running - ran, n_obj, rng, optuna.trial.TrialState.RUNNING)
                ran = running
                rows.append({"sampler": "TPE (1 objective)", "finished": have, "running": running,
                             **_ask_times(url, name, samplers["TPE (1 objective)"][1], dists, args.repeats)})
                print(f"  TPE, {have:,} finished, {running:,} running: ask {rows[-1]['ask_ms_median']:.0f} ms",
                      flush=True)
    return rows


def _add_trials(url: str, name: str, dists: dict, n: int, n_obj: int, rng: random.Random, state: Any) -> None:
    import optuna

    study = optuna.load_study(study_name=name, storage=url)
    done = state == optuna.trial.TrialState.COMPLETE
    study.add_trials([optuna.trial.create_trial(
        params={k: _draw(d, rng) for k, d in dists.items()}, distributions=dists, state=state,
        values=[rng.random() for _ in range(n_obj)] if done else None) for _ in range(n)])


def _draw(d: Any, rng: random.Random) -> Any:
    if hasattr(d, "choices"):
        return rng.choice(d.choices)
    if isinstance(d.low, int) and isinstance(d.high, int):
        return rng.randrange(d.low, d.high + 1, d.step or 1)
    return rng.uniform(d.low, d.high)


def _ask_times(url: str, name: str, make: Any, dists: dict, repeats: int) -> dict[str, float]:
    """Median and max of `repeats` asks by a driver that has the study open (its first ask, which fills Optuna's
    cache of finished trials, is timed apart); each asked trial is told FAIL so none stays running."""
    import optuna

    study = optuna.load_study(study_name=name, storage=url, sampler=make())
    times = []
    for _ in range(repeats + 1):
        t = time.perf_counter()
        trial = study.ask(fixed_distributions=dists)
        times.append(time.perf_counter() - t)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    return {"first_ask_ms": 1e3 * times[0], "ask_ms_median": 1e3 * statistics.median(times[1:]),
            "ask_ms_max": 1e3 * max(times[1:])}


# ------------------------------------------------------------------------------------------------------ report
def device() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start"


def _ms(row: dict, key: str, q: str = "p50_ms") -> str:
    t = row["timers"].get(key)
    return f"{t[q]:.1f}" if t else "–"


def print_tables(conc: list[dict], sug: list[dict]) -> None:
    if conc:
        print("\n| variant | db | at once | offered reports/s | sustained reports/s | trials ended/s | "
              "driver CPU ms / report | our code ms / report | lag p50 / p99 s | store write p50 / p95 / p99 ms | "
              "trial start / end, searcher ms | queueing s | first report s | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in conc:
            lag, w = r["lag"] or {"p50_ms": float("nan"), "p99_ms": float("nan")}, "store: every write"
            print(f"| {r['variant']} | {r['backend']} | {r['concurrent']:,} | {r['offered_per_s']:,.0f} | "
                  f"{r['steady_reports_per_s']:.0f}{' (capped)' if r['capped'] else ''} | "
                  f"{r['steady_trials_ended_per_s']:.1f} | {r['steady_driver_cpu_ms_per_report']:.1f} | "
                  f"{r['ours_ms_per_report']:.1f} | {lag['p50_ms'] / 1e3:.1f} / {lag['p99_ms'] / 1e3:.1f} | "
                  f"{_ms(r, w)} / {_ms(r, w, 'p95_ms')} / {_ms(r, w, 'p99_ms')} | "
                  f"{_ms(r, 'searcher.suggest')} / {_ms(r, 'searcher.on_trial_complete')} | {r['queue_s']:.0f} | "
                  f"{r.get('first_report_s', float('nan')):.0f} | {r['mem_after_mib']['VmHWM']:.0f} |")
    if sug:
        print("\n| sampler | finished | running | first ask ms | ask ms (median) | ask ms (max) |")
        print("|---|---|---|---|---|---|")
        for r in sug:
            print(f"| {r['sampler']} | {r['finished']:,} | {r['running']:,} | {r['first_ask_ms']:.0f} | "
                  f"{r['ask_ms_median']:.0f} | {r['ask_ms_max']:.0f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a few minutes: smaller runs, no 5,000, no 10,000")
    ap.add_argument("--only", choices=["concurrency", "suggest"])
    ap.add_argument("--backends", default="sqlite,postgresql")
    ap.add_argument("--concurrency", default=None, help="trials at once, e.g. 100,1000,5000")
    ap.add_argument("--before-at", default=None, help="also run `--before` at these concurrencies ('' for none)")
    ap.add_argument("--before", default=BEFORE, help="git revision of the 'before' nas/")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--epoch-s", type=float, default=1.0)
    ap.add_argument("--trials-per-slot", type=int, default=2)
    ap.add_argument("--max-wall", type=float, default=None, help="stop each run after this many seconds")
    ap.add_argument("--repeats", type=int, default=9, help="asks timed per row (the median is shown)")
    ap.add_argument("--out", type=Path, help="write every measurement here as JSON")
    a = ap.parse_args()
    q = a.quick
    a.backends = a.backends.split(",")
    a.concurrency = [int(x) for x in (a.concurrency or ("100,1000" if q else "100,1000,5000")).split(",") if x]
    a.before_at = [int(x) for x in (a.before_at if a.before_at is not None else "100").split(",") if x]
    a.max_wall = a.max_wall or (60 if q else 600)
    a.epochs = 3 if q and a.epochs == 5 else a.epochs
    a.suggest_sizes = [100, 1000] if q else [100, 1000, 5000, 10000]
    a.suggest_running = [100] if q else [100, 1000]
    print(f"device: {device()}", flush=True)
    conc, sug = [], []
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        if a.only in (None, "concurrency"):
            print("concurrency (simulated trials through the real driver):", flush=True)
            conc = concurrency(a, Path(tmp))
        if a.only in (None, "suggest"):
            print("Optuna's suggest time (SQLite):", flush=True)
            sug = suggest(a, Path(tmp))
    print_tables(conc, sug)
    save(a, conc, sug)


if __name__ == "__main__":
    main()
