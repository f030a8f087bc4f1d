"""Cost of a backbone: parameters, FLOPs, throughput and peak memory, optionally at several resolutions.

FLOPs are PyTorch's `FlopCounterMode` (2 per multiply-add) on one image, plus explicit terms for the sequence
kernels, which a generic counter misses (Triton / CUDA kernels are invisible to it) or miscounts (the references'
elementwise scans): each kernel call is excluded from the counter and replaced by its published rule, so the count
is the same on every device and backend.

- selective scan, per block (VMamba's rule, Mamba issue 110; ../shared/reference/vmamba.md):
  9·L·(P·E)·N + L·(P·E) multiply-adds, L tokens, P paths, E = d_inner, N = d_state;
- mLSTM parallel form, per block and path (ViL; ../shared/reference/vil_mlstm.md): S²·E multiply-adds.

`macs` (= flops / 2) is the papers' "FLOPs" convention, comparable to their published G values.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import blocks.mixers.mlstm as _mlstm_module
import kernels.dispatch as _dispatch
from blocks import MIXERS, ArchSpec, InvalidSpecError, build_backbone

_KERNELS = ((_dispatch, "selective_scan"), (_dispatch, "selective_scan_paths"), (_dispatch, "mlstm"),
            (_mlstm_module, "mlstm_cell"))


@contextmanager
def _kernels_uncounted(counter: FlopCounterMode) -> Iterator[list[int]]:
    """While active, FLOPs the counter sees inside a dispatched kernel call are tallied in the yielded list (one
    total) so they can be subtracted; the kernels get their explicit rule instead. The module attributes are swapped
    only for this one counting forward and always restored."""
    excluded = [0]
    originals = [(mod, name, getattr(mod, name)) for mod, name in _KERNELS]

    def wrap(fn):
        def counted(*args, **kwargs):
            before = counter.get_total_flops()
            try:
                return fn(*args, **kwargs)
            finally:
                excluded[0] += counter.get_total_flops() - before
        return counted

    try:
        for mod, name, fn in originals:
            setattr(mod, name, wrap(fn))
        yield excluded
    finally:
        for mod, name, fn in originals:
            setattr(mod, name, fn)


def _sequence_terms(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, int], int]:
    """One forward of `x` under the FLOP counter; hooks on the mixers give each block's sequence length.
    Returns ({selective_scan, mlstm} multiply-adds, counter FLOPs without the kernels)."""
    ssm_cls, mlstm_cls = MIXERS.get("ssm"), MIXERS.get("mlstm")
    terms = {"selective_scan": 0, "mlstm": 0}

    def hook(module: nn.Module, args: tuple, _out: Any) -> None:
        L = args[0].shape[1]  # (B, L, C) with B = 1
        if isinstance(module, ssm_cls):
            pe = module.n_paths * module.d_inner
            terms["selective_scan"] += 9 * L * pe * module.d_state + L * pe
        elif isinstance(module, mlstm_cls):
            terms["mlstm"] += len(module.cells) * L * L * module.inner

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (ssm_cls, mlstm_cls))]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter, _kernels_uncounted(counter) as excluded:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return terms, counter.get_total_flops() - excluded[0]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _throughput(model: nn.Module, x: torch.Tensor, warmup: int, repeats: int, amp: bool) -> float:
    """Images per second of inference: median of `repeats` timed forwards after `warmup` untimed ones."""
    times = []
    for i in range(warmup + repeats):
        _sync(x.device)
        t0 = time.perf_counter()
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            model(x)
        _sync(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


@torch.no_grad()
def _peak_memory(model: nn.Module, x: torch.Tensor, amp: bool) -> int | None:
    """Peak CUDA memory (bytes) of one inference forward, weights included; None on the CPU (not measured)."""
    if x.device.type != "cuda":
        return None
    _sync(x.device)
    torch.cuda.reset_peak_memory_stats(x.device)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        model(x)
    _sync(x.device)
    return int(torch.cuda.max_memory_allocated(x.device))


def _measure_model(model: nn.Module, img_size: int, batch_size: int, device: torch.device, warmup: int,
                   repeats: int, amp: bool) -> dict[str, Any]:
    was_training = model.training
    model.eval()
    in_chans = getattr(getattr(model, "spec", None), "in_chans", 3)
    terms, counted = _sequence_terms(model, torch.randn(1, in_chans, img_size, img_size, device=device))
    flops = counted + 2 * sum(terms.values())
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    out = {
        "img_size": img_size,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": int(flops),
        "macs": int(flops // 2),
        "flops_terms": {"counter": int(counted), **{k: 2 * v for k, v in terms.items()}},
        "throughput": _throughput(model, x, warmup, repeats, amp),
        "peak_memory_bytes": _peak_memory(model, x, amp),
    }
    model.train(was_training)
    return out


def measure_cost(model_or_spec: nn.Module | ArchSpec, img_size: int, batch_size: int,
                 device: torch.device | str = "cpu", resolutions: list[int] | None = None, *, warmup: int = 2,
                 repeats: int = 5, amp: bool | None = None, kernel_backend: str = "auto") -> dict[str, Any]:
    """Parameters, FLOPs per image (see module docstring), inference throughput (images/s at `batch_size`) and peak
    CUDA memory (None on CPU) of a model, or of a spec built fresh. With `resolutions`, the same for the spec rebuilt
    at each image size under `"by_resolution"`: {size: dict or {"error": message}}."""
    dev = torch.device(device)
    amp = dev.type == "cuda" if amp is None else amp
    if isinstance(model_or_spec, ArchSpec):
        spec, model = model_or_spec, build_backbone(model_or_spec, kernel_backend=kernel_backend, device=dev)
    else:
        spec, model = getattr(model_or_spec, "spec", None), model_or_spec
    cost = _measure_model(model, img_size, batch_size, dev, warmup, repeats, amp)
    if resolutions:
        if spec is None:
            raise TypeError("resolutions need an ArchSpec (or a model with a .spec) to rebuild at each size")
        cost["by_resolution"] = {}
        for size in resolutions:
            try:
                m = build_backbone(spec.with_overrides({"img_size": int(size)}), kernel_backend=kernel_backend,
                                   device=dev)
            except InvalidSpecError as e:
                cost["by_resolution"][int(size)] = {"error": str(e)}
                continue
            cost["by_resolution"][int(size)] = _measure_model(m, int(size), batch_size, dev, warmup, repeats, amp)
            del m
    return cost


__all__ = ["measure_cost"]
