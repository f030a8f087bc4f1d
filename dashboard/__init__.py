"""The study dashboard: `nas dashboard` (Dash, read-only, live) and `nas report` (one static HTML file).

Data flows one way: `queries` (read-only database access → plain rows) → `figures`, `figures_search`,
`figures_cost` (pure: rows → data → Plotly figure) → `views` (one study view = queries + figures, shared by the
app and the report) → `app` (Dash layout and callbacks) and `report`; `commands` adds both to the `nas` CLI.
"""
