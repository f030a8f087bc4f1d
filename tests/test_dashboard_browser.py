"""The dashboard in a real headless browser: Playwright driving Debian's /usr/bin/chromium (installed by .ci/run;
never a downloaded browser) against the app served on a free loopback port from the fixture database.

Every page must render its plots with traces and log no error in the console; nothing may be fetched from outside
the loopback server; every tab shows a loading indicator until its view is drawn, and a view with nothing to draw
says what is missing. Screenshots go to test-artifacts/dashboard/ (gitignored) for a human to look at.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from test_dashboard_fixture import GRID, SEARCH, XSS, Fixture, shared_study_db

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts" / "dashboard"
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"Debian's Chromium is not installed at "
                                f"{CHROMIUM} (.ci/run installs it with apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package (the dev extra) is missing")


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return shared_study_db(tmp_path_factory)


@pytest.fixture(scope="module")
def server(fx: Fixture) -> Iterator[str]:
    """The Dash app on 127.0.0.1:<free port> in a thread (port 0: the OS picks one)."""
    from werkzeug.serving import make_server

    from dashboard.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    srv = make_server("127.0.0.1", 0, create_app(fx.url, refresh_ms=1000).server, threaded=True)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_port}"
    srv.shutdown()
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)  # this run's screenshots only
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


class Watch:
    """Console errors, uncaught page errors, alerts and requests to anywhere but the server, per page."""

    def __init__(self, page: Any, base: str) -> None:
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        self.outside: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))

        def route(r: Any) -> None:
            if r.request.url.startswith(base) or r.request.url.startswith("data:"):
                r.continue_()
            else:
                self.outside.append(r.request.url)
                r.abort()
        page.route("**/*", route)

    def check(self) -> None:
        assert self.errors == [], self.errors
        assert self.dialogs == [], f"a user string ran as script: {self.dialogs}"
        assert self.outside == [], f"requests outside the loopback server: {self.outside}"


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    """One browser context for the module, so Dash's and Plotly's scripts are loaded from its cache after the
    first page."""
    ctx = browser.new_context(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: Any, server: str) -> Iterator[tuple[Any, Watch]]:
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    watch = Watch(pg, server)
    yield pg, watch
    pg.close()


def shot(pg: Any, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def traces(pg: Any, graph_id: str) -> int:
    """Traces Plotly drew in a dcc.Graph (waits until the figure has data)."""
    sel = f"#{graph_id} .js-plotly-plot"
    pg.wait_for_function(f"() => {{ const g = document.querySelector('{sel}'); return g && g.data && "
                         "g.data.length > 0 && g.querySelector('.main-svg'); }")
    return pg.evaluate(f"() => document.querySelector('{sel}').data.length")


TABS = {"Ablation": ("ablation", "ablation-graph"), "Learning curves": ("curves", "curves-graph"),
        "Search": ("search", "history-graph"), "Pareto front": ("pareto", "pareto-graph"),
        "Cost scaling": ("scaling", "scaling-graph"), "Trials": ("trials", "trials-table")}


def _draws(output: str) -> Any:
    """Matches the response of the callback that draws `output` (not one that declined with 204)."""
    def match(r: Any) -> bool:
        if "_dash-update-component" not in r.url or r.status != 200:
            return False
        return f"{output}." in json.loads(r.request.post_data or "{}").get("output", "")
    return match


def open_tab(pg: Any, label: str, *, wait: bool = True) -> None:
    """Click a study tab; with `wait`, return once its view's callback has answered and its spinner is gone (a
    click on a figure that is still being redrawn would be lost)."""
    tab = pg.locator("#study-tabs").get_by_text(label, exact=True)
    if not wait:
        tab.click()
        return
    name, output = TABS[label]
    with pg.expect_response(_draws(output)):
        tab.click()
    pg.wait_for_function(f"() => !document.querySelector('#loading-{name} .dash-spinner')")


def figure(pg: Any, graph_id: str) -> dict[str, Any]:
    """The figure Plotly holds for a dcc.Graph: its traces and layout."""
    return pg.evaluate(f"() => {{ const g = document.querySelector('#{graph_id} .js-plotly-plot'); "
                       "return {data: g.data, layout: g.layout}; }")


def test_studies_list_shows_every_study_and_markup_names_as_text(page: tuple[Any, Watch], server: str) -> None:
    pg, watch = page
    pg.goto(server + "/")
    pg.wait_for_selector("#studies-table table")
    rows = pg.locator("#studies-table tbody tr")
    assert rows.count() == 3
    text = pg.inner_text("#studies-table")
    assert GRID in text and SEARCH in text and "8" in text and "78.0%" in text
    link = pg.locator("#studies-table a", has_text="alert(1)")
    assert link.inner_text().replace("\n", "") == XSS  # the name shows as text
    assert pg.evaluate("() => [...document.scripts].every(s => !s.text.includes('alert('))")
    shot(pg, "01_studies_list")
    link.click()
    pg.wait_for_selector("#study-title")
    assert pg.inner_text("#study-title") == XSS
    assert "<img src=x onerror=alert(2)> & friends" in pg.inner_text(".page")
    watch.check()


VIEWS = [("Learning curves", ["curves-graph"]), ("Search", ["history-graph", "parallel-graph", "importance-graph"]),
         ("Pareto front", ["pareto-graph"]), ("Cost scaling", ["scaling-graph"])]


def test_tour_of_a_grid_study(page: tuple[Any, Watch], server: str, fx: Fixture, tmp_path: Path) -> None:
    """One page load, then in-app navigation as a user would: the ablation view, every other view, a click on a
    seed's point to its trial page, the model download, back to the study, and the failed trial from its table."""
    from blocks.model_file import read_model_file

    pg, watch = page
    pg.goto(f"{server}/study/{GRID}")
    # ablation: every seed a point, mean ± CI, the paper beside ours, paired differences
    assert traces(pg, "ablation-graph") >= 4  # seeds, mean ± CI, paper, Δ (+ paper Δ)
    seeds = pg.evaluate("() => document.querySelector('#ablation-graph .js-plotly-plot').data[0]")
    assert len(seeds["x"]) == 8
    table = pg.inner_text("#ablation-table")
    assert "(reference)" in table and "+5.33" in table and "2 (+1 failed)" in table and "76.1" in table
    assert "better" in table and "no difference detected" in table and "Holm" in table and "[+3.26, +7.40]" in table
    y = pg.evaluate("() => document.querySelector('#ablation-graph .js-plotly-plot').layout.yaxis.range")
    assert 0 <= y[0] < y[1] <= 100  # accuracy: the axis stays inside 0–100 %
    shot(pg, "02_ablation")
    # another reference level: the paired differences are taken against it
    pg.click("#reference")
    pg.get_by_role("option", name="middle", exact=True).click()  # the menu opens outside #reference
    pg.wait_for_function("() => document.querySelector('#ablation-table').innerText.includes('Δ vs middle')")
    row = pg.locator("#ablation-table tr", has_text="head").first.inner_text()
    assert "-5.33" in row and "-0.9" in row
    for i, (tab, graphs) in enumerate(VIEWS):
        open_tab(pg, tab)
        for g in graphs:
            assert traces(pg, g) >= 1, g
        if tab == "Cost scaling":  # a coloured line per level across the three resolutions, units on the axes
            assert "L = 6D = 192" in pg.inner_text("#scaling-graph")
            fig = figure(pg, "scaling-graph")
            levels = [t for t in fig["data"] if not t["name"].startswith("L = 6D")]
            assert [t["name"] for t in levels] == ["head", "middle", "tail"]
            assert fig["layout"]["legend"]["title"]["text"] == "readout:"
            assert all(len(t["x"]) == 3 and t["mode"] == "lines+markers" for t in levels)
            assert len({t["line"]["color"] for t in levels}) == 3
            assert fig["layout"]["yaxis"]["title"]["text"] == "throughput (images/s)"
            assert "tokens" in fig["layout"]["xaxis"]["title"]["text"]
        if tab == "Search":
            assert pg.locator("#parallel-graph .parcoords").count() == 1
        shot(pg, f"03{'abcd'[i]}_" + tab.lower().replace(" ", "_"))
    open_tab(pg, "Ablation")
    traces(pg, "ablation-graph")
    # click the point of middle, seed 1 (its trial number comes from the fixture)
    want = fx.grid_numbers[("middle", 1)]
    index = [c[0] for c in seeds["customdata"]].index(want)
    point = pg.locator("#ablation-graph .scatterlayer .trace").first.locator(".points path").nth(index)
    box = point.bounding_box()
    pg.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    pg.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    pg.wait_for_url(f"**/study/{GRID}/trial/{want}")
    pg.wait_for_selector("#trial-spec")
    assert '"readout": "middle"' in pg.inner_text("#trial-spec")
    body = pg.inner_text("#trial-body")
    assert "selective_scan_paths" in body and "reference" in body and "0.1.0" in body and "cpus" in body
    assert traces(pg, "trial-curves") == 3  # val_acc, train and val loss
    # units: the fixture measured middle at 1000 images/s, 1,160,000 FLOPs, 25,354 parameters, 3 s wall time
    for text in ("1,000 images/s", "0.00116 GFLOPs", "25,354", "3 s", "at 64 × 64 px", "285.7 images/s",
                 "– (measured on CUDA only)"):
        assert text in body, text
    shot(pg, "04_trial_page")
    with pg.expect_download() as dl:
        pg.click("#export-button")
    download = dl.value
    assert download.suggested_filename == f"{GRID}_trial{want}.safetensors"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert read_model_file(saved).spec.readout == "middle"
    # back to the study, and the failed trial from the trials table: its error, no export
    pg.click(f"text=← {GRID}")
    open_tab(pg, "Trials")
    number_cells = pg.locator('#trials-table .ag-cell[col-id="number"]')
    number_cells.first.wait_for()
    number_cells.get_by_text(str(fx.failed_number), exact=True).click()
    pg.wait_for_selector("#trial-error")
    assert "injected failure" in pg.inner_text("#trial-error")
    assert pg.is_disabled("#export-button")
    shot(pg, "05_failed_trial")
    watch.check()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Event]:
    """While cleared, every view's callback waits (at its data load) until the test sets it: the spinner's window,
    held open without timing anything."""
    from dashboard.app import DashboardApp

    event = threading.Event()
    event.set()
    data = DashboardApp.data

    def held(self: Any, name: str, version: str) -> Any:
        event.wait(timeout=60)
        return data(self, name, version)
    monkeypatch.setattr(DashboardApp, "data", held)
    yield event
    event.set()


