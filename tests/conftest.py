"""Test-session setup. Without a GPU, Triton kernels run under Triton's interpreter: the variable must be set before
any module that defines a @triton.jit kernel is imported, whichever test file pytest collects first."""

from __future__ import annotations

import importlib
import os
import shutil
from pathlib import Path

if not shutil.which("nvidia-smi"):
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Mixers defined by tests (tests/_*_mixer.py) register on import, before any test module is collected, so every
# registry-driven test covers them: adding one is one new file.
for _module in sorted(Path(__file__).parent.glob("_*_mixer.py")):
    importlib.import_module(_module.stem)


import pytest  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def at_repo_root(monkeypatch):
    """Study files name search spaces relative to the repository root, as users run `nas` there."""
    monkeypatch.chdir(REPO_ROOT)


@pytest.fixture
def import_bench(monkeypatch):
    """Imports a benchmarks/ script as a module (they import each other by bare name), forgotten afterwards."""
    import sys

    monkeypatch.syspath_prepend(os.path.join(REPO_ROOT, "benchmarks"))
    names: list[str] = []

    def load(name: str):
        names.append(name)
        return importlib.import_module(name)

    yield load
    for name in names:
        sys.modules.pop(name, None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Pre-flight forwards are tiny: one thread avoids oversubscription on a busy machine (restored afterwards)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class RunEvents:
    """Stands in for the driver's RunContext where a runner only reports events (`on_event`); keeps them."""

    def __init__(self) -> None:
        self.events: list[tuple[str, dict]] = []

    def on_event(self, kind: str, info: dict) -> None:
        self.events.append((kind, info))


@pytest.fixture
def run_events() -> RunEvents:
    return RunEvents()
