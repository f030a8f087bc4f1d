"""One dispatch for the sequence-mixing kernels: pick a backend explicitly or by availability, and say which ran.

Each op is one table entry (`OPS[name]`, an `Op`): its backends in the order "auto" tries them, each a function with
the reference's positional signature (imported on first use) and what inputs it refuses, plus the op's cost rule:

| op                    | "triton"                                  | "mamba_ssm"                                  | "reference"                 |
|-----------------------|-------------------------------------------|----------------------------------------------|-----------------------------|
| selective_scan        | route kernel, one path                    | mamba-ssm's CUDA `selective_scan_fn`         | `selective_scan_ref`        |
| selective_scan_paths  | route kernel, all paths in one launch     | permuted copies + one mamba-ssm call a path  | `selective_scan_paths_ref`  |
| mlstm                 | chunkwise Triton forward                  | (none)                                       | `mlstm_parallel_ref`        |
| causal_conv1d_paths   | conv + SiLU along each path, no copies    | (none)                                       | gather → conv1d → scatter   |

`backend=None` or "auto" takes the first available backend of the op's table for the tensors' device; naming a
backend forces it and raises `KernelUnavailableError` saying why it cannot run and what to do. Triton runs on CUDA,
and on the CPU only under Triton's interpreter (TRITON_INTERPRET=1, for tests); "auto" never picks the interpreter.

Reporting is explicit and scoped, not a global switch:

    with record_kernel_paths() as used:                   # {op: backend}, what a trial stores
        model(x)
    with record_kernel_calls(probe=counter.get_total_flops) as calls:
        model(x)                                          # one KernelCall per call: op, backend, FLOPs by the op's
                                                          # rule, and what `probe` counted inside the call
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor

from kernels.errors import KernelUnavailableError
from kernels.route_scan import check_paths_args

BACKENDS = ("triton", "mamba_ssm", "reference")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


# ---- the op tables ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Impl:
    """One backend of an op: `module.function` takes the reference's positional arguments. `refuses(*args)` says why
    these inputs do not suit it (None: they do); `auto=False` keeps "auto" from picking it (it must be named)."""

    module: str
    function: str
    refuses: Callable[..., str | None] | None = None
    auto: bool = True

    def load(self) -> Callable[..., Any]:
        return _load(self.module, self.function)


@dataclass(frozen=True)
class Op:
    """An op: its backends in the order "auto" tries them ("reference" last) and its cost rule. `macs(*args)` is the
    multiply-adds of one call by the published rule, the same whichever backend runs (generic FLOP counters miss
    Triton/CUDA kernels and miscount the references' elementwise scans); `flops_term` names it in cost reports."""

    name: str
    backends: Mapping[str, Impl]
    macs: Callable[..., int]
    flops_term: str


@lru_cache(maxsize=None)
def _load(module: str, function: str) -> Callable[..., Any]:
    return getattr(importlib.import_module(module), function)


def _dtype_problem(*tensors: Tensor | None) -> str | None:
    for x in tensors:
        if x is not None and x.dtype not in _KERNEL_DTYPES:
            return f"the fast kernels take {_KERNEL_DTYPES}, got {x.dtype}"
    return None


def _scan_triton_refuses(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, *_: Any) -> str | None:
    problem = _dtype_problem(u, delta, B, C, z)
    if problem is None and B.dim() == 4 and B.shape[1] != 1:
        problem = "the Triton kernel takes one B/C group (G = 1)"
    return problem


def _scan_mamba_refuses(u: Tensor, *_: Any) -> str | None:
    return _dtype_problem(u)


def _paths_refuses(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, *_: Any) -> str | None:
    return _dtype_problem(u, delta, B, C, z)


def _mlstm_refuses(q: Tensor, k: Tensor, v: Tensor, *_: Any) -> str | None:
    return _dtype_problem(q, k, v)


def _scan_macs(u: Tensor, delta: Tensor, A: Tensor, *_: Any) -> int:
    """VMamba's rule (Mamba issue 110; ../shared/reference/vmamba.md): 9·L·E·N + L·E per sequence, E = every scanned
    channel (all paths of a route), N = d_state. u is (batch, [P,] E, L)."""
    batch, length = int(u.shape[0]), int(u.shape[-1])
    channels = int(u[0].numel()) // length
    return batch * (9 * length * channels * int(A.shape[-1]) + length * channels)


def _conv_refuses(x: Tensor, weight: Tensor, *_: Any) -> str | None:
    return _dtype_problem(x)


def _conv_macs(x: Tensor, weight: Tensor, *_: Any) -> int:
    """A causal depthwise conv of width K per path: L·E·K multiply-adds per sequence and path (x is (batch, L, E),
    weight (paths, E, K))."""
    batch, length, channels = (int(s) for s in x.shape)
    return batch * int(weight.shape[0]) * length * channels * int(weight.shape[-1])


def _mlstm_macs(q: Tensor, k: Tensor, v: Tensor, *_: Any) -> int:
    """ViL's rule for the parallel form (../shared/reference/vil_mlstm.md): S²·E per sequence, E = heads · d_v."""
    batch, heads, length, d_v = (int(s) for s in v.shape)
    return batch * heads * length * length * d_v


OPS: dict[str, Op] = {op.name: op for op in (
    Op("selective_scan", {
        # one path: mamba-ssm's kernel beats our Triton scan (1.3x at L=197, benchmarks/RESULTS.md), so it leads
        "mamba_ssm": Impl("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn", _scan_mamba_refuses),
        "triton": Impl("kernels.triton.selective_scan", "selective_scan_triton", _scan_triton_refuses),
        "reference": Impl("kernels.selective_scan", "selective_scan_ref"),
    }, _scan_macs, "selective_scan"),
    Op("selective_scan_paths", {
        # routes: the fused Triton kernel leads (it wins VMamba's cross4, 1.51x fwd / 2.27x fwd+bwd, and is about even
        # on Vim's bi route); the copy-based mamba-ssm composition stays available by name
        "triton": Impl("kernels.triton.selective_scan", "selective_scan_paths_triton", _paths_refuses),
        "mamba_ssm": Impl("kernels.route_scan", "selective_scan_paths_copies", _paths_refuses, auto=False),
        "reference": Impl("kernels.route_scan", "selective_scan_paths_ref"),
    }, _scan_macs, "selective_scan"),
    Op("mlstm", {
        "triton": Impl("kernels.triton.mlstm", "mlstm_triton", _mlstm_refuses),
        "reference": Impl("kernels.mlstm", "mlstm_parallel_ref"),
    }, _mlstm_macs, "mlstm"),
    Op("causal_conv1d_paths", {
        "triton": Impl("kernels.triton.path_conv", "causal_conv1d_paths_triton", _conv_refuses),
        "reference": Impl("kernels.path_conv", "causal_conv1d_paths_ref"),
    }, _conv_macs, "causal_conv1d"),
)}


# ---- where a backend can run --------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _why_not(backend: str, device: torch.device) -> str | None:
    """None if `backend` can run on `device` at all, else the reason and the remedy."""
    if backend == "reference":
        return None
    if backend == "triton":
        if not _importable("triton"):
            return "triton is not installed (pip install 'visionseq-nas[gpu]')"
        if device.type != "cuda" and not _interpreter_on():
            return f"triton needs a CUDA device (tensors are on {device}); on CPU only with TRITON_INTERPRET=1"
        return None
    if device.type != "cuda":
        return f"mamba_ssm needs a CUDA device (tensors are on {device})"
    if not _importable("mamba_ssm"):
        return "mamba_ssm is not installed (build it: pip install mamba-ssm --no-build-isolation)"
    return None


def _op(op: str) -> Op:
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {tuple(OPS)}")
    return OPS[op]


def available_backends(device: torch.device | str, op: str = "selective_scan") -> tuple[str, ...]:
    """Backends that can run `op` on `device`, in the order "auto" tries them."""
    device = torch.device(device)
    return tuple(b for b in _op(op).backends if _why_not(b, device) is None)


def _resolve(op: Op, backend: str | None, args: tuple[Any, ...]) -> str:
    device = args[0].device
    if backend in (None, "auto"):
        for name, impl in op.backends.items():
            if not impl.auto or (name == "triton" and device.type != "cuda"):  # auto never picks the interpreter
                continue
            if _why_not(name, device) is None and (impl.refuses is None or impl.refuses(*args) is None):
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS} or None; got {backend!r}")
    impl = op.backends.get(backend)
    if impl is None:
        reason = f"op {op.name!r} has no {backend!r} backend (it has {tuple(op.backends)})"
    else:
        reason = _why_not(backend, device) or (impl.refuses(*args) if impl.refuses else None)
    if reason is not None:
        raise KernelUnavailableError(f"{backend} ({op.name})", reason,
                                     f"available here: {available_backends(device, op.name)}; pass backend='auto' or "
                                     "backend='reference'")
    return backend


