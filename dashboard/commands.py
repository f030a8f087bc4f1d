"""`nas dashboard` and `nas report`, registered on the `nas` CLI by `nas.cli` when this package is installed.

    nas dashboard --db sqlite:///runs/nas.db           # http://127.0.0.1:8050, read-only
    nas report cls_token_position -o report.html        # one self-contained HTML file, opens offline

Bad input (no database, an unknown study) prints one message and exits with code 2.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from nas.console import db_url, fail, study_name

DEFAULT_PORT = 8050


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(
    db: Optional[str] = typer.Option(None, "--db", help="database URL (default sqlite:///runs/nas.db)"),
    port: int = typer.Option(DEFAULT_PORT, "--port", min=1, max=65535, help="port to serve on"),
    host: str = typer.Option("127.0.0.1", "--host", help="address to bind (loopback by default; the dashboard has "
                                                          "no login)"),
) -> None:
    """Browse studies in the browser: ablations with seeds and intervals, curves, search, Pareto front, cost
    scaling, trial pages with a model download. Reads the database only; refreshes while a study runs."""
    from nas.errors import StoreError

    create_app = _from_extra("dashboard", "dashboard.app", "create_app")
    url = db_url(db)
    try:
        app = create_app(url)
    except StoreError as e:
        fail(str(e))
    console = Console(stderr=True)
    if not is_loopback(host):
        console.print(f"[yellow]warning:[/yellow] serving on {host}: anyone who can reach this address can read "
                      "every study and download its model files (there is no login). Use --host 127.0.0.1 and an "
                      "SSH tunnel unless this network is trusted.", highlight=False)
    console.print(f"dashboard for {url} on http://{host}:{port}/ (Ctrl+C stops it)", highlight=False)
    app.run(host=host, port=port, debug=False)


def report(
    study: str = typer.Argument(..., help="study name (or its file)"),
    out: Path = typer.Option(..., "-o", "--out", help="HTML file to write"),
    db: Optional[str] = typer.Option(None, "--db", help="database URL (default sqlite:///runs/nas.db)"),
) -> None:
    """Write one self-contained HTML file (plotly.js inlined, no network needed) with the study's figures."""
    from nas.errors import NasError

    write_report = _from_extra("report", "dashboard.report", "write_report")
    try:
        study = study_name(study)
        path = write_report(db_url(db), study, out)
    except NasError as e:  # no database, unknown study, unreadable study file
        fail(str(e))
    except OSError as e:
        fail(f"cannot write {out}: {e}")
    Console().print(f"report for {study} → {path} ({path.stat().st_size / 2**20:.1f} MiB)", highlight=False)


def _from_extra(command: str, module: str, name: str) -> Any:
    """`module.name`, or exit 2 saying which extra to install (the core install has no Dash or Plotly)."""
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] not in ("dash", "plotly"):
            raise
        fail(f"`nas {command}` needs the dashboard extra ({e.name} is not installed): pip install -e '.[dashboard]'")


def register(app: typer.Typer) -> None:
    """Add `nas dashboard` and `nas report` to the `nas` CLI."""
    app.command(name="dashboard")(dashboard)
    app.command(name="report")(report)


__all__ = ["dashboard", "is_loopback", "register", "report"]
