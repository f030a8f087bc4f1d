"""The body of one trial on its worker, beside `nas.trial`: choose the device, cap its GPU memory, make the data, train,
report every epoch, and hand back the last report with the model file. No Ray here: the Ray Tune adapter
(`nas.execute`) passes Tune's report function; tests and scripts pass their own.

The cell arrives resolved (`TrialStart`: spec JSON, seed, key); nothing here works out a spec again.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .records import TrialStart
from .schema import ExecutionConfig, Study, TrainConfig

if TYPE_CHECKING:
    import torch

MODEL_FILE = "model.safetensors"
FINAL = "final"  # set in the last report of a trial that trained to the end
FAULT_ENV = "NAS_INJECT_FAULT"

# report(metrics, folder holding the model file or None): every epoch but the last without a folder; the last, with
# the cost and the objectives, with it
Report = Callable[[dict[str, Any], "Path | None"], None]


def choose_device(train: TrainConfig, execution: ExecutionConfig) -> torch.device:
    """The study's device (`auto`: CUDA when there is one), with the per-trial GPU memory cap applied: several small
    trials share a GPU (fractional `gpus_per_trial`) and one must not take the others' memory."""
    import torch

    want_cuda = train.device == "cuda" or (train.device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return torch.device("cpu")
    dev = torch.device("cuda", torch.cuda.current_device())  # memory APIs want an index
    if execution.gpu_memory_gb:
        total = torch.cuda.get_device_properties(dev).total_memory / 2**30
        torch.cuda.set_per_process_memory_fraction(min(1.0, execution.gpu_memory_gb / total), dev)
    return dev


def device_label(dev: torch.device) -> str:
    """The device as the store records it: for a GPU, which physical one (Ray gives each worker its GPUs through
    CUDA_VISIBLE_DEVICES, so `cuda:0` alone would name a different card in every worker), its name and UUID; a
    multi-GPU study shows in the store how its trials spread over the cards."""
    if dev.type != "cuda":
        return str(dev)
    import torch

    props = torch.cuda.get_device_properties(dev)
    uuid = str(getattr(props, "uuid", "") or "")
    return gpu_label(dev.index or 0, os.environ.get("CUDA_VISIBLE_DEVICES"), props.name, uuid)


def gpu_label(index: int, visible: str | None, name: str, uuid: str) -> str:
    """`cuda:0 = GPU 3 (NVIDIA H200, GPU-1a2b3c4d)`: the process's index, the host's GPU number it maps to (from
    CUDA_VISIBLE_DEVICES when set), the card's name and the start of its UUID."""
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else []
    host = ids[index] if index < len(ids) else str(index)
    short = uuid if uuid.startswith("GPU-") else (f"GPU-{uuid}" if uuid else "")
    return f"cuda:{index} = GPU {host} ({name}" + (f", {short[:12]}" if short else "") + ")"


def injected_fault(levels: dict[str, str]) -> str:
    """Fault drills: `NAS_INJECT_FAULT=readout=tail` makes every trial at that level raise after its first epoch
    (reported first, so the failure comes after partial results, as a real crash would)."""
    spec = os.environ.get(FAULT_ENV, "")
    if "=" not in spec:
        return ""
    key, value = spec.split("=", 1)
    return spec if str(levels.get(key)) == value else ""


def run_task(study: Study, task: TrialStart, report: Report, *, node_id: str = "") -> None:
    """Train the cell `task` as `study` says and report: every epoch (`report(row, None)`), then the last epoch with
    the cost, the objective values and `FINAL: True`, with a folder holding the model file. Raises what training
    raises (the adapter records it as the trial's error)."""
    import torch

    from blocks import ArchSpec
    from blocks.model_file import save_backbone

    from .data import make_dataset
    from .trial import run_trial, scan_tiles

    spec = ArchSpec.from_json(task.spec_json)
    torch.set_num_threads(max(1, int(study.execution.cpus_per_trial)))
    dev = choose_device(study.train, study.execution)
    where = device_label(dev)
    d, tr, m = study.data, study.train, study.measure
    data = make_dataset(d.name, seed=task.seed, n_train=d.n_train, n_test=d.n_test, img_size=d.img_size, device=dev,
                        **d.knobs)
    held: dict[str, Any] = {}
    fault = injected_fault(task.levels)

    def epoch_done(epoch: int, row: dict[str, float]) -> None:
        msg = {**row, "epoch": epoch, "node_id": node_id, "device": where}
        if fault:
            report(msg, None)
            raise RuntimeError(f"injected failure ({FAULT_ENV}={fault}) after epoch {epoch}")
        if epoch < tr.epochs:
            report(msg, None)
        else:
            held.update(msg)  # the last epoch goes out with the cost and the model

    measure = {"skip": True} if m.skip else {"repeats": m.repeats, "resolutions": list(m.resolutions) or None}
    with scan_tiles(tr.scan_checkpoints, dev):
        result = run_trial(spec, data, epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr,
                           weight_decay=tr.weight_decay, warmup_epochs=tr.warmup_epochs, seed=task.seed, device=dev,
                           amp=tr.amp, report=epoch_done, kernel_backend=tr.kernel_backend, measure=measure,
                           keep_model=True, cuda_graph=tr.cuda_graph)
    last, cost = result.metrics[-1], result.cost
    final = {**held, FINAL: True, "num_params": result.params, "cost": jsonable(cost),
             "kernel_paths": result.kernel_paths, "wall_seconds": result.wall_seconds,
             "train_seconds": result.train_seconds, "val_acc": last["val_acc"], "val_loss": last["val_loss"],
             "train_loss": last["train_loss"], "params": result.params, "flops": cost.get("flops"),
             "throughput": cost.get("throughput"), "peak_memory_bytes": cost.get("peak_memory_bytes")}
    with tempfile.TemporaryDirectory() as tmp:
        save_backbone(result.model.cpu(), spec, Path(tmp) / MODEL_FILE,
                      {"study": study.name, "key": task.key, "seed": str(task.seed), "val_acc": f"{last['val_acc']}"})
        report(final, Path(tmp))


def jsonable(x: Any) -> Any:
    """Nested dicts and lists with string keys and no NaN/inf (they become None): safe to send and store."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


__all__ = ["FAULT_ENV", "FINAL", "MODEL_FILE", "Report", "choose_device", "device_label", "gpu_label", "injected_fault",
           "jsonable", "run_task"]
