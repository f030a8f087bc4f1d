"""The trial's train step replayed from a CUDA graph against the same step run eagerly, in one script run.

    python benchmarks/bench_step_graph.py [--time-limit 300] [--rows study vim_tiny ...] [--trial] [--out graph.md]
    python benchmarks/bench_step_graph.py --smoke      # CPU check of the script (eager rows only; times mean nothing)
    python benchmarks/bench_step_graph.py --rows study --modes graph --scan scatter=bwd_bc:scatter stretch4=steps:4

Rows: "study" is the shape of issue 14's study measurement (benchmarks/bench_study_gpu.sh: Vim blocks of width 192,
depth 12, d_state 16, 8×8 patches of 64² images, middle class token, batch 256: 65 tokens); the presets at
benchmarks/bench_train.py's batches and resolutions. Each row trains the same model from the same initialisation
three ways, through `nas.train_step.TrainStep` as a trial does (a learning rate set before every step):

    eager        AdamW foreach with a float learning rate: the trial's step before CUDA graphs (the baseline);
    eager fused  AdamW fused and capturable, learning rate on the device: what the graph replays, run eagerly;
    graph        the same, captured once and replayed.

ms/step = CUDA-event time of `--steps` consecutive steps / steps, after warm-up (so the CPU's launch rate counts,
as in training; median of 3 such runs). "GPU busy" = the kernels' summed time per eager step (torch.profiler): when
it is well below the eager ms/step, the launching CPU is the bottleneck and a graph pays. "peak MiB" = the most
memory the row's own tensors held at once, over its model's build, the warm-up (for the graph: the capture, whose
pool holds the step's activations) and the timed steps, less what was allocated before the row began.
`--scan NAME=FIELD:VALUE,...` runs the rows again with the selective scan's default tile choice changed (fields of
`kernels.triton.scan_config.ScanConfig`, applied where the default is the lane forward, i.e. a multi-path route with
N ≥ 16, and forward and backward get the same change), labelled `row [NAME]`, each with its graph ms as a ratio to
the default's in the same run: the graph replay is the one timing of a backward variant that the launching CPU's
scheduling does not move (per-call CUDA events did, sessions 17-18). `--modes` limits the three modes (the graph
alone is the quick ranking).
`--trial` also runs the study row's whole trial (`run_trial`, 3 epochs of 8,192 images, cost measured) with and
without the graph and prints where its seconds go.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import pathlib
import statistics
import sys
import time
from typing import Iterator

import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_baselines import versions_line  # noqa: E402

PRESET_ROWS = {"vim_tiny": (128, 224), "vmamba_tiny": (64, 224), "vil_tiny": (128, 192),
               "mambaout_femto": (128, 224), "deit_tiny": (128, 224)}
STUDY = {"route": "bi", "dims": [192], "depths": [12], "mixer.params.d_state": 16, "tokenizer.params.patch_size": 8,
         "readout": "middle"}


def study_spec(img_size: int = 64, num_classes: int = 10):
    """The spec of the study row: the cls_token study's search space with bench_study_gpu.sh's fixed choices."""
    from nas.config import load_study

    sf = load_study("cls_token_position", sets=[
        "fixed={route: bi, dims: [192], depths: [12], mixer.params.d_state: 16, tokenizer.params.patch_size: 8}",
        "factors={readout: [middle]}", "reference={readout: middle}",
        f"data={{name: shapes, n_train: 8192, n_test: 5000, img_size: {img_size}}}",
        "train={epochs: 3, batch_size: 256, lr: 1.0e-3, weight_decay: 0.05, warmup_epochs: 0.5, device: cuda}"])
    from nas.plan import plan_study

    return sf, plan_study(sf).arms[0].spec


def build(row: str, device: str, smoke: bool):
    """(model factory, batch, resolution, classes) of a row."""
    from blocks import build_backbone, get_preset

    if row == "study":
        _, spec = study_spec()
        batch, res = (4, 64) if smoke else (256, 64)
    else:
        batch, res = (2, 32) if smoke else PRESET_ROWS[row]
        spec = get_preset(row)
        if spec.img_size != res:
            spec = spec.with_overrides({"img_size": res})
    return (lambda: build_backbone(spec, device=device)), batch, res, spec.num_classes


def parse_variant(text: str) -> tuple[str, dict]:
    """"NAME=FIELD:VALUE,..." → (NAME, {field: value}) with values typed as ScanConfig's defaults are; a field
    ScanConfig lacks, or a value of the wrong kind, is refused here rather than after the first row."""
    from kernels.triton.scan_config import ScanConfig

    name, sep, body = text.partition("=")
    if not sep or not name or not body:
        raise ValueError(f"--scan wants NAME=FIELD:VALUE[,FIELD:VALUE...], got {text!r}")
    changes: dict = {}
    for item in body.split(","):
        field, sep, value = item.partition(":")
        if not sep or field not in ScanConfig._fields:
            raise ValueError(f"--scan {name}: {item!r} is not FIELD:VALUE with a ScanConfig field "
                             f"({', '.join(ScanConfig._fields)})")
        kind = int if field in ("bd", "steps", "warps") else type(ScanConfig._field_defaults.get(field, ""))
        try:
            changes[field] = kind(value)
        except ValueError:
            raise ValueError(f"--scan {name}: {field} wants {kind.__name__}, got {value!r}") from None
    return name, changes


@contextlib.contextmanager
def scan_variant(changes: dict) -> Iterator[list[int]]:
    """Within the block the selective scan's default lane tile choice gets `changes`, as a user's
    `kernels.triton.scan_config.lane_defaults` block gives it; yields a one-element count of the scans that took
    the lane kernels, so a variant that never applied is reported as such instead of as a timing of the default."""
    from kernels.triton import selective_scan as scan
    from kernels.triton.scan_config import lane_defaults

    original = scan._default_for
    applied = [0]

    def counted(u: torch.Tensor, n_state: int):
        cfg = original(u, n_state)
        applied[0] += cfg.variant == "lane"
        return cfg

    scan._default_for = counted
    try:
        with lane_defaults(**changes):
            yield applied
    finally:
        scan._default_for = original


def body_of(changes: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in changes.items())


def time_steps(step, idx_list, steps: int, runs: int = 3) -> float:
    """ms per step over `steps` consecutive steps (median of `runs`), CUDA events; CPU clock on the CPU."""
    def once() -> float:
        if torch.cuda.is_available():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            for k in range(steps):
                step.set_lr(1e-4)
                step(idx_list[k % len(idx_list)])
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end) / steps
        t0 = time.perf_counter()
        for k in range(steps):
            step.set_lr(1e-4)
            step(idx_list[k % len(idx_list)])
        return (time.perf_counter() - t0) * 1e3 / steps
    return statistics.median(once() for _ in range(runs))


def gpu_busy_ms(step, idx_list, steps: int = 3, top: int = 0) -> tuple[float, list[str]]:
    """Summed CUDA kernel time per step (torch.profiler) of `step`, and the `top` kernels as table lines."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for k in range(steps):
            step.set_lr(1e-4)
            step(idx_list[k % len(idx_list)])
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total_us = sum(e.self_device_time_total for e in events)
    events.sort(key=lambda e: -e.self_device_time_total)
    lines = [f"| {e.key[:90].replace('|', '/')} | {e.self_device_time_total / 1e3 / steps:.2f} | "
             f"{100 * e.self_device_time_total / total_us:.1f} | {e.count // steps} |" for e in events[:top]]
    return total_us / 1e3 / steps, lines


