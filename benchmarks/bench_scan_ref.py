"""CPU timing of the chunked selective-scan reference against the per-step loop (forward, and forward+backward).

Run: ``python benchmarks/bench_scan_ref.py [--threads N] [--repeats R] [--write]``.  ``--write`` replaces the
section "## CPU selective-scan reference vs naive loop" in benchmarks/RESULTS.md (other sections are kept).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from kernels.selective_scan import selective_scan_naive, selective_scan_ref

HEADING = "## CPU selective-scan reference vs naive loop"
RESULTS = Path(__file__).with_name("RESULTS.md")
SHAPES = [(8, 64, 64), (8, 64, 197), (8, 192, 197), (8, 64, 1024), (8, 192, 1024)]  # (batch, dim, L); N = 16


def make_inputs(batch: int, dim: int, length: int, n: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    return {"u": r(batch, dim, length), "delta": r(batch, dim, length), "A": -torch.exp(r(dim, n)),
            "B": r(batch, n, length), "C": r(batch, n, length), "D": r(dim), "z": r(batch, dim, length),
            "delta_bias": r(dim)}


def time_runs(fn: Callable, inputs: dict[str, torch.Tensor], backward: bool, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocator and thread pool and is dropped
        leaves = {k: v.clone().requires_grad_(backward) for k, v in inputs.items()}
        start = time.perf_counter()
        out = fn(**leaves, delta_softplus=True)
        if backward:
            out.sum().backward()
        times.append(time.perf_counter() - start)
    return times[1:]


def cpu_description() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    return (f"{model}; {os.cpu_count()} logical cores visible, torch threads = {torch.get_num_threads()}; "
            f"torch {torch.__version__}, float32; 1-min load average at start {os.getloadavg()[0]:.2f}")


def run(repeats: int) -> str:
    rows = ["| batch | dim | L | N | pass | chunked ref ms, median (min) | naive loop ms, median (min) | speed-up "
            "(medians) |", "|---:|---:|---:|---:|---|---:|---:|---:|"]
    for batch, dim, length in SHAPES:
        inputs = make_inputs(batch, dim, length)
        for backward in (False, True):
            ref = time_runs(selective_scan_ref, inputs, backward, repeats)
            naive = time_runs(selective_scan_naive, inputs, backward, repeats)
            t_ref, t_naive = statistics.median(ref), statistics.median(naive)
            rows.append(f"| {batch} | {dim} | {length} | 16 | {'fwd+bwd' if backward else 'fwd'} | "
                        f"{t_ref * 1e3:.1f} ({min(ref) * 1e3:.1f}) | {t_naive * 1e3:.1f} ({min(naive) * 1e3:.1f}) | "
                        f"{t_naive / t_ref:.2f}x |")
            print(rows[-1], flush=True)
    return "\n".join(rows)


def write_section(body: str) -> None:
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    section = f"{HEADING}\n\n{body}\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    RESULTS.write_text(text.rstrip("\n") + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per cell; the median is reported")
    parser.add_argument("--write", action="store_true", help=f"write the table into {RESULTS.name}")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    machine = cpu_description()
    print(machine)
    table = run(args.repeats)
    load_end = os.getloadavg()[0]
    if args.write:
        body = (f"Machine: {machine}.\n\nCommand: `python benchmarks/bench_scan_ref.py --repeats {args.repeats} "
                f"--write`. Median of {args.repeats} runs after one warm-up; inputs include D, z, delta_bias and "
                f"softplus; `naive loop` is `selective_scan_naive` (one step per token, slices via `unbind`); "
                f"the chunked ref uses its default chunk_size = 8. 1-min load average at the end: {load_end:.2f}. The "
                f"machine is shared with other jobs, so large cells (L = 1024) can vary several-fold between runs; "
                f"the min column is the least-disturbed run.\n\n{table}")
        write_section(body)


if __name__ == "__main__":
    main()
