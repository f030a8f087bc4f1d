"""lane_hint "channels" makes Triton lay the lane scan kernels out one lane a channel (compiled for sm_90, no GPU)."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HINTED = '("lane", 32, 8, 1, 0, 0, "input", "grid", 8, 0, "grid", "auto", 2, 32, "atomic", "channels")'


def test_channels_hint_keeps_one_lane_a_channel():
    """`python -m kernels.triton.offline` as a user runs it (the tests' interpreter setting off: it compiles). With
    the hint, every (states, channels) tile of the lane forward and backward has the channels across the 32 lanes and
    a channel's states in its thread; without it Triton also uses other layouts (4 lanes a channel, the conversions
    between them), under Triton 3.6 for the whole kernel (benchmarks/RESULTS.md, session 15)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-m", "kernels.triton.offline", HINTED], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    hinted = res.stdout.split("config: ('lane'")[1]
    kernels = re.findall(r"_(scan_\w+_lane_kernel):", hinted)
    layouts = re.findall(r"\(16, 32\) layouts: (.*)", hinted)
    assert kernels == ["scan_fwd_lane_kernel", "scan_bwd_lane_kernel"]
    one_lane_a_channel = "sizePerThread = [1, 1], threadsPerWarp = [1, 32], warpsPerCTA = [1, 1], order = [1, 0]"
    assert layouts == [one_lane_a_channel] * 2, layouts
    bwd_loops = re.findall(r"loop 0x\w+-0x\w+: (\d+) instructions a pass", hinted.split("_scan_bwd_lane_kernel")[1])
    assert len(bwd_loops) == 3, bwd_loops  # the stretch's tiles: the re-advance and the tile loop inside each stretch


def test_register_cap_reaches_the_compiler():
    """`bwd_regs` caps the lane backward's registers (the rest spills to local memory); the forward is untouched."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    capped = HINTED[:-1] + ', 1, 168)'
    res = subprocess.run([sys.executable, "-m", "kernels.triton.offline", capped], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    report = res.stdout.split("config: ('lane'")[1]
    regs = dict(re.findall(r"_(scan_\w+_lane_kernel): (\d+) registers", report))
    assert regs["scan_bwd_lane_kernel"] == "168" and int(regs["scan_fwd_lane_kernel"]) != 168, regs
    assert re.search(r"_scan_bwd_lane_kernel: .*spill \d+", report)


def test_loops_finds_nested_back_edges():
    """`loops` reads one pass of each loop body from SASS text (cuobjdump's format), innermost first."""
    from kernels.triton.offline import loops

    def ins(addr: int, text: str) -> str:
        return f"        /*{addr:04x}*/                   {text} ;    /* 0x000000000000000000 */"

    sass = "\n".join([ins(0x00, "MOV R1, c[0x0][0x28]"), ins(0x10, "FFMA R2, R2, R3, R4"),
                      ins(0x20, "MUFU.EX2 R5, R2"), ins(0x30, "@P0 BRA 0x20"), ins(0x40, "SHFL.BFLY PT, R6, R5"),
                      ins(0x50, "@P1 BRA 0x10"), ins(0x60, "@P2 BRA 0x80"), ins(0x70, "EXIT"), ins(0x80, "BRA 0x80")])
    found = [(a, b, dict(c)) for a, b, c in loops(sass)]
    assert found == [(0x20, 0x30, {"MUFU": 1, "BRA": 1}),
                     (0x10, 0x50, {"FFMA": 1, "MUFU": 1, "BRA": 2, "SHFL": 1})]
