"""What every `nas` command shares, the platform's own and the dashboard's (`dashboard.commands`): bad input printed as
one line with exit code 2, the default database URL, and a study named by its name or by its file. Both command
modules import this one; neither imports the other's internals."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

EXIT_BAD_INPUT = 2


def console() -> Console:
    """Standard output, 150 columns when it is not a terminal (tables stay readable in logs)."""
    return Console(width=None if sys.stdout.isatty() else 150)


def fail(message: str) -> NoReturn:
    """Print `error: message` on stderr, verbatim (no markup, no emoji), and exit with code 2."""
    from rich.markup import escape

    Console(stderr=True, width=None if sys.stderr.isatty() else 150, emoji=False).print(
        f"[red]error:[/red] {escape(message)}", markup=True, highlight=False)
    raise typer.Exit(EXIT_BAD_INPUT)


def db_url(db: str | None) -> str:
    """`--db`, or the default database (sqlite:///runs/nas.db)."""
    from .schema import DEFAULT_DB_URL

    return db or DEFAULT_DB_URL


def study_name(study: str) -> str:
    """A study's name from its name or its file (the file's `name:`, else its stem)."""
    p = Path(study)
    if p.suffix in (".yaml", ".yml") and p.is_file():
        from .config import load_yaml

        return str(load_yaml(p).get("name", p.stem))
    return study


__all__ = ["EXIT_BAD_INPUT", "console", "db_url", "fail", "study_name"]
