"""Cost of a backbone: parameters, FLOPs, throughput and peak memory, optionally at several resolutions.

FLOPs are PyTorch's `FlopCounterMode` (2 per multiply-add) on one image, plus explicit terms for what a generic
counter misses (Triton / CUDA kernels are invisible to it) or miscounts (the references' elementwise scans):

- every op called through `kernels.dispatch` is recorded (`record_kernel_calls`) with its FLOPs by the op's published
  rule and the FLOPs the counter saw inside the call, which are subtracted, so the count is the same on every device
  and backend (the rules live with the ops: the selective scan's 9·L·(P·E)·N + L·(P·E) multiply-adds, VMamba's rule;
  the mLSTM parallel form's S²·E, ViL's);
- every mixer adds its own `sequence_flops(tokens)` for work it does itself that the counter misses (0 for the
  built-in mixers, which do their sequence work through dispatched ops).

`macs` (= flops / 2) is the papers' "FLOPs" convention, comparable to their published G values.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from blocks import ArchSpec, InvalidSpecError, TokenMixer, build_backbone
from kernels.dispatch import OPS, record_kernel_calls


def count_flops(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """FLOPs of one forward of `x`, by source: {"counter": generic count without the dispatched kernels, one entry
    per op family ("selective_scan", "mlstm"), "mixers": the mixers' own rules}. The total is the sum."""
    terms = {"counter": 0, **{op.flops_term: 0 for op in OPS.values()}, "mixers": 0}

    def hook(module: TokenMixer, args: tuple[Any, ...]) -> None:
        batch, tokens = args[0].shape[:2]  # (B, L, C)
        terms["mixers"] += int(batch) * module.sequence_flops(int(tokens))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, TokenMixer)]
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter, record_kernel_calls(probe=counter.get_total_flops) as calls:
            model(x)
    finally:
        for h in handles:
            h.remove()
    for call in calls:
        terms[call.flops_term] += call.flops
    terms["counter"] = counter.get_total_flops() - sum(call.probed for call in calls)
    return terms


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
    terms = count_flops(model, torch.randn(1, in_chans, img_size, img_size, device=device))
    flops = sum(terms.values())
    x = torch.randn(batch_size, in_chans, img_size, img_size, device=device)
    out = {
        "img_size": img_size,
        "params": sum(p.numel() for p in model.parameters()),
        "flops": int(flops),
        "macs": int(flops // 2),
        "flops_terms": terms,
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


__all__ = ["count_flops", "measure_cost"]
