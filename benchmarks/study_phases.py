"""Where a `nas run` spends its wall time before, between and after its trials: runs the CLI in this process with
timing wrappers on its phase boundaries and prints one line per phase to stderr ("[phase] +12.34 s name (took
1.23 s)", seconds since this interpreter started). Issue 14's study target is whole-command wall time; this says
which part of it is start-up, trials or shutdown.

    python benchmarks/study_phases.py run cls_token_position --set ... --db sqlite:///x.db

The wrapped functions are this tree's; the lines are an observation for RESULTS.md, not part of `nas run`.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
import time
from typing import Any

T0 = time.perf_counter()


def _say(text: str) -> None:
    print(f"[phase] +{time.perf_counter() - T0:6.2f} s {text}", file=sys.stderr, flush=True)


def _wrap(mod: Any, attr: str, label: str) -> None:
    """Replace `mod.attr` (a function, or `Class.method` as "Class.method") with a timed one."""
    owner, name = mod, attr
    if "." in attr:
        cls, name = attr.split(".")
        owner = getattr(mod, cls)
    inner = getattr(owner, name)

    @functools.wraps(inner)
    def timed(*args, **kwargs):
        t = time.perf_counter()
        _say(f"{label} begins")
        try:
            return inner(*args, **kwargs)
        finally:
            _say(f"{label} ends (took {time.perf_counter() - t:.2f} s)")

    setattr(owner, name, timed)


class _WrapOnImport(importlib.abc.MetaPathFinder):
    """Wraps a module's functions once `nas run` itself imports it: importing nas.execute (Ray Tune) here, before
    the run, would move ~2 s of imports out of the window where they overlap the pre-flight."""

    def __init__(self, wanted: dict[str, list[tuple[str, str]]]) -> None:
        self.wanted = wanted

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in self.wanted:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        load, wraps = spec.loader.exec_module, self.wanted.pop(name)

        def exec_module(module: Any) -> None:
            load(module)
            for attr, label in wraps:
                _wrap(module, attr, label)

        spec.loader.exec_module = exec_module
        return spec


def main() -> None:
    _say("interpreter up")
    from nas import cli

    _say("nas.cli imported")
    import torch  # noqa: F401 - the driver imports it on its first check; timed here on its own

    _say("torch imported")
    wanted: dict[str, list[tuple[str, str]]] = {}
    for module, attr, label in [
        ("nas.plan", "_probe_data", "data probe"),
        ("nas.plan", "_preflight_all", "CPU pre-flight (all arms)"),
        ("nas.execute", "Startup.begin", "start-up (MPS, warm-up, Ray)"),
        ("nas.execute", "init_ray", "ray.init"),
        ("nas.store", "Store.__init__", "store opened"),
        ("nas.execute", "drive", "driver's count"),
        ("nas.driver", "open_optuna", "Optuna study"),
        ("nas.execute", "TuneRunner.run_round", "round"),
        ("nas.execute", "Startup.close", "shutdown (warm-up, Ray, MPS)"),
        ("nas.cli", "_print_summary", "summary table"),
        ("ray._private.worker", "disconnect", "ray: driver disconnects"),
        ("ray._private.node", "Node.kill_all_processes", "ray: local processes stopped"),
    ]:
        if module in sys.modules:  # nas.cli and what it imports at the top
            _wrap(sys.modules[module], attr, label)
        else:
            wanted.setdefault(module, []).append((attr, label))
    sys.meta_path.insert(0, _WrapOnImport(wanted))
    sys.argv = ["nas", *sys.argv[1:]]

    def timed_app() -> None:
        try:
            cli.app()
        except SystemExit as e:
            _say(f"CLI returned (exit {e.code})")
            raise
        finally:
            _say("done")

    from nas.fast_exit import run_and_exit  # the exit `nas` itself takes (cli.main)

    run_and_exit(timed_app)


if __name__ == "__main__":
    main()
