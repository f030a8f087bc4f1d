"""One dispatch for the sequence-mixing kernels: pick a backend explicitly or by availability, and say which ran.

Backends, per op:

| op                    | "triton"                                  | "mamba_ssm"                                  | "reference"                 |
|-----------------------|-------------------------------------------|----------------------------------------------|-----------------------------|
| selective_scan        | route kernel, one path                    | mamba-ssm's CUDA `selective_scan_fn`         | `selective_scan_ref`        |
| selective_scan_paths  | route kernel, all paths in one launch     | permuted copies + one mamba-ssm call a path  | `selective_scan_paths_ref`  |
| mlstm                 | chunkwise Triton forward                  | (none)                                       | `mlstm_parallel_ref`        |

`backend=None` or "auto" takes the first available of AUTO_ORDER[op] for the tensors' device; naming a backend forces
it and raises `KernelUnavailableError` saying why it cannot run and what to do. Triton runs on CUDA, and on the CPU
only under Triton's interpreter (TRITON_INTERPRET=1, for tests); "auto" never picks the interpreter.

Reporting is explicit and scoped, not a global switch:

    with record_kernel_paths() as used:
        model(x)
    used  # {"selective_scan_paths": "triton", ...}
"""

from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from contextvars import ContextVar
from functools import lru_cache
from typing import Iterator

import torch

from kernels.errors import KernelUnavailableError


BACKENDS = ("triton", "mamba_ssm", "reference")
OPS = ("selective_scan", "selective_scan_paths", "mlstm")
# "auto" order (benchmarks/RESULTS.md, H100): for one path mamba-ssm's kernel beats our Triton scan (1.3× at L=197),
# so it leads where installed. For routes the fused Triton kernel leads: it is the path the GPU tests cover; it wins
# VMamba's cross4 (1.51× fwd, 2.27× fwd+bwd on channel-last inputs) and is about even with the copy-based mamba-ssm
# composition on Vim's bi route at 224² (0.88× fwd, 0.83–1.03× fwd+bwd; 0.44× / 0.62× at 1248²), which stays
# available as backend="mamba_ssm".
AUTO_ORDER = {
    "selective_scan": ("mamba_ssm", "triton", "reference"),
    "selective_scan_paths": ("triton", "reference"),
    "mlstm": ("triton", "reference"),
}
SUPPORTED = {
    "selective_scan": ("triton", "mamba_ssm", "reference"),
    "selective_scan_paths": ("triton", "mamba_ssm", "reference"),
    "mlstm": ("triton", "reference"),
}
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_RECORDERS: ContextVar[tuple[dict, ...]] = ContextVar("kernel_path_recorders", default=())


@contextmanager
def record_kernel_paths() -> Iterator[dict[str, str]]:
    """Collect {op name: backend} for every dispatched call made inside the block (nested blocks all see them)."""
    used: dict[str, str] = {}
    token = _RECORDERS.set(_RECORDERS.get() + (used,))
    try:
        yield used
    finally:
        _RECORDERS.reset(token)


def _report(op: str, backend: str) -> None:
    for used in _RECORDERS.get():
        used[op] = backend


@lru_cache(maxsize=None)
def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _why_not(backend: str, device: torch.device, op: str) -> str | None:
    """None if `backend` can run `op` on `device`, else the reason and the remedy."""
    if backend not in SUPPORTED[op]:
        return f"op {op!r} has no {backend!r} backend (it has {SUPPORTED[op]})"
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


