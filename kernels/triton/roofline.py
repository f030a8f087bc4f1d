"""Measuring tools shared by benchmarks/: the median of CUDA-event timings, and the two ceilings of the physical floor
(device-to-device copy bandwidth, and the exp2 rate of the special-function units), both measured on the device at hand
rather than read off a datasheet."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
import triton
import triton.language as tl


def median_ms(fn: Callable[[], object], *, warmup: int = 10, reps: int = 50, flush_mb: int = 256) -> float:
    """Median over `reps` of one call of `fn`, timed by CUDA events after `warmup` calls; the L2 cache is flushed
    (a `flush_mb` write) before each timed call so repeated runs do not measure the cache. The GPU is kept busy
    (`host_cover`) while the host enqueues the call, so the events time the GPU's work alone: before, a call whose
    host side (Python, autograd, launches) outlasted the flush put that host time between the events, and the same
    0.25 ms kernel read 0.24-0.47 ms from row to row (session 18's sweep)."""
    flush = torch.empty(flush_mb * 2**20 // 4, dtype=torch.float32, device="cuda")
    host_s = []
    for _ in range(warmup):
        t = time.perf_counter()
        fn()
        host_s.append(time.perf_counter() - t)
    torch.cuda.synchronize()
    cover = host_cover(max(host_s[len(host_s) // 2:], default=1e-3))  # the settled half of the warm-up
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for s, e in zip(starts, ends):
        flush.zero_()
        cover()
        s.record()
        fn()
        e.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in zip(starts, ends))


def host_cover(host_seconds: float) -> Callable[[], None]:
    """A GPU spin (`torch.cuda._sleep`) about twice `host_seconds` long, queued before each timed call: the call's
    kernels are all queued before the start event fires. A no-op where this PyTorch has no `_sleep`."""
    sleep = getattr(torch.cuda, "_sleep", None)
    if sleep is None:
        return lambda: None
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    probe = 1_000_000
    start.record()
    sleep(probe)
    end.record()
    torch.cuda.synchronize()
    ms_per_cycle = max(start.elapsed_time(end), 1e-3) / probe
    cycles = int(min(2 * host_seconds * 1e3 + 0.05, 50.0) / ms_per_cycle)  # at most 50 ms a call
    return lambda: sleep(cycles)


def copy_bandwidth_gbs(n_bytes: int = 2 * 2**30) -> float:
    """Device-to-device copy rate in GB/s, counting bytes read plus bytes written."""
    src = torch.randn(n_bytes // 4, device="cuda")
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), warmup=3, reps=20, flush_mb=1)
    return 2 * n_bytes / (ms * 1e-3) / 1e9


@triton.jit
def _exp2_kernel(X, OUT, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x0 = tl.load(X + offs)
    x1 = x0 + 0.25
    x2 = x0 + 0.5
    x3 = x0 + 0.75
    for _ in range(ITERS):  # four independent chains, each x ← exp2(−x): values stay in (0, 1]
        x0 = tl.exp2(-x0)
        x1 = tl.exp2(-x1)
        x2 = tl.exp2(-x2)
        x3 = tl.exp2(-x3)
    tl.store(OUT + offs, x0 + x1 + x2 + x3)


def exp2_rate_per_s(n: int = 2**24, iters: int = 256) -> float:
    """exp2 evaluations per second through Triton's `tl.exp2` (the MUFU.EX2 path), all SMs busy."""
    x = torch.rand(n, device="cuda")
    out = torch.empty_like(x)
    block = 1024
    ms = median_ms(lambda: _exp2_kernel[(n // block,)](x, out, ITERS=iters, BLOCK=block), warmup=3, reps=10,
                   flush_mb=1)
    return 4 * n * iters / (ms * 1e-3)


def device_line() -> str:
    props = torch.cuda.get_device_properties(0)
    return (f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB; torch "
            f"{torch.__version__}, triton {triton.__version__}")


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(x: object) -> str:
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def emit_report(preamble: str, header: list[str], rows: list[list[object]], notes: list[str],
                out: str | None = None) -> str:
    """Print a benchmark's table with its notes (and write it to `out`): the one report format of benchmarks/."""
    text = f"{preamble}\n\n" + markdown_table(header, rows) + "\n\nnotes:\n" + "\n".join(f"- {n}" for n in notes) + "\n"
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text)
    return text


__all__ = ["median_ms", "copy_bandwidth_gbs", "exp2_rate_per_s", "device_line", "markdown_table", "emit_report"]
