"""Dashboard speed on a large study: the studies list and the ablation view for a synthetic grid study of 2,000
trials (10 levels × 200 seeds), target under 2 s each.

    python benchmarks/bench_dashboard.py [--trials 2000] [--repeats 5] [--no-browser]

Server side, each stage is what one Dash callback does, timed cold (first call in the process) and warm (median of
`--repeats` further calls): read the database (read-only), compute the data (`nas.summary` statistics), build the
Plotly figure and the table, and serialize the response as Dash does (`plotly.io.json`). In the browser (Debian's
/usr/bin/chromium through Playwright, when present), the time from navigation to the drawn page (the studies table;
the ablation figure with all its points), first load and the median of three reloads with the scripts cached.
The database is written once through `nas.store.Store` into a temporary directory, one transaction per call as the
driver writes (nothing is trained; values are random but seeded; writing takes longer than everything timed).
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STUDY = "bench_cls_token"
SMALL = "bench_small"
TARGET_S = 2.0
CHROMIUM = "/usr/bin/chromium"


def build_db(root: Path, n_trials: int, n_levels: int = 10, name: str = STUDY) -> str:
    """A finished grid study of `n_trials` (levels × seeds) in root/bench.db, written as the driver writes."""
    from nas.records import TrialOutcome, TrialStart, TrialState
    from nas.store import Store

    url = f"sqlite:///{root / 'bench.db'}"
    store = Store(url)
    levels = [f"level_{i}" for i in range(n_levels)]
    seeds = list(range(n_trials // n_levels))
    config = {"name": name, "factors": {"readout": levels}, "reference": {"readout": levels[0]}, "seeds": seeds,
              "objectives": [{"metric": "val_acc"}], "data": {"name": "digits"},
              "paper": {"source": "synthetic", "metric": "top-1 (%)", "values": {lv: 70.0 + i for i, lv in
                                                                                 enumerate(levels)}}}
    store.upsert_study(name=name, question=f"synthetic: {n_trials} trials", kind="grid", study_yaml="", config=config,
                       search_space_yaml="", n_cells=n_trials)
    run = store.start_run(name, "bench")
    rng = random.Random(0)
    for i in range(n_trials):
        level, seed = levels[i % n_levels], seeds[i // n_levels]
        row = store.trial_started(name, run, TrialStart(number=i, optuna_trial_id=i, key=f"{name}/{level}/s{seed}",
                                                        levels={"readout": level}, params={}, spec_id=level,
                                                        spec_json="{}", seed=seed))
        acc = 0.6 + 0.01 * (i % n_levels) + rng.gauss(0, 0.02)
        store.trial_finished(row, TrialState.COMPLETE, TrialOutcome(
            val_acc=acc, num_params=25000, values={"val_acc": acc}, cost={"throughput": 1500.0, "flops": 1_000_000}))
    store.finish_run(run, "finished", 1.0)
    store.engine.dispose()
    return url


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(cold seconds, warm median seconds, last result)."""
    t = time.perf_counter()
    out = fn()
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        warm.append(time.perf_counter() - t)
    return cold, statistics.median(warm), out


def server_side(url: str, repeats: int) -> list[tuple[str, float, float]]:
    from plotly.io.json import to_json_plotly as to_json  # what Dash serializes a response with

    from dashboard import queries as Q
    from dashboard import views as V
    from dashboard.app import DashboardApp

    dash_app = DashboardApp(url)
    store = dash_app.store
    rows: list[tuple[str, float, float]] = []

    def studies() -> Any:
        return to_json(dash_app.studies_table().to_plotly_json())

    def load() -> Any:
        return Q.load_study(store, STUDY)

    data = load()

    def ablation() -> Any:
        view = V.ablation_view(data)
        return view, to_json([view.figure.to_plotly_json(), view.table])

    def ablation_total() -> Any:
        view = V.ablation_view(load())
        return to_json([view.figure.to_plotly_json(), view.table])

    for name, fn in (("studies list (query + table + JSON)", studies),
                     (f"ablation: read {len(data.trials):,} trials", load),
                     ("ablation: statistics + figure + table + JSON", ablation),
                     ("ablation view, total", ablation_total)):
        cold, warm, out = timed(fn, repeats)
        rows.append((name, cold, warm))
    view = ablation()[0]
    assert len(view.data.points) == len(data.trials), "every trial must be a point"
    return rows


def browser_side(url: str, n_trials: int) -> list[tuple[str, float, float]]:
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from dashboard.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = make_server("127.0.0.1", 0, create_app(url, refresh_ms=60_000).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}"
    rows = []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                  "--disable-background-networking",
                                                                  "--disable-component-update", "--no-first-run"])
            ctx = b.new_context(viewport={"width": 1300, "height": 1000})
            page = ctx.new_page()
            page.set_default_timeout(60_000)
            wait_abl = ("() => { const g = document.querySelector('#ablation-graph .js-plotly-plot'); return g && "
                        f"g.data && g.querySelectorAll('.scatterlayer .trace .points path').length >= {n_trials}; }}")
            for label, path, ready in (("studies list", "/", "#studies-table table"),
                                       ("ablation view of 10 trials (fixed cost of the page)", f"/study/{SMALL}",
                                        wait_abl.replace(f">= {n_trials}", ">= 10")),
                                       (f"ablation view ({n_trials:,} points drawn)", f"/study/{STUDY}", wait_abl)):
                times = []
                for _ in range(4):  # first: cold browser cache; then scripts cached (median of 3)
                    t = time.perf_counter()
                    page.goto(base + path)
                    if ready.startswith("()"):
                        page.wait_for_function(ready, polling=50)
                    else:
                        page.wait_for_selector(ready)
                    times.append(time.perf_counter() - t)
                rows.append((f"browser: {label}", times[0], statistics.median(times[1:])))
            b.close()
    finally:
        srv.shutdown()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true", help="server side only")
    ap.add_argument("--keep", type=Path, help="write the database into this folder and reuse it when it is there")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t = time.perf_counter()
        if args.keep and (root / "bench.db").exists():
            url = f"sqlite:///{root / 'bench.db'}"
        else:
            root.mkdir(parents=True, exist_ok=True)
            url = build_db(root, args.trials)
            build_db(root, 10, name=SMALL)  # the page's fixed cost, for comparison
            print(f"wrote a study of {args.trials} trials in {time.perf_counter() - t:.1f} s")
        rows = server_side(url, args.repeats)
        if not args.no_browser and os.path.exists(CHROMIUM):
            rows += browser_side(url, args.trials)
        elif not args.no_browser:
            print(f"(browser timings skipped: no {CHROMIUM})")
    print(f"\n{os.cpu_count()} CPUs; target: studies list and ablation view each under {TARGET_S:.0f} s\n")
    print("| stage | first call, s | warm, s | under target |")
    print("|---|---|---|---|")
    for name, cold, warm in rows:
        met = "(reference)" if "10 trials" in name else ("yes" if max(cold, warm) < TARGET_S else "no")
        print(f"| {name} | {cold:.3f} | {warm:.3f} | {met} |")


if __name__ == "__main__":
    main()