def test_every_tab_shows_a_loading_indicator_until_its_view_is_drawn(page: tuple[Any, Watch], server: str,
                                                                     gate: threading.Event) -> None:
    pg, watch = page
    pg.goto(f"{server}/study/{GRID}")
    traces(pg, "ablation-graph")  # the first view comes with the page
    for label in ["Learning curves", "Search", "Pareto front", "Cost scaling", "Trials", "Ablation"]:
        name, output = TABS[label]
        gate.clear()
        with pg.expect_response(_draws(output)):
            open_tab(pg, label, wait=False)
            pg.wait_for_selector(f"#loading-{name} .dash-spinner", state="visible")
            if label == "Cost scaling":
                shot(pg, "08_cost_scaling_loading")
            if label in ("Learning curves", "Pareto front", "Cost scaling"):  # not drawn before: no bare axes
                assert figure(pg, output)["layout"]["meta"]["empty"] == "loading…"
            gate.set()
        pg.wait_for_function(f"() => !document.querySelector('#loading-{name} .dash-spinner')")
        if label == "Trials":
            pg.wait_for_function("() => document.querySelectorAll("
                                 "'#trials-table .ag-cell[col-id=\"number\"]').length === 9")  # the grid draws its rows
        else:
            assert traces(pg, output) >= 1
    watch.check()


