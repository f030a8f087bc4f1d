"""End the `nas` command as soon as its work is done, without tearing the interpreter down module by module.

After `nas run` had printed its table, closed its store and stopped Ray, the process took another 1.7 s to exit on an
H200 machine (benchmarks/RESULTS.md, session 19; 1.9 s on a 2-core VM): Python's finalisation frees every module and
object one by one, then the C++ libraries run their destructors (torch alone: 0.6 s; with Ray, Ray Tune, Optuna and
torch's compiler loaded, 1.7 s). None of it writes anything. So the command runs what a normal exit runs that can
matter to a user (the `atexit` handlers: logging's flush, temporary folders, Ray's own shutdown hook; the standard
streams' flush) and then leaves with `os._exit`. Threads still running at that point are daemons or idle pool
workers whose executors have already been shut down.
"""

from __future__ import annotations

import atexit
import os
import sys
from collections.abc import Callable
from typing import Any


def exit_code(code: Any) -> int:
    """The process exit status `SystemExit(code)` stands for (None → 0, an int → itself, anything else → 1 after
    printing it to stderr, as the interpreter does)."""
    if code is None:
        return 0
    if isinstance(code, bool):
        return int(code)
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def run_and_exit(main: Callable[[], Any]) -> None:
    """Run `main` (a CLI that ends by raising SystemExit) and exit with its status without the interpreter's
    teardown. Other exceptions propagate unchanged (the interpreter prints them and exits as usual)."""
    try:
        main()
        code: Any = 0
    except SystemExit as stop:
        code = stop.code
    status = exit_code(code)
    try:
        atexit._run_exitfuncs()  # what a normal exit runs first (Python's own API for it, in every CPython)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # a closed or broken pipe: nothing more to say
                pass
        os._exit(status)


__all__ = ["exit_code", "run_and_exit"]
