"""The `nas` command's fast exit (nas/fast_exit.py): same status, same output, atexit handlers run, no teardown."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nas.fast_exit import exit_code

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("code, status", [(None, 0), (0, 0), (2, 2), (130, 130), (True, 1), (256 + 3, 3)])
def test_exit_code_is_the_interpreters(code, status):
    assert exit_code(code) == status


def test_a_message_exits_1_and_goes_to_stderr(capsys):
    assert exit_code("no such study") == 1
    assert capsys.readouterr().err.strip() == "no such study"


def _child(tmp_path: Path, body: str) -> subprocess.CompletedProcess:
    """Run `body` as the CLI's main under `run_and_exit` in a fresh interpreter, with an atexit handler registered."""
    head = textwrap.dedent(f"""\
        import atexit, sys
        from nas.fast_exit import run_and_exit

        def wrote_at_exit():
            with open({str(tmp_path / "atexit.txt")!r}, "w") as f:
                f.write("ran")

        atexit.register(wrote_at_exit)

        class TornDown:  # Python's teardown would call this when it clears the module; os._exit never does
            def __del__(self):
                sys.stderr.write("torn down")

        kept = TornDown()

        def main():
        """)
    tail = "\nrun_and_exit(main)\nprint('not reached')\n"
    script = tmp_path / "child.py"
    script.write_text(head + textwrap.indent(textwrap.dedent(body).strip(), "    ") + tail)
    return subprocess.run([sys.executable, str(script)], cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_status_output_and_atexit_handlers_survive(tmp_path):
    res = _child(tmp_path, """
        sys.stdout.write("table without a newline")  # buffered, not flushed by the body
        raise SystemExit(3)
    """)
    assert res.returncode == 3
    assert res.stdout == "table without a newline"
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "torn down" not in res.stderr  # no interpreter teardown: the time it took is what this module saves


def test_a_body_that_returns_exits_0_and_a_message_exits_1(tmp_path):
    assert _child(tmp_path, "pass").returncode == 0
    res = _child(tmp_path, "raise SystemExit('study not found')")
    assert res.returncode == 1 and "study not found" in res.stderr


def test_other_exceptions_take_the_normal_way_out(tmp_path):
    res = _child(tmp_path, "raise ValueError('boom')")
    assert res.returncode == 1
    assert "ValueError: boom" in res.stderr  # the interpreter's traceback, as without the fast exit
    assert (tmp_path / "atexit.txt").read_text() == "ran"
    assert "torn down" in res.stderr  # the normal way out tears down (the check above can fail)


def test_the_console_command_goes_through_it():
    """`nas` (pyproject's script) and `python -m nas.cli` both end through `run_and_exit`."""
    text = (ROOT / "pyproject.toml").read_text()
    assert 'nas = "nas.cli:main"' in text
    res = subprocess.run([sys.executable, "-m", "nas.cli", "run", "no-such-study"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2  # bad input, as README says
    assert "no-such-study" in res.stdout + res.stderr