def test_a_study_without_trials_says_what_is_missing_on_every_tab(page: tuple[Any, Watch], server: str) -> None:
    from dashboard.app import study_href

    pg, watch = page
    pg.goto(server + study_href(XSS))
    pg.wait_for_selector("#ablation-graph .js-plotly-plot")
    missing = {"ablation-graph": "no finished trial with val_acc yet", "curves-graph": "no epoch with val_acc",
               "history-graph": "no finished trial with val_acc in Optuna", "parallel-graph": "no finished trial",
               "importance-graph": "Optuna holds no study", "pareto-graph": "no finished trial has both",
               "scaling-graph": "no finished trials yet"}
    for label in ["Ablation", "Learning curves", "Search", "Pareto front", "Cost scaling", "Trials"]:
        if label != "Ablation":
            open_tab(pg, label)
        for graph, text in missing.items():
            if pg.locator(f"#{graph}").is_visible():
                assert figure(pg, graph)["layout"]["meta"]["empty"].startswith(text), graph
                assert text in pg.inner_text(f"#{graph}"), graph  # the message is on the page, not bare axes
        if label == "Cost scaling":
            shot(pg, "09_empty_cost_scaling")
    assert "No trials yet" in pg.inner_text("#trials-table")
    watch.check()


def test_search_study_opens_on_its_search_view(page: tuple[Any, Watch], server: str) -> None:
    pg, watch = page
    pg.goto(f"{server}/study/{SEARCH}")
    assert traces(pg, "history-graph") == 2
    assert traces(pg, "importance-graph") == 1
    bars = pg.evaluate("() => document.querySelector('#importance-graph .js-plotly-plot').data[0].y")
    assert sorted(bars) == ["dim", "mixer"]
    shot(pg, "06_search_study")
    open_tab(pg, "Cost scaling")  # a colour per search arm (its sampled parameters), each across three sizes
    fig = figure(pg, "scaling-graph")
    arms = [t for t in fig["data"] if not t["name"].startswith("L = 6D")]
    assert len(arms) == 6 and len({t["line"]["color"] for t in arms}) == 6 and all(len(t["x"]) == 3 for t in arms)
    assert "mixer=attention, dim=32" in [t["name"] for t in arms]
    assert fig["layout"]["legend"]["title"]["text"] == "mixer, dim:"
    shot(pg, "06b_search_cost_scaling")
    open_tab(pg, "Trials")
    pg.wait_for_function("() => document.querySelectorAll('#trials-table .ag-cell[col-id=\"number\"]').length === 6")
    watch.check()


