"""Kernels: pure-PyTorch references (the oracles every fast path is tested against), fast paths, and one dispatch.

Names load on first use (PEP 562), so `import kernels.errors` (the project's error root) does not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "KernelUnavailableError": "errors", "NasError": "errors",
    "anti_diagonal_lowpass_masks": "dct", "dct2": "dct", "dct_matrix": "dct", "idct2": "dct",
    "mlstm_chunkwise_ref": "mlstm", "mlstm_parallel_ref": "mlstm", "mlstm_recurrent_ref": "mlstm",
    "selective_scan_naive": "selective_scan", "selective_scan_ref": "selective_scan",
    "selective_scan_paths_ref": "route_scan",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'kernels' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
