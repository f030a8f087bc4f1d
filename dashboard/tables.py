"""The dashboard's tables: small ones as plain HTML, the Trials tab as one paged AG Grid (dash-ag-grid).

Why two kinds: a plain table of a few rows is cheapest as HTML, but Dash renders every cell of an HTML table as its
own component, and a browser took 10-16 s to draw 200 trial rows that way (benchmarks/RESULTS.md, "Scale"); a grid is
one component that draws only the page in view, and sorts and filters in the browser. (Dash's own DataTable does the
same but is deprecated in Dash 4 in favour of AG Grid.)
"""

from __future__ import annotations

from typing import Any, Callable

import dash_ag_grid as dag
from dash import dcc, html

TRIALS_TABLE_ID = "trials-datatable"
TRIALS_PAGE_ROWS = 50
MAX_TRIAL_ROWS = 5000  # rows sent to the browser (the latest attempts); `nas show` summarises every one
NUMERIC = {"number", "seed"}


def html_table(rows: list[dict[str, Any]], columns: list[tuple[str, str]],
               link: Callable[[dict[str, Any]], str] | None = None) -> html.Table:
    """rows of display strings → an HTML table; `link(row)` gives an href for the first column."""
    head = html.Thead(html.Tr([html.Th(title) for _, title in columns])) if any(t for _, t in columns) else None
    body = []
    for r in rows:
        cells = []
        for i, (key, _) in enumerate(columns):
            text = r.get(key, "")
            cells.append(html.Td(dcc.Link(text, href=link(r)) if i == 0 and link else text))
        body.append(html.Tr(cells))
    return html.Table([c for c in (head, html.Tbody(body)) if c is not None], className="grid")


def trials_grid(rows: list[dict[str, str]], columns: list[tuple[str, str]], total: int) -> list[Any]:
    """The Trials tab: the latest MAX_TRIAL_ROWS attempts (of `total`) in pages of TRIALS_PAGE_ROWS, newest first,
    sortable and filterable; a click on a trial number opens the trial (app.py's callback on `cellClicked`)."""
    shown = rows[-MAX_TRIAL_ROWS:]
    data = [{**r, **{k: int(r[k]) for k in NUMERIC if r.get(k, "").isdigit()}} for r in shown]
    note = [] if len(shown) == total else [html.P(
        f"The latest {len(shown):,} of {total:,} trial attempts; `nas show` summarises them all.", className="muted")]
    defs = [{"field": k, "headerName": title, "filter": "agNumberColumnFilter" if k in NUMERIC else "agTextColumnFilter"}
            for k, title in columns]
    for d in defs:
        if d["field"] == "number":
            d.update(sort="desc", pinned="left", width=90, cellStyle={"color": "#1f63b4", "cursor": "pointer",
                                                                    "textDecoration": "underline"})
        elif d["field"] == "error":
            d.update(tooltipField="error", flex=2, minWidth=200)
    grid = dag.AgGrid(
        id=TRIALS_TABLE_ID, rowData=data, columnDefs=defs,
        defaultColDef={"sortable": True, "resizable": True, "floatingFilter": True, "minWidth": 80},
        getRowId="params.data.number", columnSize="autoSize",
        dashGridOptions={"pagination": True, "paginationPageSize": TRIALS_PAGE_ROWS, "domLayout": "autoHeight",
                         "tooltipShowDelay": 0, "animateRows": False, "suppressCellFocus": True},
        style={"width": "100%"})
    return note + [html.P("Click a trial number to open it; filter in the row under the headers, click a header to "
                          "sort.", className="muted"), grid]


__all__ = ["MAX_TRIAL_ROWS", "TRIALS_PAGE_ROWS", "TRIALS_TABLE_ID", "html_table", "trials_grid"]
