"""Dashboard speed on a large study: the studies list and the ablation view for a synthetic grid study of 2,000
trials (10 levels × 200 seeds), target under 2 s each; or, with `--db URL --study NAME`, on a database built
beforehand (e.g. the 100,000 trials of `bench_large_study.py --trials 100000 --no-optuna --db PATH`).

    python benchmarks/bench_dashboard.py [--trials 2000] [--repeats 5] [--no-browser]
    python benchmarks/bench_dashboard.py --db sqlite:////tmp/big.db --study large_study [--repeats 3]

Server side, each stage is what one Dash callback does, timed cold (first call in the process) and warm (median of
`--repeats` further calls): read the database (read-only), compute the data (`nas.summary` statistics), build the
Plotly figure and the table, and serialize the response as Dash does (`plotly.io.json`): the studies list, the study
page as it opens (a study over `figures.AUTO_POINTS` seeds opens its ablation view on each level's density), the
ablation view with every seed as a point (WebGL above `figures.WEBGL_POINTS`) and the Trials tab (the latest
`dashboard.tables.MAX_TRIAL_ROWS` attempts, drawn a page at a time). In the browser (Debian's /usr/bin/chromium through Playwright, when present), the
time from navigation (or click) to the drawn view, first load and the median of three more with the scripts cached:
the studies table; the ablation view as it opens (every point drawn, or the density heatmap); the box "every seed as
a point" ticked until every point is in the WebGL trace; the Trials tab until its table is drawn.
Without `--db`, the database is written once through `nas.store.Store` into a temporary directory, one transaction
per call as the driver writes (nothing is trained; values are random but seeded; writing takes longer than
everything timed).
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
STAGE_TIMEOUT_S = 120  # a browser stage not drawn by then is recorded as "inf" (not drawn in time)


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


def server_side(url: str, study: str, repeats: int) -> list[tuple[str, float, float]]:
    from plotly.io.json import to_json_plotly as to_json  # what Dash serializes a response with

    from dashboard import figures as F
    from dashboard import queries as Q
    from dashboard import views as V
    from dashboard.app import DashboardApp
    from dashboard.tables import MAX_TRIAL_ROWS

    dash_app = DashboardApp(url)
    store = dash_app.store
    rows: list[tuple[str, float, float]] = []

    def studies() -> Any:
        return to_json(dash_app.studies_table().to_plotly_json())

    def load() -> Any:
        return Q.load_study(store, study)

    data = load()
    n = len(data.trials)
    opens = "every point" if n <= F.AUTO_POINTS else "density"

    def ablation(points: bool | None = None) -> Any:
        view = V.ablation_view(data, points=points)
        return view, to_json([view.figure.to_plotly_json(), view.table])

    def ablation_total() -> Any:
        view = V.ablation_view(load())
        return to_json([view.figure.to_plotly_json(), view.table])

    def page() -> Any:  # the study page as the router builds it, its first view drawn (no cached data)
        dash_app._load.cache_clear()
        return to_json(dash_app.study_page(study).to_plotly_json())

    def trials_tab() -> Any:
        return to_json(dash_app.trials_table(data))

    stages = [("studies list (query + table + JSON)", studies), (f"ablation: read {n:,} trials", load),
              (f"ablation as it opens ({opens}): statistics + figure + table + JSON", ablation),
              ("ablation view as it opens, total", ablation_total),
              ("study page as it opens (read + ablation view + layout + JSON)", page)]
    if n > F.AUTO_POINTS:
        stages.append((f"ablation, every point ({n:,}, WebGL): statistics + figure + table + JSON",
                       lambda: ablation(True)))
    stages.append((f"Trials tab (latest {min(n, MAX_TRIAL_ROWS):,} of {n:,} rows) + JSON", trials_tab))
    for name, fn in stages:
        cold, warm, out = timed(fn, repeats)
        rows.append((name, cold, warm))
        print(f"  {name}: {cold:.3f} s, then {warm:.3f} s", flush=True)
    kinds = {t.type for t in ablation()[0].figure.data}
    if n <= F.AUTO_POINTS:
        assert len(ablation()[0].data.points) == n, "every trial must be a point"
    else:
        assert "heatmap" in kinds and "scattergl" not in kinds, kinds
        assert any(t.type == "scattergl" and len(t.x) == n for t in ablation(True)[0].figure.data), "no WebGL points"
    return rows


PLOT = "document.querySelector('#ablation-graph .js-plotly-plot')"
PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))"  # the next frame is drawn


def svg_points(n: int) -> str:
    return (f"() => {{ const g = {PLOT}; return g && g.data && "
            f"g.querySelectorAll('.scatterlayer .trace .points path').length >= {n}; }}")


def heatmap() -> str:
    return f"() => {{ const g = {PLOT}; return g && g.data && !!g.querySelector('.heatmaplayer image'); }}"


def webgl_points(n: int) -> str:
    return (f"() => {{ const g = {PLOT}; return g && g._fullData && g._fullData.some(t => t.type === 'scattergl' && "
            f"t.x && t.x.length >= {n}) && !!g.querySelector('canvas.gl-canvas-context'); }}")


def browser_side(url: str, study: str, n_trials: int, small: bool) -> list[tuple[str, float, float]]:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from dashboard import figures as F
    from dashboard.app import create_app, study_href
    from dashboard.tables import MAX_TRIAL_ROWS, TRIALS_PAGE_ROWS

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = make_server("127.0.0.1", 0, create_app(url, refresh_ms=600_000).server, threaded=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{srv.server_port}"
    rows = []
    large = n_trials > F.AUTO_POINTS
    opens = heatmap() if large else svg_points(n_trials)
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                  "--disable-background-networking",
                                                                  "--disable-component-update", "--no-first-run"])
            ctx = b.new_context(viewport={"width": 1300, "height": 1000})
            page = ctx.new_page()
            page.set_default_timeout(180_000)

            def ready(cond: str) -> None:
                if cond.startswith("()"):
                    page.wait_for_function(cond, polling=50)
                else:
                    page.wait_for_selector(cond)
                page.evaluate(PAINTED)

            def goto(path: str, cond: str) -> None:
                page.goto(base + path)
                ready(cond)

            def click(selector: str, cond: str) -> None:
                page.click(selector)
                ready(cond)

            href = study_href(study)
            stages: list[tuple[str, Callable[[], None], Callable[[], None]]] = [
                ("studies list", lambda: None, lambda: goto("/", "#studies-table table"))]
            if small:
                stages.append(("ablation view of 10 trials (fixed cost of the page)", lambda: None,
                               lambda: goto(study_href(SMALL), svg_points(10))))
            stages.append((f"ablation view as it opens ({'density heatmap' if large else 'every point drawn'}, "
                           f"{n_trials:,} trials)", lambda: None, lambda: goto(href, opens)))
            if large:
                stages.append((f"tick 'every seed as a point': {n_trials:,} points in WebGL",
                               lambda: goto(href, opens), lambda: click("#ablation-points input", webgl_points(n_trials))))
            first_page = min(n_trials, TRIALS_PAGE_ROWS)
            stages.append((f"Trials tab opened: first page ({first_page} rows) of a table of "
                           f"{min(n_trials, MAX_TRIAL_ROWS):,}", lambda: goto(href, opens),
                           lambda: click('#study-tabs >> text="Trials"',
                                         "() => document.querySelectorAll('#trials-table .ag-cell[col-id=\"number\"]')"
                                         f".length >= {first_page}")))
            for label, before, action in stages:
                times = []
                for _ in range(4):  # first: cold browser cache; then scripts cached (median of 3)
                    t = time.perf_counter()
                    try:
                        before()
                        page.set_default_timeout(STAGE_TIMEOUT_S * 1e3)
                        t = time.perf_counter()
                        action()
                    except PlaywrightTimeout:  # recorded as not drawn in time; the page is reloaded by the next stage
                        times.append(float("inf"))
                        break
                    finally:
                        page.set_default_timeout(180_000)
                    times.append(time.perf_counter() - t)
                warm = statistics.median(times[1:]) if len(times) > 1 else float("inf")
                rows.append((f"browser: {label}", times[0], warm))
                print(f"  {rows[-1][0]}: {times[0]:.2f} s, then {warm:.2f} s", flush=True)
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
    ap.add_argument("--db", help="time this database (SQLAlchemy URL) instead of building one; needs --study")
    ap.add_argument("--study", help="the study of --db to time")
    args = ap.parse_args()
    if bool(args.db) != bool(args.study):
        ap.error("--db and --study go together")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        t = time.perf_counter()
        study, small = args.study or STUDY, not args.db
        if args.db:
            url = args.db
        elif args.keep and (root / "bench.db").exists():
            url = f"sqlite:///{root / 'bench.db'}"
        else:
            root.mkdir(parents=True, exist_ok=True)
            url = build_db(root, args.trials)
            build_db(root, 10, name=SMALL)  # the page's fixed cost, for comparison
            print(f"wrote a study of {args.trials} trials in {time.perf_counter() - t:.1f} s")
        load = os.getloadavg()[0]
        rows = server_side(url, study, args.repeats)
        if not args.no_browser and os.path.exists(CHROMIUM):
            from dashboard import queries as Q

            rows += browser_side(url, study, len(Q.load_study(Q.open_store(url), study).trials), small)
        elif not args.no_browser:
            print(f"(browser timings skipped: no {CHROMIUM})")
    print(f"\n{study}; {os.cpu_count()} CPUs, load average {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
          f"end; target: studies list and ablation view each under {TARGET_S:.0f} s\n")
    print("| stage | first call, s | warm, s | under target |")
    print("|---|---|---|---|")
    for name, cold, warm in rows:
        met = "(reference)" if "10 trials" in name else ("yes" if max(cold, warm) < TARGET_S else "no")
        print(f"| {name} | {cold:.3f} | {warm:.3f} | {met} |")


if __name__ == "__main__":
    main()
