"""The Dash app behind `nas dashboard`: layout and callbacks only (numbers come from `views`, which composes the
read-only `queries` with the pure `figures`).

Pages (client-side routing on the URL path; study names are URL-quoted):
    /                               studies list
    /study/NAME                     tabs: ablation, learning curves, search, Pareto, cost scaling, trials
    /study/NAME/trial/N             trial page: spec, curves, costs, kernel paths, hardware, error, model download

Live: each page has its own `dcc.Interval`; a study's figures are rebuilt when its trials change (and on every tick
while it runs, so running curves grow). User strings reach the page as component text, never as markup.

Loading: every view sits in a `dcc.Loading` that shows a spinner while its callback runs (after a short delay, so a
quick live refresh does not flicker; the previous figure stays visible, dimmed), and a view not drawn yet holds a
"loading…" figure, never bare axes; a view with nothing to draw says what is missing (`figures.empty_figure`).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any
from urllib.parse import quote, unquote

from dash import Dash, Input, Output, State, ctx, dcc, html, no_update
from dash.exceptions import PreventUpdate

from nas.errors import StoreError

from . import figures as F
from . import figures_cost as FC
from . import queries as Q
from . import tables as T
from . import views as V
from .tables import html_table

REFRESH_MS = 5000
LOADING_DELAY_MS = 250  # a callback quicker than this shows no spinner
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #222; background: #fafafa; }
.page { max-width: 1280px; margin: 0 auto; padding: 16px 24px 48px; }
h1 { font-size: 1.5rem; margin: 8px 0 4px; word-break: break-all; }
.muted { color: #666; }
table.grid { border-collapse: collapse; margin: 8px 0 16px; background: #fff; }
table.grid th, table.grid td { border: 1px solid #ddd; padding: 4px 10px; text-align: left; font-size: 0.9rem; }
table.grid th { background: #f0f0f0; }
pre { background: #fff; border: 1px solid #ddd; padding: 8px; overflow: auto; max-height: 480px; }
pre.error { border-color: #d62728; color: #a00; white-space: pre-wrap; }
.controls { display: flex; gap: 24px; align-items: center; margin: 8px 0; flex-wrap: wrap; }
.controls label { font-size: 0.9rem; color: #444; }
.dd { width: 240px; display: inline-block; vertical-align: middle; }
button.export { padding: 8px 16px; font-size: 1rem; cursor: pointer; }
.status-running { color: #1f77b4; font-weight: bold; }
.status-failed, .status-interrupted { color: #d62728; }
"""
INDEX = f"""<!DOCTYPE html>
<html lang="en"><head>{{%metas%}}<title>{{%title%}}</title>{{%favicon%}}{{%css%}}<style>{_CSS}</style></head>
<body>{{%app_entry%}}<footer>{{%config%}}{{%scripts%}}{{%renderer%}}</footer></body></html>"""


def study_href(name: str, number: int | None = None) -> str:
    base = f"/study/{quote(name, safe='')}"
    return base if number is None else f"{base}/trial/{number}"


def parse_path(path: str | None) -> tuple[str, str | None, int | None]:
    """('list'|'study'|'trial'|'missing', study name, trial number) from a URL path."""
    path = (path or "/").rstrip("/") or "/"
    if path == "/":
        return "list", None, None
    m = re.fullmatch(r"/study/([^/]+)(?:/trial/(\d+))?", path)
    if not m:
        return "missing", None, None
    name = unquote(m.group(1))
    return ("trial", name, int(m.group(2))) if m.group(2) else ("study", name, None)


def loading(children: Any, name: str, **kw: Any) -> dcc.Loading:
    """`children` under a spinner (its element id `loading-NAME`) while a callback that writes to them runs."""
    opts: dict[str, Any] = dict(type="circle", color="#1f77b4", delay_show=LOADING_DELAY_MS, show_initially=False,
                                overlay_style={"visibility": "visible", "opacity": 0.6})
    return dcc.Loading(children, id=f"loading-{name}", parent_className="loading", **{**opts, **kw})


def pending() -> F.go.Figure:
    """What a view holds until its first figure arrives (the text below the spinner's place, the middle)."""
    fig = F.empty_figure("loading…", height=200)
    fig.update_annotations(y=0.1)
    fig.update_layout(margin=dict(t=20, b=20, l=20, r=20))
    return fig


