"""Compile a Triton kernel for sm_90 on a machine without a GPU and read its cost: registers, spills, SASS mix.

Device time is scarce; most questions about a kernel (did the loads vectorise, how many shuffles per step, does the
tile spill) are answered by the compiler. Triton ships ptxas and cuobjdump, so `warmup` can compile for an H100/H200
target here if the active driver is replaced by one that only names the target. Nothing is launched.

    from kernels.triton.offline import capture_compiles, sass_report
    with capture_compiles() as kernels:
        my_launcher(x, y)              # CPU tensors as stand-ins; nothing runs
    for name, k in kernels:
        print(sass_report(k, name))

Run as a script for the lane selective-scan kernels (forward and backward) at the study row's shape (batch 256, the
bi route, 384 channels, N = 16, 65 tokens, the mixer's memory layout), the default config and any others given, with
each kernel's loops (one pass's instructions: the issue-bound floor per step, benchmarks/RESULTS.md session 21):

    python -m kernels.triton.offline ['("lane", 32, 8, 1, 0, 0, "input", "grid", 8, 0, "grid", "auto", 2, 32,
                                        "atomic", "channels")' ...]

The GPU machine runs Triton 3.6 and the two versions lay the lane kernels out differently (benchmarks/gpu_notes.md,
session 4): compile with the device's version, e.g. `pip install --target /tmp/t36 triton==3.6.0` and
`PYTHONPATH=/tmp/t36 python -m kernels.triton.offline`. The report names the register layout Triton gave the
kernel's (states, channels) tiles.
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


def loops(sass: str) -> list[tuple[int, int, collections.Counter]]:
    """The kernel's loops, innermost first: (start, end address, opcode counts of one pass of the body) for every
    backward branch. A loop's count includes the loops nested in it once; per time step, the issue-bound floor of a
    loop is its instructions (one warp instruction per clock per scheduler) over the steps one pass covers."""
    text = [line for line in sass.splitlines() if re.search(r"/\*[0-9a-f]{4,}\*/\s+\S", line)]
    addrs = [int(re.search(r"/\*([0-9a-f]{4,})\*/", line).group(1), 16) for line in text]
    where = {a: i for i, a in enumerate(addrs)}
    found = []
    for i, line in enumerate(text):
        m = re.search(r"\bBRA\s+0x([0-9a-f]+)", line)
        if m and int(m.group(1), 16) < addrs[i] and int(m.group(1), 16) in where:
            start = where[int(m.group(1), 16)]
            found.append((addrs[start], addrs[i], opcode_counts("\n".join(text[start:i + 1]))))
    return sorted(found, key=lambda f: sum(f[2].values()))


def loop_report(sass: str) -> list[str]:
    return [f"loop {a:#06x}-{b:#06x}: {sum(c.values())} instructions a pass ("
            + ", ".join(f"{g} {n}" for g, ops in GROUPS.items() if (n := sum(c[o] for o in ops))) + ")"
            for a, b, c in loops(sass)]


def state_layouts(compiled: CompiledKernel, n_state: int = 16, channels: int = 32) -> list[str]:
    """The distinct layouts of the kernel's (n_state, channels) tensors in its TTGIR ("one lane a channel" when each
    thread holds a whole column: threadsPerWarp = [1, 32])."""
    ttgir = compiled.asm["ttgir"]
    defs = dict(re.findall(r"^(#\w+) = (#ttg\.blocked<\{[^}]*\}>)", ttgir, re.M))
    used = set(re.findall(rf"tensor<{n_state}x{channels}xf32, (#\w+)>", ttgir))
    return sorted(defs.get(u, u).removeprefix("#ttg.blocked<{").removesuffix("}>") for u in used)


def _study_row_inputs() -> tuple:
    """CPU stand-ins for the scan's inputs at the study row, in the SSM mixer's memory layout (u, Δ, z channel-last;
    B and C column blocks of one x_proj output, B first), and the bi route's paths."""
    import torch

    bsz, n_paths, dim, n, length, rank = 256, 2, 384, 16, 65, 12
    bf = torch.bfloat16
    u = torch.zeros(n_paths, bsz, length, dim, dtype=bf).permute(1, 0, 3, 2)
    delta = torch.zeros(n_paths, bsz, length, dim, dtype=bf).permute(1, 0, 3, 2)
    xdbl = torch.zeros(n_paths, bsz, length, 2 * n + rank, dtype=bf)
    B, C = (xdbl[..., k * n:(k + 1) * n].permute(1, 0, 3, 2) for k in (0, 1))
    A = -torch.ones(n_paths, dim, n)
    D, bias = torch.zeros(n_paths, dim), torch.zeros(n_paths, dim)
    z = torch.zeros(bsz, length, dim, dtype=bf).transpose(1, 2)
    rows = torch.arange(length, dtype=torch.int32)
    return (u, delta, A, B, C, D, z, bias), torch.stack([rows, rows.flip(0)])


def main(argv: list[str] | None = None) -> None:
    import ast
    import sys

    import triton as _triton

    from .selective_scan import scan_paths_bwd, scan_paths_fwd

    (u, delta, A, B, C, D, z, bias), paths = _study_row_inputs()
    configs = [None] + [ast.literal_eval(a) for a in (sys.argv[1:] if argv is None else argv)]
    print(f"Triton {_triton.__version__}, sm_90, the study row (batch 256, bi, 384 channels, N 16, 65 tokens)")
    for cfg in configs:
        with capture_compiles() as kernels:
            out, hs, _ = scan_paths_fwd(u, delta, A, B, C, D, z, bias, paths, True, 0.5, True, config=cfg)
            scan_paths_bwd(out, u, delta, A, B, C, D, z, bias, paths, True, 0.5, hs, config=cfg)
        print(f"\nconfig: {cfg or 'default'}")
        for name, k in kernels:
            print(f"  {sass_report(k, name)}")
            for line in loop_report(sass_text(k)):
                print(f"    {line}")
            print(f"    (16, 32) layouts: {'; '.join(state_layouts(k)) or '-'}")


__all__ = ["capture_compiles", "loop_report", "loops", "sass_report", "sass_text", "opcode_counts", "resources",
           "state_layouts"]


if __name__ == "__main__":
    main()