def available_backends(device: torch.device | str, op: str = "selective_scan") -> tuple[str, ...]:
    """Backends that can run `op` on `device`, in the order "auto" tries them."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known ops: {OPS}")
    device = torch.device(device)
    return tuple(b for b in SUPPORTED[op] if _why_not(b, device, op) is None)


def _resolve(op: str, backend: str | None, tensors: tuple[torch.Tensor, ...], kernel_ok: str | None) -> str:
    """Pick the backend. `kernel_ok` is None when the inputs suit the fast kernels, else why not."""
    device = tensors[0].device
    if backend in (None, "auto"):
        for name in AUTO_ORDER[op]:
            if name == "triton" and device.type != "cuda":
                continue  # auto never picks the interpreter
            if name != "reference" and kernel_ok is not None:
                continue
            if _why_not(name, device, op) is None:
                return name
        return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {('auto',) + BACKENDS} or None; got {backend!r}")
    reason = _why_not(backend, device, op)
    if reason is None and backend != "reference":
        reason = kernel_ok
    if reason is not None:
        raise KernelUnavailableError(f"{backend} ({op})", reason,
                                     f"available here: {available_backends(device, op)}; pass backend='auto' "
                                     "or 'reference'")
    return backend


def _dtype_problem(*tensors: torch.Tensor | None) -> str | None:
    for x in tensors:
        if x is not None and x.dtype not in _KERNEL_DTYPES:
            return f"the fast kernels take {_KERNEL_DTYPES}, got {x.dtype}"
    return None


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   return_last_state=False, backend: str | None = None):
    """Mamba-1 selective scan with `selective_scan_ref`'s contract: u, delta, z (batch, dim, L); A (dim, N);
    B, C (batch, N, L) or (batch, G, N, L); D, delta_bias (dim,)."""
    problem = _dtype_problem(u, delta, B, C, z)
    if problem is None and B.dim() == 4 and B.shape[1] != 1:
        problem = "the Triton kernel takes one B/C group (G = 1)"
    name = _resolve("selective_scan", backend, (u,), problem if backend != "mamba_ssm" else _dtype_problem(u))
    _report("selective_scan", name)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state)
    if name == "triton":
        from kernels.triton.selective_scan import selective_scan_triton

        return selective_scan_triton(*args)
    if name == "mamba_ssm":
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

        return selective_scan_fn(*args)
    from kernels.selective_scan import selective_scan_ref

    return selective_scan_ref(*args)


def selective_scan_paths(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, paths=None,
                         merge="sum", backend: str | None = None):
    """Multi-path (route) scan with `kernels.route_scan.selective_scan_paths_ref`'s contract."""
    from kernels.route_scan import check_paths_args, selective_scan_paths_ref

    check_paths_args(u, delta, A, B, C, D, z, delta_bias, paths, merge)
    name = _resolve("selective_scan_paths", backend, (u,), _dtype_problem(u, delta, B, C, z))
    _report("selective_scan_paths", name)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus, paths, merge)
    if name == "triton":
        from kernels.triton.selective_scan import selective_scan_paths_triton

        return selective_scan_paths_triton(*args)
    if name == "mamba_ssm":
        return _paths_with_copies(*args)
    return selective_scan_paths_ref(*args)


def _paths_with_copies(u, delta, A, B, C, D, z, delta_bias, delta_softplus, paths, merge):
    """The unfused composition every public codebase uses: permuted copies, one mamba-ssm scan a path, merge."""
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn

    out = None
    for p in range(u.shape[1]):
        idx = None if paths is None else paths[p].to(device=u.device, dtype=torch.long)
        take = (lambda x: x.contiguous()) if idx is None else (lambda x: x.index_select(-1, idx))
        y = selective_scan_fn(take(u[:, p]), take(delta[:, p]), A[p].float(), take(B[:, p]), take(C[:, p]),
                              None if D is None else D[p].float(), None if z is None else take(z),
                              None if delta_bias is None else delta_bias[p].float(), delta_softplus)
        if idx is not None:
            y = y.index_select(-1, torch.argsort(idx))
        out = y if out is None else out + y
    return out / u.shape[1] if merge == "mean" else out


def mlstm(q, k, v, i, f, eps: float = 1e-6, backend: str | None = None):
    """mLSTM cell with `kernels.mlstm.mlstm_parallel_ref`'s contract: q, k (b, heads, L, dqk), v (b, heads, L, dv),
    i, f (b, heads, L) gate pre-activations."""
    name = _resolve("mlstm", backend, (q,), _dtype_problem(q, k, v))
    _report("mlstm", name)
    if name == "triton":
        from kernels.triton.mlstm import mlstm_triton

        return mlstm_triton(q, k, v, i, f, eps)
    from kernels.mlstm import mlstm_parallel_ref

    return mlstm_parallel_ref(q, k, v, i, f, eps=eps)


__all__ = ["selective_scan", "selective_scan_paths", "mlstm", "record_kernel_paths", "available_backends",
           "BACKENDS", "OPS", "AUTO_ORDER", "KernelUnavailableError"]
