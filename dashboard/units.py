"""Numbers as the dashboard and `nas report` print them, each with its unit: one place, so the trial page, the
trials table and the report's file say the same thing (throughput in images/s, memory in MiB or GiB, FLOPs in
GFLOPs, time in s, counts with thousands separators)."""

from __future__ import annotations

from typing import Any

from nas.records import finite as _number  # None for NaN, ±inf and non-numbers

MISSING = "–"
MIB, GIB = 2**20, 2**30


def count(v: Any) -> str:
    """An integer count (parameters, MACs) with thousands separators: 25,354."""
    f = _number(v)
    return MISSING if f is None else f"{round(f):,}"


def sig(f: float, digits: int = 4) -> str:
    """`digits` significant digits, thousands separated once the integer part is long (12,345, 285.7, 0.001234)."""
    if f != 0 and abs(f) >= 10 ** (digits - 1):
        return f"{f:,.0f}"
    return f"{f:.{digits}g}"


def throughput(v: Any) -> str:
    f = _number(v)
    return MISSING if f is None else f"{sig(f)} images/s"


def gflops(v: Any, unit: str = "GFLOPs") -> str:
    """FLOPs (or MACs, with `unit="GMACs"`) per image in units of 10⁹."""
    f = _number(v)
    return MISSING if f is None else f"{sig(f / 1e9)} {unit}"


def memory_unit(largest_bytes: float) -> tuple[float, str]:
    """(divisor, unit) for a set of byte counts: GiB from 1 GiB up, else MiB."""
    return (GIB, "GiB") if largest_bytes >= GIB else (MIB, "MiB")


def memory(v: Any, *, missing: str = MISSING) -> str:
    """Bytes as MiB or GiB (None: not measured; peak memory is measured on CUDA only)."""
    f = _number(v)
    if f is None:
        return missing
    div, unit = memory_unit(f)
    return f"{sig(f / div)} {unit}"


def seconds(v: Any) -> str:
    f = _number(v)
    if f is None:
        return MISSING
    return f"{sig(f, 3)} s" if f < 600 else f"{sig(f, 4)} s ({f / 60:.1f} min)"


def device(label: str | None) -> str:
    """Where a trial trained, short enough for a table column: `GPU 1 (NVIDIA H200)` for the host's GPU 1 (the
    store's `cuda:0 = GPU 1 (NVIDIA H200, GPU-1a2b3c4d)`: each Ray worker sees its card as cuda:0), `cpu`."""
    if not label:
        return MISSING
    if " = " not in label:
        return label
    where = label.split(" = ", 1)[1]
    name, _, rest = where.partition(", GPU-")
    return name + ")" if rest else where


def image_size(v: Any) -> str:
    f = _number(v)
    return MISSING if f is None else f"{int(f)} × {int(f)} px"


def percent(v: Any) -> str:
    """An accuracy in [0, 1] as a percentage with two decimals."""
    f = _number(v)
    return MISSING if f is None else f"{100 * f:.2f}%"


__all__ = ["GIB", "MIB", "MISSING", "count", "gflops", "image_size", "memory", "memory_unit", "percent", "seconds",
           "sig", "throughput"]
