"""Say when a local study's workers will compile their imports from source, and how to stop it.

With PYTHONDONTWRITEBYTECODE set (common in containers), Python reads .pyc files but never writes them, so packages
installed without bytecode (`pip install --no-compile`, a copied folder) are compiled again in every process: the
driver, Ray's own processes, the kernel warm-up and each worker. On session 14's GPU machine a worker spent ~19 s in
imports before its first trial (benchmarks/RESULTS.md). `python -m compileall` writes the bytecode once whatever that
variable says; `nas run` prints the command when it applies.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from pathlib import Path

# what a worker imports before its first trial (nas.trainable, nas.worker, the trial code and its kernels)
WORKER_PACKAGES = ("ray", "torch", "triton", "pydantic", "numpy", "yaml", "blocks", "kernels", "nas")


def uncompiled_packages(packages: tuple[str, ...] = WORKER_PACKAGES,
                        dont_write: bool | None = None) -> dict[str, Path]:
    """{package: its folder} for each importable package of `packages` whose `__init__` has no bytecode, when Python
    will not write it (`dont_write`, default `sys.dont_write_bytecode`); empty otherwise."""
    if not (sys.dont_write_bytecode if dont_write is None else dont_write):
        return {}
    missing: dict[str, Path] = {}
    for name in packages:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        origin = spec.origin if spec is not None else None
        if not origin or not origin.endswith(".py"):
            continue
        if not os.path.exists(importlib.util.cache_from_source(origin)):
            missing[name] = Path(origin).parent
    return missing


def bytecode_hint(packages: tuple[str, ...] = WORKER_PACKAGES, dont_write: bool | None = None) -> str | None:
    """One line for `nas run` when workers would compile packages from source, with the command that stops it."""
    missing = uncompiled_packages(packages, dont_write)
    if not missing:
        return None
    folders = " ".join(shlex.quote(str(p)) for p in sorted(set(missing.values())))
    return (f"PYTHONDONTWRITEBYTECODE is set and there is no bytecode for {', '.join(missing)}: every Ray worker "
            f"compiles them from source before its first trial. Once: python -m compileall -q {folders}")


__all__ = ["WORKER_PACKAGES", "bytecode_hint", "uncompiled_packages"]
