"""Tile choices of the selective-scan kernels (`ScanConfig`, the defaults and the sweep candidates) and the small
layout helpers every launcher shares."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, NamedTuple

import torch
import triton


class ScanConfig(NamedTuple):
    """How a launch tiles the work: `variant` "seq" (state in registers, one step at a time; see
    selective_scan_seq.py) or "chunk" (associative scan over T-step tiles); `bd` channels per program; `steps` = the
    checkpoint stretch (seq) or tile length (chunk), which the forward and backward must share; `warps`.
    The backward may use its own channel block and warps (`bwd_bd`, `bwd_warps`; 0 = the forward's). `grad_layout`:
    memory of du/Δ-grad (and dB/dC): "input" = the inputs' own layout (channel-last when they are), "channel_first"
    = (…, dim, L) contiguous; "auto" = "input" (H100, `bench_scan.py --bwd-sweep`: fwd+bwd 1.10–1.12× faster for
    Vim-Ti's bi route and 1.50× for VMamba's cross4 on channel-last inputs, benchmarks/gpu_notes.md). `bwd_paths`
    (chunk backward of a multi-path route): "loop" = one program walks every path (dz merged in an fp32 buffer),
    "grid" = one program per path (P× the programs; dz, when there is a gate, by fp32 atomics).
    Fields of the "lane" forward (selective_scan_lane.py; its backward is the chunk kernel with T = `steps`): `tile`
    = steps unrolled between two output stores; `segments` = pieces the sequence is cut into for parallelism (0 =
    chosen from the lane count); `fwd_paths` = "loop" (one program walks every path; only with one segment) or
    "grid" (one program per path, outputs merged by fp32 atomics), "auto" = "loop" where allowed.
    `bwd`: "chunk" (the associative-scan backward above, or the seq variant's own) or "lane" (one lane owns a
    channel, selective_scan_lane_bwd.py; one program per path) with `bwd_tile` steps recomputed in registers
    (`steps` must be a multiple of it) and dB/dC partials summed over `bwd_red` lanes before the atomics, or, with
    `bwd_bc` = "partial", stored per group of `bwd_red` channels and summed afterwards (no atomics: dB and dC, not dA,
    dD or dz, get the same bits on every run; "partial" selects the lane backward even where "auto" would not), or,
    with "scatter", summed over all the program's lanes by reduce-scatter (each shuffle round halves the values a lane
    holds: 8 + 4 + 2 + 1 + 1 rounds for 16 states over 32 lanes instead of 16 · log2 `bwd_red`), then one atomic
    instruction per array and step; needs at least as many channels a program as padded states.
    `lane_hint`: how the lane kernels lay out their (states, channels) memory accesses, from which Triton derives the
    state's register layout (selective_scan_lane.py): "none" = as before session 15 (A at its own strides, checkpoints
    (dim, NP) through a run-time unit stride; Triton 3.6 then spreads a channel's states over 4 lanes, and the
    backward spills); "channels" = A and the checkpoints at unit channel stride from bases Triton cannot prove
    aligned (one lane a channel under Triton 3.6 too; offline SASS: no spills, no shared memory in the forward). The
    forward then writes (NP, dim) checkpoints when the lane backward reads them, so a config's forward and backward
    must share the hint. `bwd_segments`: the lane backward cut into that many sequence pieces, each its own program
    after a summary launch hands it the adjoint from the later pieces (1 = none, 0 = as many as the forward's
    `segments` rule gives): for long sequences at a small batch, where the unsegmented lane backward leaves SMs idle;
    asking for segments (≠ 1) selects the lane backward at any batch, as `bwd_bc="partial"` does. `bwd_regs`: the
    most registers a thread of the lane backward may hold (0 = the compiler's choice: 254 at the default, so 8 warps
    an SM): a cap spills to local memory for more warps an SM to hide latency with (offline, sm_90: 168 registers
    spill 99 instructions of a 2-step tile's 1,240 for 12 warps an SM). It lost on an H100 (session 22, graphed
    vim_tiny step: 168 registers 0.96×, 128 registers 0.65× the default's speed), so the default leaves it at 0."""

    variant: str
    bd: int
    steps: int
    warps: int
    bwd_bd: int = 0
    bwd_warps: int = 0
    grad_layout: str = "auto"
    bwd_paths: str = "loop"
    tile: int = 8
    segments: int = 0
    fwd_paths: str = "auto"
    bwd: str = "chunk"
    bwd_tile: int = 8
    bwd_red: int = 8
    bwd_bc: str = "atomic"
    lane_hint: str = "none"
    bwd_segments: int = 1
    bwd_regs: int = 0


# Backward tiles and gradient layouts tried on the GPU (benchmarks/bench_scan.py --bwd-sweep; the gpu tests check each),
# keyed by the state size class; their forward is the chunked kernel (default_config's before the lane forward).
BWD_CANDIDATES = {
    16: [ScanConfig("chunk", 4, 32, 2, 4, 2, "channel_first"), ScanConfig("chunk", 4, 32, 2, 8, 4, "channel_first"),
         ScanConfig("chunk", 4, 32, 2, 16, 8, "channel_first"), ScanConfig("chunk", 4, 32, 2, 8, 2, "channel_first"),
         ScanConfig("chunk", 4, 32, 2, 4, 2, "input"), ScanConfig("chunk", 4, 32, 2, 16, 8, "input")],
    1: [ScanConfig("chunk", 32, 64, 2, 32, 2, "channel_first"), ScanConfig("chunk", 32, 64, 2, 32, 2, "input"),
        ScanConfig("chunk", 32, 64, 2, 64, 4, "input"), ScanConfig("chunk", 32, 64, 2, 128, 4, "input")],
}
# second sweep (one program per path in the backward: P× the programs, for grids that leave SMs idle)
BWD_GRID_CANDIDATES = {
    16: [ScanConfig("chunk", 4, 32, 2, 4, 2, "input", "loop"), ScanConfig("chunk", 4, 32, 2, 4, 2, "input", "grid")],
    1: [ScanConfig("chunk", 32, 64, 2, 32, 2, "input", "loop"), ScanConfig("chunk", 32, 64, 2, 32, 2, "input", "grid"),
        ScanConfig("chunk", 32, 64, 2, 16, 2, "input", "grid")],
}


def default_config(n_state: int, dim: int, n_paths: int = 1, lane_bwd: bool = True) -> ScanConfig:
    """Tile choice from the H100/H200 runs in benchmarks/RESULTS.md. A multi-path route with N ≥ 16 (Vim's bi route)
    takes the lane-owned forward, one program per path (session 3's forward sweep: 0.52 vs 0.61 ms at Vim-Ti 224², 1.6
    vs 1.95 ms at 1248²) and the lane backward (2-step register tiles) with checkpoints every 4 steps: whole where its
    programs fill the GPU (`lane_bwd`, see `lane_bwd_fills`), else in sequence segments (session 22, H100, Vim-Ti bi
    at 1248² × 4 in the mixer's layout: fwd+bwd 5.68 → 2.86 ms against the chunk backward with checkpoints every 16
    steps, the choice until then; the checkpoints take 4× its memory). Both lane kernels take lane_hint "channels"
    (session 16, H100, Triton 3.6: forward 0.447 → 0.279 ms and fwd+bwd 1.68 → 1.21 ms at the study row against the
    hint-less layout). The lane backward sums dB/dC by reduce-scatter (64 shuffles a 2-step tile instead of 192 for
    an 8-lane Σ_d and atomics) and re-advances one tile per 4-step stretch instead of three per 8 (session 20, H100,
    `bench_step_graph.py --scan`, two runs: the graphed train step 24.22 → 22.20-22.29 ms at the study row, 70.01 →
    65.47-65.50 ms at vim_tiny), for twice the checkpoint memory (eager peak 2.9 → 4.0 GB and 8.2 → 11.8 GB;
    `lane_defaults(steps=8)` gives it back). One path and N = 1 (VMamba's cross4: 1.68 ms chunk vs 2.08 ms lane)
    keep the chunked kernel; the step-sequential one was slower everywhere (its later steps' loads wait
    behind the earlier steps' stores, see gpu_notes.md). Under Triton's interpreter (CPU tests) every tile element
    costs Python time, so tiles shrink to the problem."""
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        return ScanConfig("seq", min(8, triton.next_power_of_2(dim)), 4, 1)
    if n_paths > 1 and triton.next_power_of_2(n_state) >= 16:
        # reduce-scatter needs a lane per padded state (32 channels a program): N ≤ 32; where the lane backward's
        # programs would not fill the GPU it runs in sequence segments (bwd_segments 0: as many as fill it)
        bc = "scatter" if triton.next_power_of_2(n_state) <= 32 else "atomic"
        cfg = ScanConfig("lane", 32, 4, 1, 0, 0, "input", "grid", 8, 0, "grid", "auto", 2, 8, bc, "channels",
                         1 if lane_bwd else 0)
        for changes in _LANE_CHANGES:
            cfg = cfg._replace(**changes)
        return cfg
    return _chunk_default(n_state)


_LANE_CHANGES: list[dict] = []  # lane_defaults' blocks, outermost first


@contextlib.contextmanager
def lane_defaults(**changes: object) -> Iterator[None]:
    """Within the block, every default tile choice that takes the lane kernels (multi-path routes with N ≥ 16, e.g.
    Vim's bi route, on the GPU) gets `changes` (ScanConfig fields); whole models train under it unchanged. E.g.
    `lane_defaults(steps=8)` halves the checkpoint memory for ~5 % of the train step (benchmarks/RESULTS.md, session
    20); `lane_defaults(bwd_bc="partial")` gives dB and dC the same bits on every run. A forward and its backward
    must run under the same changes (they share the checkpoints). Process-wide, not per thread."""
    unknown = sorted(set(changes) - set(ScanConfig._fields))
    if unknown:
        raise ValueError(f"lane_defaults: {', '.join(unknown)} not ScanConfig field(s) "
                         f"({', '.join(ScanConfig._fields)})")
    _LANE_CHANGES.append(dict(changes))
    try:
        yield
    finally:
        _LANE_CHANGES.pop()


def _chunk_default(n_state: int) -> ScanConfig:
    if triton.next_power_of_2(n_state) >= 16:
        return ScanConfig("chunk", 4, 32, 2, 4, 2, "input", "grid")
    return ScanConfig("chunk", 32, 64, 2, 16, 2, "input", "grid")


def lane_bwd_fills(warps: int, device: torch.device) -> bool:
    """Whether `warps` one-warp programs give every SM at least 4; where they do not (Vim-Ti 1248² × 4 would run 96
    warps on 132 SMs) the default cuts the lane backward into sequence segments, and "auto" without segments takes
    the chunk backward. Always true off CUDA (the interpreter's tests run the lane kernel whole)."""
    if device.type != "cuda":
        return True
    return warps >= 4 * torch.cuda.get_device_properties(device).multi_processor_count


def backward_tiles(cfg: ScanConfig, n_state: int, lane_warps: int,
                   device: torch.device) -> tuple[ScanConfig, int, int]:
    """The backward actually run: `cfg` with `bwd` resolved ("auto": the lane backward where its `lane_warps`
    programs fill the GPU, else the chunk one), its channels per program and warps."""
    check_lane_hint(cfg)
    if cfg.bwd not in ("chunk", "lane", "auto"):
        raise ValueError(f"bwd must be 'chunk', 'lane' or 'auto', got {cfg.bwd!r}")
    if cfg.bwd_bc not in ("atomic", "partial", "scatter"):
        raise ValueError(f"bwd_bc must be 'atomic', 'partial' or 'scatter', got {cfg.bwd_bc!r}")
    if cfg.bwd_bc in ("partial", "scatter") and cfg.bwd == "chunk":  # dB/dC modes of the lane backward only
        raise ValueError(f"bwd_bc={cfg.bwd_bc!r} needs the lane backward (bwd='lane' or 'auto'); the chunk "
                         "backward adds dB/dC with atomics")
    if cfg.bwd_segments != 1 and cfg.bwd == "chunk":
        raise ValueError(f"bwd_segments={cfg.bwd_segments} needs the lane backward (bwd='lane' or 'auto'); the chunk "
                         "backward is not cut into segments")
    if cfg.bwd_regs and not 24 <= cfg.bwd_regs <= 255:
        raise ValueError(f"bwd_regs must be 0 (the compiler's choice) or 24-255 registers a thread, got {cfg.bwd_regs}")
    if cfg.bwd_regs and cfg.bwd == "chunk":
        raise ValueError(f"bwd_regs={cfg.bwd_regs} applies to the lane backward (bwd='lane' or 'auto'); the chunk "
                         "backward takes the compiler's choice")
    if cfg.bwd_bc == "partial" or cfg.bwd_segments != 1:  # asking for the slots or for segments chooses the lane
        cfg = cfg._replace(bwd="lane")  # backward at any batch; "scatter" applies where it runs
    if cfg.bwd == "auto":
        cfg = cfg._replace(bwd="lane" if lane_bwd_fills(lane_warps, device) else "chunk")
    if cfg.bwd == "lane":  # one lane a channel: 32 channels a warp
        bd = cfg.bwd_bd or 32
        return cfg, bd, cfg.bwd_warps or max(1, bd // 32)
    if cfg.variant == "lane":  # the lane forward's chunk backward (T = the checkpoint stretch)
        fallback = _chunk_default(n_state)
        return cfg, cfg.bwd_bd or fallback.bwd_bd, cfg.bwd_warps or fallback.bwd_warps
    return cfg, cfg.bwd_bd or cfg.bd, cfg.bwd_warps or cfg.warps


def check_lane_hint(cfg: ScanConfig) -> None:
    if cfg.lane_hint not in ("none", "channels"):
        raise ValueError(f"lane_hint must be 'none' or 'channels', got {cfg.lane_hint!r}")


def _common_args(u, delta, A, B, C, D, z, delta_bias, paths):
    zs = z.stride() if z is not None else (0, 0, 0)
    Ds = D.stride() if D is not None else (0, 0)
    dbs = delta_bias.stride() if delta_bias is not None else (0, 0)
    ps = paths.stride() if paths is not None else (0, 0)
    return (*u.stride(), *delta.stride(), *A.stride(), *B.stride(), *C.stride(), *Ds, *dbs, *zs, *ps)


def _empty_like_layout(shape, ref: torch.Tensor, dtype, zero: bool, channel_last: bool) -> torch.Tensor:
    """A (..., dim, L) buffer whose memory is (..., L, dim) when `channel_last` (the inputs' own layout)."""
    make = torch.zeros if zero else torch.empty
    if not channel_last:
        return make(shape, device=ref.device, dtype=dtype)
    return make((*shape[:-2], shape[-1], shape[-2]), device=ref.device, dtype=dtype).transpose(-1, -2)


def _channel_last(x: torch.Tensor) -> bool:
    return x.stride(-2) == 1 and x.stride(-1) != 1


def bc_vector_width(B: torch.Tensor, C: torch.Tensor) -> int:
    """Elements per vector load of a B_t / C_t row (batch, P, N, L) in the lane kernels: the largest power of two
    ≤ 16 bytes that divides N and every row offset (batch, path and step strides; N contiguous); 1 = scalar loads.
    Triton knows a base address only as 16-byte aligned or not, so both must be 16-byte aligned."""
    n = B.shape[-2]
    vec = 16 // B.element_size()
    if (B.dtype != C.dtype or n == 1 or n & (n - 1) or B.stride(-2) != 1 or C.stride(-2) != 1
            or B.data_ptr() % 16 or C.data_ptr() % 16):
        return 1
    while vec > 1 and (n % vec or any(x % vec for t in (B, C) for x in (t.stride(0), t.stride(1), t.stride(-1)))):
        vec //= 2
    return vec


__all__ = ["ScanConfig", "BWD_CANDIDATES", "BWD_GRID_CANDIDATES", "default_config", "bc_vector_width", "backward_tiles",
           "check_lane_hint", "lane_bwd_fills", "lane_defaults"]
