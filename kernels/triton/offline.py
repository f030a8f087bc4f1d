"""Compile a Triton kernel for sm_90 on a machine without a GPU and read its cost: registers, spills, SASS mix.

Device time is scarce; most questions about a kernel (did the loads vectorise, how many shuffles per step, does the
tile spill) are answered by the compiler. Triton ships ptxas and cuobjdump, so `warmup` can compile for an H100/H200
target here if the active driver is replaced by one that only names the target. Nothing is launched.

    from kernels.triton.offline import capture_compiles, sass_report
    with capture_compiles() as kernels:
        my_launcher(x, y)              # CPU tensors as stand-ins; nothing runs
    for name, k in kernels:
        print(sass_report(k, name))

Run as a script for the selective-scan kernels at their Vim-Ti defaults:  python -m kernels.triton.offline
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import tempfile
from typing import TYPE_CHECKING, Any, Iterator

import triton
from triton.backends.compiler import GPUTarget

if TYPE_CHECKING:
    import torch
    from triton.compiler import CompiledKernel


class _TargetOnlyDriver:
    """Enough of a Triton driver for `JITFunction.warmup` to compile for a fixed target (never to launch)."""

    def __init__(self, arch: int = 90) -> None:
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self) -> GPUTarget:
        return self.target

    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: Any = None) -> int:
        return 0

    def get_active_torch_device(self) -> torch.device:
        import torch

        return torch.device("cpu")


@contextlib.contextmanager
def capture_compiles(arch: int = 90) -> Iterator[list[tuple[str, CompiledKernel]]]:
    """Within the block, every Triton launch compiles for sm_`arch` and is *not* run; yields the list of
    (kernel name, CompiledKernel) in launch order. Launchers can be called unchanged with CPU tensors as stand-ins
    (same dtypes, strides and alignment); their outputs are left unwritten."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        raise RuntimeError("unset TRITON_INTERPRET: the interpreter cannot compile")
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    captured: list = []
    original = JITFunction.run

    def run(self: JITFunction, *args: Any, grid: Any, warmup: bool, **kwargs: Any) -> CompiledKernel:
        kernel = original(self, *args, grid=grid, warmup=True, **kwargs)
        captured.append((self.__name__, kernel))
        return kernel

    driver.set_active(_TargetOnlyDriver(arch))
    JITFunction.run = run
    try:
        yield captured
    finally:
        JITFunction.run = original
        driver._active = None


def _tool(name: str) -> str:
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def sass_text(compiled: CompiledKernel) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([_tool("cuobjdump"), "-sass", f.name], capture_output=True, text=True,
                              check=True).stdout


def resources(compiled: CompiledKernel) -> dict[str, int]:
    """Registers, stack bytes and spill stores/loads from the cubin (cuobjdump's resource usage)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([_tool("cuobjdump"), "-res-usage", f.name], capture_output=True, text=True,
                              check=True).stdout
    out = {}
    for key, pat in (("registers", r"REG:(\d+)"), ("stack", r"STACK:(\d+)"), ("shared", r"SHARED:(\d+)"),
                     ("local", r"LOCAL:(\d+)")):
        m = re.search(pat, text)
        out[key] = int(m.group(1)) if m else -1
    return out


def opcode_counts(sass: str) -> collections.Counter:
    """Static count of SASS opcodes (first token of each instruction, without predicates or modifiers)."""
    counts: collections.Counter = collections.Counter()
    for line in sass.splitlines():
        m = re.search(r"/\*[0-9a-f]{4,}\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", line)
        if m:
            counts[m.group(2)] += 1
    return counts


GROUPS = {"load": ("LDG",), "store": ("STG",), "atomic": ("RED", "ATOM", "ATOMG", "REDG"), "shuffle": ("SHFL",),
          "mufu": ("MUFU",), "fp32": ("FFMA", "FMUL", "FADD", "FMNMX", "FSEL", "FSETP"),
          "int/addr": ("IMAD", "IADD3", "LEA", "LEA.HI", "SHF", "LOP3", "ISETP", "IMNMX", "SEL"),
          "convert": ("F2F", "I2F", "F2I", "PRMT", "F2FP"), "smem": ("LDS", "STS", "BAR"),
          "spill": ("LDL", "STL")}


def sass_report(compiled: CompiledKernel, title: str = "") -> str:
    sass = sass_text(compiled)
    counts = opcode_counts(sass)
    res = resources(compiled)
    total = sum(counts.values())
    grouped = {g: sum(counts[o] for o in ops) for g, ops in GROUPS.items()}
    parts = ", ".join(f"{g} {n}" for g, n in grouped.items() if n)
    return (f"{title}: {res['registers']} registers, stack {res['stack']} B, local {res['local']} B; "
            f"{total} SASS instructions ({parts})")


__all__ = ["capture_compiles", "sass_report", "sass_text", "opcode_counts", "resources"]
