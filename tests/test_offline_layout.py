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
