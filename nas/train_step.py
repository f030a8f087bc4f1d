"""One training step (forward under autocast, cross-entropy, backward, AdamW), run eagerly or replayed from a CUDA graph.

Why a graph: at the sizes studies train (tens of thousands of tokens per batch, a dozen blocks), a step is a few
thousand small kernels, and the Python that launches them one by one is slower than the GPU that runs them, so the GPU
waits. A CUDA graph captures the whole step once (forward, backward and the optimizer's update) and replays it with
one launch. What capture needs, and how this module provides it:

- fixed shapes and addresses: the batch is gathered inside the graph from the trial's data set by a static index
  buffer; a batch of another size (the last, partial one) runs eagerly with the same optimizer;
- no host reads inside the step: the learning rate lives in a device tensor (`set_lr` fills it), AdamW runs fused
  with `capturable=True`, and the loss stays on the device (valid until the next call);
- the first `warmup` full batches run eagerly on a side stream (they are real steps): Triton compiles, cuBLAS picks
  its kernels and AdamW creates its state before capture.

A model that cannot be captured (an op that syncs with the host, an unsupported kernel) makes the step fall back to
eager steps for the rest of the trial; `mode` and `fallback` say what ran and why. Numerically a graphed step is the
eager step (same kernels); only AdamW's implementation differs from the CPU's (fused instead of foreach).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

GRAPH_WARMUP_STEPS = 3


def make_optimizer(groups: list[dict[str, Any]], lr: float, device: torch.device,
                   graphed: bool) -> torch.optim.AdamW:
    """AdamW (betas 0.9, 0.999) over `groups`; for a graphed step the learning rate is a device tensor shared by every
    group and the update is fused and capturable."""
    if not graphed:
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    lr_t = torch.tensor(lr, dtype=torch.float32, device=device)
    return torch.optim.AdamW(groups, lr=lr_t, betas=(0.9, 0.999), fused=True, capturable=True)


class TrainStep:
    """`step(idx)` trains `model` on rows `idx` of (x, y) and returns the batch's mean cross-entropy (0-dim, on the
    device). `graph=True` (CUDA only) captures full batches of `batch_size` in a CUDA graph after `warmup` eager
    steps; the optimizer must come from `make_optimizer(..., graphed=True)`."""

    def __init__(self, model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor, batch_size: int,
                 amp: bool, graph: bool = False, warmup: int = GRAPH_WARMUP_STEPS) -> None:
        if graph and x.device.type != "cuda":
            raise ValueError(f"a CUDA graph needs the data on a CUDA device, not {x.device}")
        self.model, self.opt, self.x, self.y = model, opt, x, y
        self.batch_size, self.amp, self.warmup = batch_size, amp, warmup
        self.mode = "cuda_graph" if graph else "eager"
        self.fallback: str | None = None
        self._full_steps = 0
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static_idx: Tensor | None = None
        self._static_loss: Tensor | None = None

    def set_lr(self, lr: float) -> None:
        """The learning rate of the next step, in every parameter group (a device fill when graphed: no host read)."""
        for group in self.opt.param_groups:
            if isinstance(group["lr"], Tensor):
                group["lr"].fill_(lr)
            else:
                group["lr"] = lr

    def __call__(self, idx: Tensor) -> Tensor:
        if self.mode != "cuda_graph" or len(idx) != self.batch_size:
            return self._eager(idx)
        self._full_steps += 1
        if self._full_steps <= self.warmup:
            side = torch.cuda.Stream(device=idx.device)
            side.wait_stream(torch.cuda.current_stream(idx.device))
            with torch.cuda.stream(side):
                loss = self._eager(idx)
            torch.cuda.current_stream(idx.device).wait_stream(side)
            return loss
        if self._graph is None:
            try:
                self._capture(idx)
            except Exception as exc:  # noqa: BLE001 - any capture failure: train on, eagerly, and say why
                self._give_up(exc)
                return self._eager(idx)
        assert self._static_idx is not None and self._graph is not None and self._static_loss is not None
        self._static_idx.copy_(idx)
        self._graph.replay()
        return self._static_loss

    def _loss(self, idx: Tensor, cache: bool) -> Tensor:
        with torch.autocast(self.x.device.type, dtype=torch.bfloat16, enabled=self.amp, cache_enabled=cache):
            logits = self.model(self.x.index_select(0, idx))
        return F.cross_entropy(logits.float(), self.y.index_select(0, idx))

    def _eager(self, idx: Tensor) -> Tensor:
        loss = self._loss(idx, cache=True)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def _capture(self, idx: Tensor) -> None:
        """Capture one full step. A capture that fails mid-way (e.g. a host read in the model) is undone: torch's
        `graph` context does not restore the current stream when ending the aborted capture raises, and the CUDA
        generator stays marked as capturing, so every later random op on the device would fail ("Offset increment
        outside graph capture"); both are put back here before the error goes on to `_give_up`."""
        self._static_idx = idx.clone()
        self.opt.zero_grad(set_to_none=True)  # the captured backward allocates the gradients in the graph's pool
        stream = torch.cuda.current_stream(idx.device)
        generator = torch.cuda.default_generators[idx.device.index if idx.device.index is not None
                                                  else torch.cuda.current_device()]
        rng_before = generator.clone_state()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                loss = self._loss(self._static_idx, cache=False)  # autocast's weight cache cannot outlive a capture
                loss.backward()
                self.opt.step()
                self._static_loss = loss.detach()
        except Exception:
            torch.cuda.set_stream(stream)
            generator.graphsafe_set_state(rng_before)
            self._static_loss = None
            raise
        self._graph = graph

    def _give_up(self, exc: BaseException) -> None:
        while exc.__context__ is not None:  # the first error (e.g. the host read), not ending the broken capture's
            exc = exc.__context__
        self.mode, self._graph = "eager", None
        self.fallback = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        self.opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        warnings.warn(f"the train step could not be captured in a CUDA graph ({self.fallback}); training eagerly",
                      RuntimeWarning, stacklevel=3)


__all__ = ["GRAPH_WARMUP_STEPS", "TrainStep", "make_optimizer"]
