"""Imports on a side thread while this one waits on something else, and the wait for them before using the modules.

`nas run` gives Optuna's alembic a head start while `ray.init` waits on Ray's processes, and the closing table's
scipy.stats while the trials run (seconds on the GPU machine, benchmarks/RESULTS.md, session 18). Two threads importing
the same package at once are safe only while neither holds a module lock the other needs: when the main thread ran
`import optuna` while the side thread was inside `optuna.storages._rdb.models`, each held a module the other's chain
needed, Python broke the cycle by handing one of them a half-initialised `optuna.storages`, and the run died with
"cannot import name 'BaseStorage' from partially initialized module" (seen in a CI-like run with 2 busy cores,
session 19). So the side thread imports a package's top first, and the code that uses the modules (Optuna's entry
points, the closing table, `nas.stats`' scipy functions, which adaptive seeds call between rounds) calls
`wait_for_imports()` first: from a function, holding no module lock, it only waits for the head start to end.
"""

from __future__ import annotations

import importlib
import threading

_THREADS: list[threading.Thread] = []
_GUARD = threading.Lock()


def import_beside(*modules: str) -> threading.Thread:
    """Import `modules` on a daemon thread, in order, while this one waits on something else (a head start only:
    whoever needs one imports it anyway, and sees its error there). List a package's top before its submodules."""

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - see the docstring
                return

    thread = threading.Thread(target=load, daemon=True, name="imports-beside")
    with _GUARD:
        _THREADS.append(thread)
    thread.start()
    return thread


def wait_for_imports(timeout: float | None = 60.0) -> None:
    """Wait until every `import_beside` thread has ended (call it outside any import, before importing what they
    load); a thread still busy after `timeout` is left to finish on its own."""
    if threading.current_thread().name == "imports-beside":
        return
    with _GUARD:
        threads = list(_THREADS)
    for thread in threads:
        thread.join(timeout)
    with _GUARD:
        _THREADS[:] = [t for t in _THREADS if t.is_alive()]


__all__ = ["import_beside", "wait_for_imports"]
