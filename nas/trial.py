"""One trial: build the backbone from its `ArchSpec`, train it, evaluate every epoch, measure its cost.

No Ray here (execute.py schedules trials; tests call `run_trial` directly). Recipe (DeiT / Vim style, scaled down):
AdamW with no weight decay on 1-D parameters, class/position tokens and the SSM's A_log and D (as Mamba marks them);
learning rate per step: linear warm-up from lr/warmup_steps to lr, then cosine to 0; bf16 autocast on CUDA only.
Seeded: the initialisation and every stochastic layer draw from `torch.manual_seed(seed)`, the batch order from its
own `torch.Generator(seed)`, so the same seed on the CPU gives identical metrics.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, ContextManager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from blocks import ArchSpec, build_backbone
from kernels.dispatch import record_kernel_paths

from .data import Dataset
from .errors import NasError, TrialDiverged
from .measure import measure_cost
from .train_step import TrainStep, make_optimizer

ReportFn = Callable[[int, dict[str, float]], None]
DIVERGENCE_CHECK_STEPS = 50  # steps between two host reads of the losses (see _train_epoch)
TRAIN_STEP_KEY = "train_step"  # kernel_paths entry: how the train step ran ("cuda_graph" or "eager")


@dataclass
class TrialResult:
    spec_id: str
    seed: int
    metrics: list[dict[str, float]]  # one row per epoch: epoch, train_loss, val_loss, val_acc, lr, seconds
    val_acc: float  # after the last epoch
    params: int
    cost: dict[str, Any]  # measure_cost's dict
    kernel_paths: dict[str, str]  # {op: backend} for every dispatched kernel that ran
    wall_seconds: float  # build + train + evaluate + measure
    train_seconds: float  # training steps and evaluation only
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    model: nn.Module | None = field(default=None, repr=False, compare=False)  # only with keep_model=True

    def to_dict(self) -> dict[str, Any]:
        model, self.model = self.model, None
        try:
            return asdict(self)
        finally:
            self.model = model


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on matrices and convs only; no decay on 1-D parameters and on what the model names in
    `no_weight_decay()` (the backbone's tokens and each mixer's own names, e.g. the SSM's A_log and D), as timm does."""
    named_off = model.no_weight_decay() if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in named_off else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, *, lr: float, total_steps: int, warmup_steps: int) -> float:
    """Learning rate for optimiser step `step` (0-based): linear warm-up, then half a cosine down to 0."""
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * lr * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _check_fits(spec: ArchSpec, data: Dataset) -> None:
    if spec.num_classes != data.num_classes or spec.img_size != data.img_size:
        raise NasError(
            f"spec {spec.id} is built for img_size={spec.img_size}, num_classes={spec.num_classes} but data set "
            f"{data.name!r} has img_size={data.img_size}, num_classes={data.num_classes}; use "
            f"spec.with_overrides({{'img_size': {data.img_size}, 'num_classes': {data.num_classes}}})")


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, batch_size: int, amp: bool) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) over (x, y)."""
    model.eval()
    loss_sum, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    for i in range(0, len(y), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(xb)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum")
        correct += (logits.argmax(-1) == yb).sum()
    return float(loss_sum) / len(y), float(correct) / len(y)


def _train_epoch(step_fn: TrainStep, schedule: Callable[[int], float], first_step: int, data: Dataset,
                 batch_size: int, gen: torch.Generator, epoch: int, check_every: int = DIVERGENCE_CHECK_STEPS) -> float:
    """One pass over the training set; returns the mean loss. `schedule(k)` is the learning rate of global step k
    (this epoch's first is `first_step`). The per-step losses stay on the device (a host read each step stalls the
    GPU until the step's kernels finish): they are checked for NaN/inf every `check_every` steps and at the end of
    the epoch, one host synchronisation each, and the first bad step raises `TrialDiverged`."""
    step_fn.model.train()
    n = len(data.y_train)
    order = torch.randperm(n, generator=gen).to(data.device)
    starts = range(0, n, batch_size)
    losses = torch.empty(len(starts), device=data.device, dtype=torch.float32)
    sizes = torch.tensor([min(batch_size, n - i) for i in starts], dtype=torch.float64)
    checked = 0
    for step, i in enumerate(starts):
        step_fn.set_lr(schedule(first_step + step))
        losses[step] = step_fn(order[i:i + batch_size])
        if step + 1 - checked >= check_every or step == len(starts) - 1:
            _raise_if_diverged(losses[checked:step + 1], epoch, checked)
            checked = step + 1
    return float((losses.double().cpu() * sizes).sum() / n)


def _raise_if_diverged(losses: Tensor, epoch: int, first_step: int) -> None:
    """One host read: raise `TrialDiverged` at the first non-finite loss of `losses` (steps from `first_step`)."""
    bad = (~torch.isfinite(losses)).nonzero()
    if len(bad):
        step = int(bad[0, 0])
        raise TrialDiverged(epoch, float(losses[step]), first_step + step)


def scan_tiles(scan_checkpoints: int | None, device: torch.device | str) -> ContextManager[None]:
    """The block a trial trains in: with `train.scan_checkpoints` set and a CUDA device, the selective scan's lane
    kernels checkpoint every that many steps (`kernels.triton.scan_config.lane_defaults`); otherwise nothing changes
    (the CPU runs the reference scan, which keeps no checkpoints)."""
    if scan_checkpoints is None or torch.device(device).type != "cuda":
        return contextlib.nullcontext()
    from kernels.triton.scan_config import lane_defaults  # imports Triton: only where the kernels can run

    return lane_defaults(steps=scan_checkpoints)


def run_trial(spec: ArchSpec, data: Dataset, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
              warmup_epochs: float, seed: int, device: torch.device | str = "cpu", amp: bool | None = None,
              report: ReportFn | None = None, kernel_backend: str = "auto",
              measure: dict[str, Any] | None = None, keep_model: bool = False,
              compile_model: bool = False, cuda_graph: bool = True) -> TrialResult:
    """Train `spec` on `data` and return its curves, final accuracy, cost and kernel paths.

    `report(epoch, {train_loss, val_loss, val_acc, lr, seconds})` is called after every epoch (1-based), e.g. to
    forward to Ray Tune. A NaN/inf loss raises `TrialDiverged`. `measure` is passed to `measure_cost`
    (e.g. {"repeats": 5, "resolutions": [32, 64]}); `measure={"skip": True}` leaves cost empty. `keep_model=True`
    returns the trained model in `result.model` (to save it as the trial's model file). `compile_model=True` trains
    through `torch.compile(model)` (off by default: benchmarks/RESULTS.md, session 4, says where it pays).
    `cuda_graph=True` (the default; CUDA only, not with `compile_model`) replays each full batch's step from a CUDA
    graph (nas/train_step.py); `kernel_paths["train_step"]` says whether it ran ("cuda_graph") or fell back
    ("eager"; `extra["graph_fallback"]` says why).
    """
    t_wall = time.perf_counter()
    dev = torch.device(device)
    if amp is None:
        amp = dev.type == "cuda"
    if amp and dev.type != "cuda":
        raise NasError(f"amp=True needs a CUDA device (device={dev}); pass amp=None or False on the CPU")
    if epochs < 1 or batch_size < 1 or warmup_epochs < 0:
        raise NasError(f"need epochs >= 1, batch_size >= 1, warmup_epochs >= 0; got {epochs}, {batch_size}, "
                       f"{warmup_epochs}")
    _check_fits(spec, data)
    data = data if data.device == dev else Dataset(data.name, data.x_train.to(dev), data.y_train.to(dev),
                                                   data.x_test.to(dev), data.y_test.to(dev), data.num_classes,
                                                   data.img_size, data.knobs)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_backbone(spec, kernel_backend=kernel_backend, device=dev)
    steps_per_epoch = math.ceil(len(data.y_train) / batch_size)
    total, warmup = epochs * steps_per_epoch, round(warmup_epochs * steps_per_epoch)
    graphed = cuda_graph and dev.type == "cuda" and not compile_model
    opt = make_optimizer(param_groups(model, weight_decay), lr, dev, graphed)
    train_model = torch.compile(model) if compile_model else model  # shares the parameters and their optimizer
    step_fn = TrainStep(train_model, opt, data.x_train, data.y_train, batch_size, amp, graph=graphed)

    def schedule(k: int) -> float:
        return lr * lr_at(k, lr=1.0, total_steps=total, warmup_steps=warmup)

    metrics: list[dict[str, float]] = []
    train_seconds = 0.0
    with record_kernel_paths() as used:
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            lr_now = schedule((epoch - 1) * steps_per_epoch)
            train_loss = _train_epoch(step_fn, schedule, (epoch - 1) * steps_per_epoch, data, batch_size, gen, epoch)
            val_loss, val_acc = evaluate(model, data.x_test, data.y_test, batch_size, amp)
            if not math.isfinite(val_loss):
                raise TrialDiverged(epoch, val_loss)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            seconds = time.perf_counter() - t0
            train_seconds += seconds
            row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "val_acc": val_acc,
                   "lr": lr_now, "seconds": seconds}
            metrics.append(row)
            if report is not None:
                report(epoch, {k: v for k, v in row.items() if k != "epoch"})
    paths = {**used, TRAIN_STEP_KEY: step_fn.mode}
    extra = {"graph_fallback": step_fn.fallback} if step_fn.fallback else {}
    opts = dict(measure or {})
    cost = {} if opts.pop("skip", False) else measure_cost(model, spec.img_size, batch_size, dev, **opts)
    return TrialResult(spec_id=spec.id, seed=seed, metrics=metrics, val_acc=metrics[-1]["val_acc"],
                       params=sum(p.numel() for p in model.parameters()), cost=cost, kernel_paths=paths, extra=extra,
                       wall_seconds=time.perf_counter() - t_wall, train_seconds=train_seconds, device=str(dev),
                       model=model if keep_model else None)


__all__ = ["TrialResult", "evaluate", "lr_at", "param_groups", "run_trial"]