class DashboardApp:
    """One database, read-only; `self.app` is the Dash app (its Flask server is `self.app.server`)."""

    def __init__(self, db_url: str, *, refresh_ms: int = REFRESH_MS) -> None:
        self.url, self.refresh_ms = db_url, refresh_ms
        self.store = Q.open_store(db_url)
        self._load = lru_cache(maxsize=16)(self._load_uncached)
        app = Dash(__name__, title="visionseq-nas studies", update_title=None, suppress_callback_exceptions=True,
                   serve_locally=True)
        app.index_string = INDEX
        app.layout = html.Div([dcc.Location(id="url"),  # a whole-page spinner only while a page is routed
                               loading(html.Div(id="page", className="page"), "page", fullscreen=True,
                                       show_initially=True,
                                       target_components={"page": "children"}, overlay_style=None),
                               dcc.Download(id="download")])
        self.app = app
        self._callbacks()
        _warm_up()

    def _load_uncached(self, name: str, version: str) -> Q.StudyData:
        return Q.load_study(self.store, name)

    def data(self, name: str, version: str) -> Q.StudyData:
        return self._load(name, version)

    # ---- pages -----------------------------------------------------------------------------------------------
    def studies_page(self) -> html.Div:
        return html.Div([
            html.H1("Studies"), html.P(["database: ", html.Code(Q.display_url(self.url))], className="muted"),
            dcc.Interval(id="list-refresh", interval=self.refresh_ms),
            loading(html.Div(self.studies_table(), id="studies-table"), "studies")])

    def studies_table(self) -> Any:
        rows = F.studies_table(Q.study_list(self.store))
        if not rows:
            return html.P("No studies yet: run one with `nas run studies/NAME.yaml --db URL`.")
        cols = [("name", "study"), ("question", "question"), ("kind", "kind"), ("status", "status"),
                ("done", "done"), ("running", "running"), ("failed", "failed"), ("cells", "trials planned"),
                ("best", "best val_acc"), ("updated", "last update")]
        return html_table(rows, cols, link=lambda r: study_href(r["name"]))

    def version(self, name: str, n: int | None) -> tuple[str | None, dict[str, Any] | None]:
        """The study's data version (changes when its trials do, and on every tick while it runs) and its row."""
        row = next((r for r in Q.study_list(self.store) if r["name"] == name), None)
        if row is None:
            return None, None
        return Q.fingerprint(self.store, name) + (f"#{n}" if row["status"] == "running" else ""), row

    def study_page(self, name: str) -> html.Div:
        """The page with its first view already drawn (one round trip: the other tabs draw when opened)."""
        version, _ = self.version(name, None)
        if version is None:
            Q.load_study(self.store, name)  # StoreError naming the studies there → the router's message
        data = self.data(name, version)  # the tabs' callbacks find it cached
        levels = F.ablation_levels(data.config, data.trials) if data.is_grid else []
        metrics = [{"label": m, "value": m} for m in data.metrics]
        tab = "ablation" if data.is_grid else "search"
        points = len(data.trials) <= F.AUTO_POINTS  # a large study opens on each level's density of seeds
        abl_fig, abl_table, ref = self.ablation_outputs(data, data.metrics[0], None, points) if data.is_grid else \
            (pending(), "", None)
        search = V.search_views(self.url, data) if not data.is_grid else (pending(), pending(), pending())
        return html.Div([
            dcc.Link("← all studies", href="/"),
            html.H1(name, id="study-title"), html.P(data.info.question or "", className="muted"),
            html.Div(id="study-status"),
            dcc.Store(id="study-name", data=name), dcc.Store(id="study-version", data=version),
            dcc.Interval(id="study-refresh", interval=self.refresh_ms),
            html.Div(className="controls", children=[
                html.Label(["metric ", dcc.Dropdown(metrics, data.metrics[0], id="metric", clearable=False,
                                                    className="dd")]),
                html.Label(["reference level ", dcc.Dropdown([{"label": lv, "value": lv} for lv in levels], ref,
                                                             id="reference", clearable=False, className="dd")],
                           style=None if levels else {"display": "none"}),  # a search has no levels
                html.Label(["cost ", dcc.Dropdown([{"label": v[0], "value": k} for k, v in FC.COSTS.items()],
                                                  "params", id="cost", clearable=False, className="dd")])]),
            dcc.Tabs(id="study-tabs", value=tab, children=[
                dcc.Tab(label="Ablation", value="ablation", children=loading([
                    dcc.Graph(id="ablation-graph", figure=abl_fig),
                    html.Div(className="controls", children=[
                        dcc.Checklist([{"label": " every seed as a point", "value": "points"}],
                                      ["points"] if points else [], id="ablation-points"),
                        html.Span("Click a seed's point to open its trial." + (
                            "" if points else f" Over {F.AUTO_POINTS:,} seeds the view opens on each level's "
                                              "density: tick the box to draw every seed."), className="muted")]),
                    html.Div(abl_table, id="ablation-table")], "ablation")),
                dcc.Tab(label="Learning curves", value="curves",
                        children=loading(dcc.Graph(id="curves-graph", figure=pending()), "curves")),
                dcc.Tab(label="Search", value="search", children=loading([
                    dcc.Graph(id="history-graph", figure=search[0]), dcc.Graph(id="parallel-graph", figure=search[1]),
                    dcc.Graph(id="importance-graph", figure=search[2])], "search")),
                dcc.Tab(label="Pareto front", value="pareto",
                        children=loading(dcc.Graph(id="pareto-graph", figure=pending()), "pareto")),
                dcc.Tab(label="Cost scaling", value="scaling",
                        children=loading(dcc.Graph(id="scaling-graph", figure=pending()), "scaling")),
                dcc.Tab(label="Trials", value="trials", children=loading(
                    html.Div(html.P("loading…", className="muted"), id="trials-table"), "trials")),
            ])])

    @staticmethod
    def ablation_outputs(data: Q.StudyData, metric: str, reference: str | None,
                         points: bool | None = None) -> tuple[Any, Any, str | None]:
        """The ablation figure (every seed as a point, or each level's density: `V.ablation_view`), its table, and
        the reference level it used."""
        view = V.ablation_view(data, metric, reference, points)
        if view is None:
            return F.empty_figure("a search study has no factors to ablate: its views are the Search, Pareto front "
                                  "and Cost scaling tabs"), "", None
        paper = (f" Paper: {view.data.paper_source} ({view.data.paper_metric}); compare the ordering and the gaps, "
                 "not the values." if view.data.paper_source else "")
        note = html.P(view.data.note + paper, className="muted")
        return view.figure, [html_table(view.table, view.data.columns), note], view.data.reference

    def trials_table(self, data: Q.StudyData) -> Any:
        if not data.trials:
            return html.P("No trials yet: they appear here as the study's driver starts them.", className="muted")
        cols = [c for c in V.TRIAL_COLUMNS if c[0] != "spec"]
        return T.trials_grid(V.trial_rows(Q.StudyData(data.name, data.info, data.trials[-T.MAX_TRIAL_ROWS:])),
                                  cols, total=len(data.trials))

    def trial_page(self, name: str, number: int) -> html.Div:
        data = Q.load_study(self.store, name)
        page = V.trial_page(self.store, data, number)
        return html.Div([
            dcc.Link(f"← {name}", href=study_href(name)),
            html.H1([f"trial {number} of ", html.Span(name)]),
            dcc.Store(id="trial-key", data={"name": name, "number": number}),
            dcc.Interval(id="trial-refresh", interval=self.refresh_ms),
            html.Button("Download model file (.safetensors)", id="export-button", className="export",
                        disabled=page.export_path is None,
                        title="the trial's weights with its ArchSpec in the header (no pickle)"),
            html.Span("" if page.export_path else " no model file for this trial", className="muted"),
            loading(html.Div(self.trial_body(page), id="trial-body"), "trial")])

    @staticmethod
    def trial_body(p: V.TrialPage) -> list[Any]:
        summary = [("state", p.state), ("levels", ", ".join(f"{k}={v}" for k, v in p.levels.items()) or "–"),
                   ("seed", str(p.seed)), ("val_acc", p.val_acc), ("code version", p.code_version),
                   ("node", p.node), ("device", p.device), ("model file", p.export_path or "–")]
        pairs = lambda rows: html_table([{"k": k, "v": v} for k, v in rows], [("k", ""), ("v", "")])  # noqa: E731
        out: list[Any] = [pairs(summary)]
        if p.error:
            out += [html.H3("Error"), html.Pre(p.error, className="error", id="trial-error")]
        out += [dcc.Graph(id="trial-curves", figure=p.curves),
                html.H3("Cost (inference, measured after training)"), pairs(p.costs),
                html.H3("Kernel paths"), pairs(p.kernel_paths or [("–", "")]),
                html.H3("Hardware"), pairs(p.hardware or [("–", "")]),
                html.H3("Spec"), html.Pre(p.spec_json, id="trial-spec")]
        return out

    def route(self, path: str | None) -> Any:
        kind, name, number = parse_path(path)
        try:
            if kind == "list":
                return self.studies_page()
            if kind == "study":
                return self.study_page(name)
            if kind == "trial":
                return self.trial_page(name, number)
        except StoreError as e:
            return html.Div([dcc.Link("← all studies", href="/"), html.H1("Not found"), html.P(str(e))])
        return html.Div([dcc.Link("← all studies", href="/"), html.H1("Not found"), html.P(f"no page at {path}")])

    # ---- callbacks -------------------------------------------------------------------------------------------
    def _callbacks(self) -> None:
        app = self.app
        app.callback(Output("page", "children"), Input("url", "pathname"))(self.route)

        @app.callback(Output("studies-table", "children"), Input("list-refresh", "n_intervals"),
                      prevent_initial_call=True)
        def _list(_n: int) -> Any:
            return self.studies_table()

        @app.callback(Output("study-version", "data"), Output("study-status", "children"),
                      Input("study-refresh", "n_intervals"), State("study-name", "data"),
                      State("study-version", "data"))
        def _version(n: int | None, name: str, old: str | None) -> Any:
            version, status = self.version(name, n)
            if status is None:
                return no_update, "this study is no longer in the database"
            line = html.P([html.Span(status["status"], className=f"status-{status['status']}"),
                           f" · {status['kind']} · {status['done']} done, {status['running']} running, "
                           f"{status['failed']} failed of {status['cells']} · updated "
                           f"{Q.as_text(status['updated_at'])}"])
            return (no_update if version == old else version), line

        def tab_guard(tab: str, want: str) -> None:
            if tab != want:  # a hidden tab's figure is built when it is opened
                raise PreventUpdate

        @app.callback(Output("ablation-graph", "figure"), Output("ablation-table", "children"),
                      Input("study-version", "data"), Input("metric", "value"), Input("reference", "value"),
                      Input("ablation-points", "value"), Input("study-tabs", "value"), State("study-name", "data"),
                      prevent_initial_call=True)
        def _ablation(version: str, metric: str, reference: str, points: list[str], tab: str, name: str) -> Any:
            tab_guard(tab, "ablation")
            return self.ablation_outputs(self.data(name, version), metric, reference, "points" in (points or []))[:2]

        @app.callback(Output("curves-graph", "figure"), Input("study-version", "data"), Input("metric", "value"),
                      Input("study-tabs", "value"), State("study-name", "data"), prevent_initial_call=True)
        def _curves(version: str, metric: str, tab: str, name: str) -> Any:
            tab_guard(tab, "curves")
            m = metric if metric in ("val_acc", "val_loss") else "val_acc"
            return V.curves_view(self.store, self.data(name, version), m)

        @app.callback(Output("history-graph", "figure"), Output("parallel-graph", "figure"),
                      Output("importance-graph", "figure"), Input("study-version", "data"),
                      Input("study-tabs", "value"), State("study-name", "data"), prevent_initial_call=True)
        def _search(version: str, tab: str, name: str) -> Any:
            tab_guard(tab, "search")
            return V.search_views(self.url, self.data(name, version))

        @app.callback(Output("pareto-graph", "figure"), Input("study-version", "data"), Input("cost", "value"),
                      Input("metric", "value"), Input("study-tabs", "value"), State("study-name", "data"),
                      prevent_initial_call=True)
        def _pareto(version: str, cost: str, metric: str, tab: str, name: str) -> Any:
            tab_guard(tab, "pareto")
            m = metric if metric in ("val_acc", "val_loss") else "val_acc"
            return V.pareto_view(self.data(name, version), cost, m)

        @app.callback(Output("scaling-graph", "figure"), Input("study-version", "data"),
                      Input("study-tabs", "value"), State("study-name", "data"), prevent_initial_call=True)
        def _scaling(version: str, tab: str, name: str) -> Any:
            tab_guard(tab, "scaling")
            return V.scaling_view(self.data(name, version))

        @app.callback(Output("trials-table", "children"), Input("study-version", "data"),
                      Input("study-tabs", "value"), State("study-name", "data"), prevent_initial_call=True)
        def _trials(version: str, tab: str, name: str) -> Any:
            tab_guard(tab, "trials")
            return self.trials_table(self.data(name, version))

        @app.callback(Output("url", "pathname"), Input("ablation-graph", "clickData"),
                      Input("pareto-graph", "clickData"), State("study-name", "data"), prevent_initial_call=True)
        def _open_trial(abl: Any, par: Any, name: str) -> Any:
            click = abl if ctx.triggered_id == "ablation-graph" else par
            try:
                number = int(click["points"][0]["customdata"][0])
            except (TypeError, KeyError, IndexError, ValueError):
                return no_update
            return study_href(name, number)

        @app.callback(Output("url", "pathname", allow_duplicate=True), Input(T.TRIALS_TABLE_ID, "cellClicked"),
                      State("study-name", "data"), prevent_initial_call=True)
        def _open_trial_from_table(cell: dict[str, Any] | None, name: str) -> Any:
            if not cell or cell.get("colId") != "number" or cell.get("rowId") is None:
                return no_update
            return study_href(name, int(cell["rowId"]))

        @app.callback(Output("trial-body", "children"), Input("trial-refresh", "n_intervals"),
                      State("trial-key", "data"), prevent_initial_call=True)
        def _trial_live(_n: int, key: dict[str, Any]) -> Any:
            try:
                data = Q.load_study(self.store, key["name"])
                if Q.find_trial(data, key["number"]).state != "running":
                    return no_update
                return self.trial_body(V.trial_page(self.store, data, key["number"]))
            except StoreError:
                return no_update

        @app.callback(Output("download", "data"), Input("export-button", "n_clicks"), State("trial-key", "data"),
                      prevent_initial_call=True)
        def _export(_clicks: int, key: dict[str, Any]) -> Any:
            try:
                trial = Q.find_trial(Q.load_study(self.store, key["name"]), key["number"])
            except StoreError:
                return no_update
            path = Q.model_file(self.store, trial)
            if path is None:
                return no_update
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", key["name"])
            return dcc.send_file(str(path), filename=f"{safe}_trial{trial.number}.safetensors")


def _warm_up() -> None:
    """Build one small figure at start-up: Plotly loads its validators on first use (about a second), which would
    otherwise land on the first page a user opens."""
    from nas.stats import t_pvalue

    row = {"level": "a", "n": 2, "n_failed": 0, "mean": 1.0, "ci_low": 0.5, "ci_high": 1.5, "diff": None,
           "diff_low": None, "diff_high": None, "diff_adj_low": None, "diff_adj_high": None, "verdict": "",
           "n_pairs": 0, "opposite_to_paper": False, "paper": 1.0, "paper_diff": None, "is_reference": True}
    data = F.AblationData("f", "val_acc", " (%)", "a", ["a"], [{"level": "a", "seed": 0, "value": 1.0, "number": 0}],
                          [row])
    F.ablation_figure(data).to_plotly_json()
    t_pvalue(1.0, 2)  # scipy.stats, imported on first use


def create_app(db_url: str, *, refresh_ms: int = REFRESH_MS) -> Dash:
    """The dashboard for the database at `db_url` (read-only; raises StoreError when it cannot be opened)."""
    return DashboardApp(db_url, refresh_ms=refresh_ms).app


__all__ = ["DashboardApp", "create_app", "parse_path", "study_href"]