# ---- scoped recording ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class KernelCall:
    """One dispatched call: the op, the backend that ran, its FLOPs by the op's rule (2 per multiply-add), and what
    the recorder's probe counted while it ran (0 without a probe)."""

    op: str
    backend: str
    flops: int
    probed: int = 0

    @property
    def flops_term(self) -> str:
        return OPS[self.op].flops_term


@dataclass
class _Recorder:
    paths: dict[str, str] = field(default_factory=dict)
    calls: list[KernelCall] | None = None  # None: paths only (a trial records paths over every training step)
    probe: Callable[[], int] | None = None


_RECORDERS: ContextVar[tuple[_Recorder, ...]] = ContextVar("kernel_recorders", default=())


@contextmanager
def _recording(recorder: _Recorder) -> Iterator[_Recorder]:
    token = _RECORDERS.set(_RECORDERS.get() + (recorder,))
    try:
        yield recorder
    finally:
        _RECORDERS.reset(token)


@contextmanager
def record_kernel_paths() -> Iterator[dict[str, str]]:
    """Collect {op name: backend} for every dispatched call made inside the block (nested blocks all see them)."""
    with _recording(_Recorder()) as rec:
        yield rec.paths


@contextmanager
def record_kernel_calls(probe: Callable[[], int] | None = None) -> Iterator[list[KernelCall]]:
    """Collect a `KernelCall` for every dispatched call made inside the block. `probe` (e.g. a FlopCounterMode's
    `get_total_flops`) is read before and after each call: the difference is what a generic counter saw inside the
    kernel, so a cost model can subtract it and count the op's rule instead."""
    with _recording(_Recorder(calls=[], probe=probe)) as rec:
        yield rec.calls


