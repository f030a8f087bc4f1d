"""README's main job (`nas presets`) runs and reports every seed preset at its published count."""

from __future__ import annotations

from typer.testing import CliRunner

from blocks import list_presets
from nas.cli import app


def test_nas_presets_table():
    result = CliRunner().invoke(app, ["presets"], terminal_width=200)  # counts on the meta device (the default)
    assert result.exit_code == 0, result.output
    for name in list_presets(include_test=False):
        assert name in result.output
    assert "7,148,008" in result.output and "off their published count" not in result.output
