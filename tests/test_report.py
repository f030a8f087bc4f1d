"""`nas report`: one self-contained HTML file (plotly.js inlined, nothing fetched), user strings escaped, bad input
exits with code 2. (The file is opened offline in Chromium by tests/test_dashboard_browser.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from nas.cli import app
from test_dashboard_fixture import GRID, SEARCH, XSS, Fixture, shared_study_db


@pytest.fixture(scope="module")
def fx(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return shared_study_db(tmp_path_factory)


def test_report_cli_writes_one_self_contained_file(fx: Fixture, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "report.html"
    res = CliRunner().invoke(app, ["report", GRID, "-o", str(out), "--db", fx.url])
    assert res.exit_code == 0, res.output
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+\bsrc=", text) and "<link" not in text  # nothing loaded from elsewhere
    assert "plotly.js v" in text or "Plotly" in text[:2_000_000]  # the library itself is inlined
    assert text.count('class="plotly-graph-div"') == 8
    assert "Ablation table" in text and "+5.33" in text and "76.1" in text and "Vim (Zhu et al., 2024)" in text
    # the trials table says its units, as the dashboard's trial page does (fixture: 2000 images/s for head,
    # 1,160,000 FLOPs, 3 s wall, 25,354 parameters)
    assert "<td>2,000 images/s</td>" in text and "<td>0.00116 GFLOPs</td>" in text and "<td>3 s</td>" in text
    assert "<td>25,354</td>" in text and "<th>FLOPs per image</th>" in text
    assert not list(out.parent.glob("*.tmp"))


def test_report_of_a_search_study(fx: Fixture, tmp_path: Path) -> None:
    from dashboard.report import build_report

    text = build_report(fx.url, SEARCH)
    assert "Ablation table" not in text and "parameter importance" in text
    assert text.count('class="plotly-graph-div"') == 7  # no ablation figure


def test_report_escapes_user_strings(fx: Fixture) -> None:
    from dashboard.report import build_report

    text = build_report(fx.url, XSS)
    assert XSS not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<img src=x" not in text and "&lt;img src=x onerror=alert(2)&gt; &amp; friends" in text


def test_report_bad_input_exits_2(fx: Fixture, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["report", "nope", "-o", str(tmp_path / "r.html"), "--db", fx.url])
    assert res.exit_code == 2 and "no study named 'nope'" in res.output and GRID in res.output
    missing = f"sqlite:///{tmp_path / 'absent.db'}"
    res = CliRunner().invoke(app, ["report", GRID, "-o", str(tmp_path / "r.html"), "--db", missing])
    assert res.exit_code == 2 and "no study database" in res.output
    assert not (tmp_path / "absent.db").exists()  # reading never creates a database