def _run(op_name: str, backend: str | None, args: tuple[Any, ...]) -> Any:
    op = OPS[op_name]
    name = _resolve(op, backend, args)
    recorders = _RECORDERS.get()
    for rec in recorders:
        rec.paths[op.name] = name
    counting = [rec for rec in recorders if rec.calls is not None]
    if not counting:
        return op.backends[name].load()(*args)
    starts = [rec.probe() if rec.probe else 0 for rec in counting]
    out = op.backends[name].load()(*args)
    flops = 2 * op.macs(*args)
    for rec, start in zip(counting, starts):
        rec.calls.append(KernelCall(op.name, name, flops, rec.probe() - start if rec.probe else 0))
    return out


# ---- the public ops -----------------------------------------------------------------------------------------------
def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Mamba-1 selective scan with `selective_scan_ref`'s contract: u, delta, z (batch, dim, L); A (dim, N);
    B, C (batch, N, L) or (batch, G, N, L); D, delta_bias (dim,)."""
    return _run("selective_scan", backend,
                (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state))


def selective_scan_paths(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                         z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                         paths: Tensor | None = None, merge: str = "sum", backend: str | None = None) -> Tensor:
    """Multi-path (route) scan with `kernels.route_scan.selective_scan_paths_ref`'s contract: u, delta (batch, P, dim,
    L); A (P, dim, N); B, C (batch, P, N, L); D, delta_bias (P, dim); z (batch, dim, L); paths (P, L) positions."""
    check_paths_args(u, delta, A, B, C, D, z, delta_bias, paths, merge)
    return _run("selective_scan_paths", backend, (u, delta, A, B, C, D, z, delta_bias, delta_softplus, paths, merge))


def mlstm(q: Tensor, k: Tensor, v: Tensor, i: Tensor, f: Tensor, eps: float = 1e-6, reverse: bool = False,
          backend: str | None = None) -> Tensor:
    """mLSTM cell with `kernels.mlstm.mlstm_parallel_ref`'s contract: q, k (b, heads, L, dqk), v (b, heads, L, dv),
    i, f (b, heads, L) gate pre-activations; `reverse` runs it from the last row to the first. The Triton backend
    takes any strides (e.g. (b, heads, L, d) views of (b, L, heads·d) projections) and returns h and the gradients
    in its inputs' memory order, reversing by addressing instead of copies."""
    return _run("mlstm", backend, (q, k, v, i, f, eps, reverse))


def causal_conv1d_paths(x: Tensor, weight: Tensor, bias: Tensor | None, paths: Tensor,
                        backend: str | None = None) -> Tensor:
    """Causal depthwise conv1d + SiLU along each path, in canonical order, with
    `kernels.path_conv.causal_conv1d_paths_ref`'s contract: x (B, L, E); weight (Pc, E, K); bias (Pc, E) or None;
    paths (Pc, L). Returns (B, Pc, L, E) (the Triton kernel's memory is (Pc, B, L, E))."""
    return _run("causal_conv1d_paths", backend, (x, weight, bias, paths))


__all__ = ["BACKENDS", "OPS", "Impl", "KernelCall", "KernelUnavailableError", "Op", "available_backends",
           "causal_conv1d_paths", "mlstm",
           "record_kernel_calls", "record_kernel_paths", "selective_scan", "selective_scan_paths"]
