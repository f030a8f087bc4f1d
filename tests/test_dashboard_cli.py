"""`nas dashboard`: serves on loopback by default, warns on any other address, exits 2 on a missing database.
The server itself is replaced by a recorder here (the browser tests serve the app for real)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("dash", reason="the dashboard's packages are not installed (e.g. the GPU machine's device bundle)")
from typer.testing import CliRunner

from dashboard.commands import is_loopback
from nas.cli import app
from test_dashboard_fixture import Fixture, shared_study_db


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return shared_study_db(tmp_path_factory)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    import dash

    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(dash.Dash, "run", lambda self, **kw: calls.append(kw))
    return calls


def test_dashboard_serves_on_loopback_by_default(fx: Fixture, served: list[dict[str, Any]]) -> None:
    res = CliRunner().invoke(app, ["dashboard", "--db", fx.url, "--port", "8123"])
    assert res.exit_code == 0, res.output
    assert served == [{"host": "127.0.0.1", "port": 8123, "debug": False}]
    assert "warning" not in res.output and "http://127.0.0.1:8123/" in res.output


def test_dashboard_warns_on_a_non_loopback_host(fx: Fixture, served: list[dict[str, Any]]) -> None:
    res = CliRunner().invoke(app, ["dashboard", "--db", fx.url, "--host", "0.0.0.0"])
    assert res.exit_code == 0, res.output
    assert served[0]["host"] == "0.0.0.0" and "warning" in res.output and "no login" in res.output


def test_dashboard_missing_database_exits_2(tmp_path: Path, served: list[dict[str, Any]]) -> None:
    res = CliRunner().invoke(app, ["dashboard", "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert res.exit_code == 2 and "no study database" in res.output and served == []
    assert not (tmp_path / "none.db").exists()


@pytest.mark.parametrize("host,loop", [("127.0.0.1", True), ("localhost", True), ("::1", True), ("127.0.0.2", True),
                                       ("0.0.0.0", False), ("192.168.1.5", False), ("example.org", False)])
def test_is_loopback(host: str, loop: bool) -> None:
    assert is_loopback(host) is loop


def test_dashboard_without_the_dashboard_extra_says_what_to_install(fx: Fixture, monkeypatch: pytest.MonkeyPatch,
                                                                    served: list[dict[str, Any]]) -> None:
    import sys

    monkeypatch.delitem(sys.modules, "dashboard.app", raising=False)
    monkeypatch.setitem(sys.modules, "dash", None)  # as if Dash were not installed (the core install)
    res = CliRunner().invoke(app, ["dashboard", "--db", fx.url])
    assert res.exit_code == 2 and "needs the dashboard extra" in res.output and "[dashboard]" in res.output
    assert served == []