def measure_row(row: str, device: str, steps: int, smoke: bool, top: int = 0,
                modes: tuple[str, ...] = ("eager", "eager fused", "graph")) -> dict:
    from nas.train_step import TrainStep, make_optimizer
    from nas.trial import param_groups

    factory, batch, res, classes = build(row, device, smoke)
    n = batch * 4
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, 3, res, res, device=device, generator=g)
    y = torch.randint(0, classes, (n,), device=device, generator=g)
    idx_list = [torch.arange(k * batch, (k + 1) * batch, device=device) for k in range(4)]
    amp = device == "cuda"
    out: dict = {"batch": batch, "res": res}
    runs = [("eager", False, False)] + ([("eager fused", True, False), ("graph", True, True)] if amp else [])
    for name, fused, graph in [r for r in runs if r[0] in modes or not amp]:
        if amp:  # the row's own peak: from before its model is built, less what earlier rows left allocated
            gc.collect()
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        torch.manual_seed(0)
        model = factory()
        opt = make_optimizer(param_groups(model, 0.05), 1e-4, torch.device(device), graphed=fused)
        step = TrainStep(model, opt, x, y, batch, amp=amp, graph=graph)
        model.train()
        for k in range(5):  # warm-up: compiles, the graph's eager steps and its capture
            step.set_lr(1e-4)
            step(idx_list[k % 4])
        out[name] = time_steps(step, idx_list, steps)
        if graph:
            out["graph_mode"] = step.mode + (f" ({step.fallback})" if step.fallback else "")
        if name == "eager" and amp:
            out["busy"], out["kernels"] = gpu_busy_ms(step, idx_list, top=top)
        if amp:  # over the build, the warm-up (the graph's capture: its pool's activations) and the timed steps
            torch.cuda.synchronize()
            out[f"{name} peak"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        del model, opt, step
        gc.collect()  # the captured graph sits in reference cycles: without this its memory pool outlives the row and
        # every later row's peak includes it
        if amp:
            torch.cuda.empty_cache()
    return out


def trial_phases(graph: bool) -> dict:
    """One trial of the study row (3 epochs × 8,192 images, cost measured as the study does), seconds by phase."""
    from nas.data import make_dataset
    from nas.trial import run_trial

    sf, spec = study_spec()
    st = sf.study
    t0 = time.perf_counter()
    data = make_dataset("shapes", seed=0, n_train=st.data.n_train, n_test=st.data.n_test, img_size=64,
                        device="cuda", clutter=0.3)
    torch.cuda.synchronize()
    t_data = time.perf_counter() - t0
    res = run_trial(spec, data, epochs=st.train.epochs, batch_size=st.train.batch_size, lr=st.train.lr,
                    weight_decay=st.train.weight_decay, warmup_epochs=st.train.warmup_epochs, seed=0, device="cuda",
                    measure={"repeats": st.measure.repeats, "resolutions": list(st.measure.resolutions) or None},
                    cuda_graph=graph)
    epochs = [m["seconds"] for m in res.metrics]
    return {"data": t_data, "epochs": epochs, "train": res.train_seconds, "wall": res.wall_seconds,
            "other": res.wall_seconds - res.train_seconds, "step": res.kernel_paths.get("train_step"),
            "val_acc": res.val_acc}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", nargs="*", default=["study", *PRESET_ROWS])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--time-limit", type=float, default=300.0)
    ap.add_argument("--trial", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--kernels", type=int, default=0, help="print each row's N most costly kernels (eager step)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--modes", nargs="*", default=["eager", "eager fused", "graph"],
                    choices=["eager", "eager fused", "graph"], help="which of the step's three forms to time")
    ap.add_argument("--scan", nargs="*", default=[], metavar="NAME=FIELD:VALUE,...",
                    help="also run the rows with the scan's default tile choice changed (see the docstring)")
    args = ap.parse_args()
    try:
        variants = [("", {})] + [parse_variant(v) for v in args.scan]
    except ValueError as exc:
        ap.error(str(exc))
    device = "cpu" if args.smoke or not torch.cuda.is_available() else "cuda"
    steps = 2 if args.smoke else args.steps
    start = time.perf_counter()
    lines = [versions_line(device), "",
             "| row | batch | input | eager ms/step | GPU busy ms/step | eager fused ms | graph ms | graph / eager "
             "(speed-up) | peak MiB eager / graph | graph ran |", "|---|---|---|---|---|---|---|---|---|---|"]

    kernel_tables: list[str] = []

    def flush() -> None:
        """Write what is measured so far, so a run cut short by a time-out still leaves its rows."""
        if args.out:
            pathlib.Path(args.out).write_text("\n".join(lines) + "\n")

    base_graph: dict[str, float] = {}
    variant_lines: list[str] = []
    for (vname, changes), row in [(v, r) for v in variants for r in args.rows]:
        label = f"{row} [{vname}]" if vname else row
        flush()
        if time.perf_counter() - start > args.time_limit:
            lines.append(f"| {label} | skipped: time limit |")
            continue
        try:
            with scan_variant(changes) as applied:
                r = measure_row(row, device, steps, args.smoke, args.kernels if not vname else 0, tuple(args.modes))
        except Exception as exc:  # a row that fails says why; the table goes on
            lines.append(f"| {label} | failed: {type(exc).__name__}: {str(exc)[:200]} |")
            print(lines[-1], flush=True)
            continue
        f = lambda k: f"{r[k]:.2f}" if k in r else "-"  # noqa: E731
        speed = f"{r['eager'] / r['graph']:.2f}×" if "graph" in r and "eager" in r else "-"
        peak = " / ".join(f"{r[k]:.0f}" if k in r else "-" for k in ("eager peak", "graph peak"))
        lines.append(f"| {label} | {r['batch']} | {r['res']}² | {f('eager')} | {f('busy')} | {f('eager fused')} | "
                     f"{f('graph')} | {speed} | {peak} | {r.get('graph_mode', '-')} |")
        print(lines[-1], flush=True)
        key = "graph" if "graph" in r else "eager"
        if not vname:
            base_graph[row] = r[key]
        elif not applied[0]:
            variant_lines.append(f"| {label} | {body_of(changes)} | - | not applied: the row runs no lane-forward "
                                 "scan |")
        elif row in base_graph:
            variant_lines.append(f"| {label} | {body_of(changes)} | {r[key]:.2f} | "
                                 f"{base_graph[row] / r[key]:.3f}× (default {base_graph[row]:.2f} ms, {key}) |")
        if r.get("kernels"):
            kernel_tables += ["", f"{row}: top kernels of the eager step (torch.profiler, per step)", "",
                              "| kernel | ms | % of GPU busy | calls |", "|---|---|---|---|", *r["kernels"]]
    if args.trial and device == "cuda":
        lines += ["", "| trial (study row) | data s | epoch s | train+eval s | build+measure s | wall s | val_acc |",
                  "|---|---|---|---|---|---|---|"]
        for graph in (False, True):
            flush()
            if time.perf_counter() - start > args.time_limit:
                lines.append(f"| graph={graph} | skipped: time limit |")
                continue
            try:
                p = trial_phases(graph)
                lines.append(f"| {p['step']} | {p['data']:.2f} | {', '.join(f'{e:.2f}' for e in p['epochs'])} | "
                             f"{p['train']:.2f} | {p['other']:.2f} | {p['wall']:.2f} | {p['val_acc']:.3f} |")
            except Exception as exc:  # noqa: BLE001
                lines.append(f"| graph={graph} | failed: {type(exc).__name__}: {str(exc)[:200]} |")
            print(lines[-1], flush=True)
    if variant_lines:
        lines += ["", "| row [variant] | changes to the default tile choice | ms/step | default / variant (>1: the "
                  "variant is faster) |", "|---|---|---|---|", *variant_lines]
    lines += kernel_tables
    text = "\n".join(lines) + f"\n\nrun: {time.perf_counter() - start:.0f} s, {steps} steps per timing\n"
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