def test_unknown_study_says_so(page: tuple[Any, Watch], server: str) -> None:
    pg, watch = page
    pg.goto(f"{server}/study/no_such_study")
    pg.wait_for_selector("text=Not found")
    assert GRID in pg.inner_text(".page")  # the message lists the studies that exist
    watch.check()


def test_live_refresh_shows_a_new_study_without_reload(page: tuple[Any, Watch], server: str, fx: Fixture) -> None:
    from nas.records import TrialStart
    from nas.store import Store

    pg, watch = page
    pg.goto(server + "/")
    pg.wait_for_selector("#studies-table table")
    writer = Store(fx.url)  # the driver's side: the dashboard keeps reading while it writes
    writer.upsert_study(name="arrives_later", question="live?", kind="grid", study_yaml="", config={},
                        search_space_yaml="", n_cells=4)
    writer.engine.dispose()
    pg.wait_for_selector("#studies-table >> text=arrives_later", timeout=10_000)
    # on a running study's page, a trial that starts shows up without a reload
    pg.click("#studies-table >> text=arrives_later")
    open_tab(pg, "Trials")
    pg.wait_for_selector("#trials-table")
    writer = Store(fx.url)
    writer.trial_started("arrives_later", None, TrialStart(number=0, optuna_trial_id=10_000, key="arrives_later/0",
                                                           levels={"readout": "head"}, params={}, spec_id="",
                                                           spec_json="", seed=0))
    writer.engine.dispose()
    pg.wait_for_selector("#trials-table >> text=running", timeout=10_000)
    watch.check()


def test_report_opens_offline_and_shows_its_figures(browser: Any, fx: Fixture, tmp_path: Path) -> None:
    """`nas report`'s file in a browser with the network off: every figure draws from the inlined plotly.js."""
    from dashboard.report import report_figures, write_report

    out = write_report(fx.url, GRID, tmp_path / "report.html")
    context = browser.new_context(viewport={"width": 1300, "height": 1000}, offline=True)
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    watch = Watch(pg, out.as_uri())
    pg.goto(out.as_uri())
    from dashboard import queries as Q

    store = Q.open_store(fx.url)
    expected = len(report_figures(store, fx.url, Q.load_study(store, GRID)))
    pg.wait_for_function(f"() => document.querySelectorAll('.js-plotly-plot .main-svg').length >= {expected}")
    counts = pg.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(g => g.data.length)")
    assert len(counts) == expected and all(n >= 1 for n in counts), counts
    assert pg.inner_text("h1") == GRID and "+5.33" in pg.inner_text("body")
    shot(pg, "07_report_offline")
    context.close()
    watch.check()
