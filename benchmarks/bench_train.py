"""Train-step speed of the seed presets against what users of the seed codebases would run, in one script run.

Run on the GPU machine (one command, bounded; baselines that need a build wait for it up to --wait-for-baselines):
    python benchmarks/bench_train.py --time-limit 480 [--wait-for-baselines 470] [--quick] [--presets vim_tiny ...]
        [--profile vim_tiny ...] [--compile deit_tiny vim_tiny] [--out train.md]
Check the script on a CPU (tiny images and batches, reference kernels; the times mean nothing):  ... --smoke

A train step is forward to the logits under bf16 autocast (fp32 weights), cross-entropy on fixed random labels,
backward, AdamW (lr 1e-4, torch's default foreach implementation): the same inputs, labels and optimizer for every
row of a preset. Time = median of CUDA-event timings of single steps after warm-up (compiles and autotuning stay out),
images/s = batch / time; peak = torch.cuda.max_memory_allocated over one more step (weights, optimizer state,
activations, gradients). Our rows time the step as a trial runs it (nas/train_step.py: replayed from a CUDA graph,
AdamW fused and capturable); `--eager PRESET ...` adds our eager step with torch's default AdamW (the step before the
graph) for comparison; the baselines run eagerly, as their codebases train. Rows (ours = `blocks.build_backbone(preset)`
with backend "auto"):

    (a) vim_tiny with every SSM mixer computed as Vim's code runs it: mamba-ssm's fused `mamba_inner_fn`
        (causal-conv1d's conv, x_proj, dt_proj, the scan and out_proj in one autograd op) on the input and on its
        flip, outputs added with out_proj halved (= Vim's v2 block, ../shared/tools/gpu-baselines/README.md);
        same parameters, the rest of the backbone unchanged. Needs mamba_ssm and causal_conv1d.
    (b) vil_tiny with the mLSTM cell replaced by `mlstm_kernels`' chunkwise Triton kernels (TFLA; each kernel in a
        child process: a Triton compile abort must not take the table with it).
    (c) vmamba_tiny with backend "mamba_ssm": cross-scan copies, mamba-ssm's scan, cross-merge (VMamba's pipeline).
    (d) timm's deit_tiny_patch16_224 and mambaout_femto (random init, no download).
Targets (issue 14): vim_tiny ≥ 1.5× (a), vil_tiny ≥ 1.3× (b), vmamba_tiny ≥ 2× (c) in images/s; every SSM and
mLSTM preset's time per image within 2.5× of deit_tiny's (ours) at its resolution. Beside each of those the table
gives the time per dense MAC (matmuls, convs, attention of one image's forward, counted by torch on the CPU): the
presets do different work per image (vmamba_tiny ~3.9× deit_tiny's MACs), which time per image alone hides.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_baselines import (BASELINES, baseline_available, versions_line)  # noqa: E402

PRESETS = {"vim_tiny": (128, 224), "vmamba_tiny": (64, 224), "vil_tiny": (128, 192), "mambaout_femto": (128, 224),
           "deit_tiny": (128, 224)}
SMOKE = {"vim_tiny": (2, 32), "vmamba_tiny": (2, 64), "vil_tiny": (2, 32), "mambaout_femto": (2, 32),
         "deit_tiny": (2, 32)}
TARGETS = [("vim_tiny", "a", 1.5), ("vil_tiny", "b", 1.3), ("vmamba_tiny", "c", 2.0)]
WITHIN_DEIT = 2.5
MACS_NOTE = ("\ndense GMAC/image: one image's forward in matmuls, convolutions and attention (torch's FlopCounterMode, "
             "reference kernels; the selective scan's recurrence and elementwise ops not counted)\n")


def build_ours(preset: str, res: int, device: str, backend: str = "auto"):
    from blocks import build_backbone, get_preset

    spec = get_preset(preset)
    if spec.img_size != res:
        spec = spec.with_overrides({"img_size": res})
    return build_backbone(spec, kernel_backend=backend).to(device)


def dense_gmacs(preset: str, res: int) -> float:
    """Multiply-accumulates of one image's forward in matmuls, convolutions and attention (torch's FlopCounterMode
    on the CPU, reference kernels, SDPA as its math form so attention counts; the selective scan's recurrence and
    the elementwise ops are not counted), in G. Why: the time-per-image target compares models whose work differs
    (vmamba_tiny does ~3.9× deit_tiny's MACs), so the table also gives the ratio per MAC."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    model = build_ours(preset, res, "cpu", backend="reference").eval()
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, res, res))
    return counter.get_total_flops() / 2e9


def measure(model, batch: int, res: int, device: str, reps: int, compile_model: bool = False,
            graph: bool = False) -> dict:
    """Median train-step ms, images/s, peak MiB and the kernel paths recorded during a step. `graph=True` times the
    trial's step replayed from a CUDA graph (nas/train_step.py: fused capturable AdamW, learning rate on the device);
    otherwise the eager step with torch's default AdamW, as the seed codebases train."""
    from kernels.dispatch import record_kernel_paths
    from nas.train_step import TrainStep, make_optimizer

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(batch, 3, res, res, device=device, generator=g)
    y = torch.randint(0, 1000, (batch,), device=device, generator=g) % _classes(model)
    graph = graph and device == "cuda" and not compile_model
    opt = make_optimizer(list(model.parameters()), 1e-4, torch.device(device), graphed=graph)
    run = torch.compile(model) if compile_model else model
    model.train()
    idx = torch.arange(batch, device=device)
    train_step = TrainStep(run, opt, x, y, batch, amp=device == "cuda", graph=graph)

    def step():
        return train_step(idx)

    with record_kernel_paths() as used:
        t0 = time.perf_counter()
        loss = step()
        first = time.perf_counter() - t0
        if graph:  # the graph's eager warm-up steps, then its capture, stay out of the timing
            for _ in range(train_step.warmup + 1):
                loss = step()
    if not torch.isfinite(loss):
        raise RuntimeError(f"non-finite loss {float(loss)}")
    if device == "cuda":
        from kernels.triton.roofline import median_ms

        ms = median_ms(step, warmup=2, reps=reps, flush_mb=1)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        ms, peak = (time.perf_counter() - t0) * 1e3 / reps, float("nan")
    kernels = dict(used)
    kernels["train_step"] = train_step.mode + (f" ({train_step.fallback})" if train_step.fallback else "")
    return {"ms": ms, "img_s": batch / ms * 1e3, "peak_mib": peak, "kernels": kernels, "first_step_s": first}


def profile_step(preset: str, device: str, top: int = 14) -> str:
    """Where one train step of our `preset` spends its GPU time (torch.profiler over 3 steps after warm-up): the
    `top` kernels by total time, per step, as a markdown table."""
    from torch.profiler import ProfilerActivity, profile

    from kernels.triton.roofline import markdown_table

    batch, res = CURRENT[preset]
    model = build_ours(preset, res, device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        out = measure(model, batch, res, device, reps=3)
    events = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in events)
    if not total:
        return f"profile of {preset}: no GPU kernels recorded (device {device})"
    steps = 1 + 2 + 3 + 1  # measure's first step, warm-up, timed steps and peak-memory step
    rows = [[e.key[:70], round(e.count / steps, 1), e.self_device_time_total / steps / 1e3,
             f"{e.self_device_time_total / total:.1%}"]
            for e in sorted(events, key=lambda e: -e.self_device_time_total)[:top]]
    del model
    return (f"profile of one {preset} train step (batch {batch}, {res}², GPU time {total / steps / 1e3:.1f} ms/step, "
            f"median step {out['ms']:.1f} ms):\n\n"
            + markdown_table(["kernel", "calls/step", "ms/step", "share"], rows))


def _classes(model) -> int:
    return getattr(model, "num_classes", None) or 1000


def row_child(label: str, reps: int) -> None:
    """Measure one row (a baseline, or ours through torch.compile) in this child process; print it as a JSON line."""
    name, preset = label.split(":", 1)
    batch, res = CURRENT[preset]
    device = "cpu" if CURRENT is SMOKE else "cuda"
    if name == "ours+compile":
        out = measure(build_ours(preset.split("@")[0], res, device), batch, res, device, reps, compile_model=True)
    else:
        out = BASELINES[name].run(preset, batch, res, device, reps, measure, build_ours)
    print(json.dumps(out), flush=True)


CURRENT = dict(PRESETS)


def run_row(kind: str, preset: str, reps: int, device: str, child: bool, timeout: float) -> dict:
    """One row: ours ("ours", "ours+compile") in this process, a baseline (maybe in a child process). `preset` may
    carry "@res" (deit_tiny@192: our deit at ViL's resolution)."""
    batch, res = CURRENT[preset]
    try:
        if kind in ("ours", "ours+eager") or (kind == "ours+compile" and not child):
            model = build_ours(preset.split("@")[0], res, device)
            out = measure(model, batch, res, device, reps, compile_model=kind == "ours+compile",
                          graph=kind == "ours")
            del model
        elif child:
            cmd = [sys.executable, __file__, "--row-child", f"{kind}:{preset}", "--reps", str(reps)]
            if CURRENT is SMOKE:
                cmd.append("--smoke")
            res_p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            last = (res_p.stdout.strip().splitlines() or [""])[-1]
            if res_p.returncode != 0 or not last.startswith("{"):
                why = (res_p.stderr.strip().splitlines() or [f"exit {res_p.returncode}"])[-1][:160]
                return {"error": why}
            out = json.loads(last)
        else:
            out = BASELINES[kind].run(preset, batch, res, device, reps, measure, build_ours)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    except Exception as exc:  # a row that cannot run says why; the table goes on
        return {"error": f"{type(exc).__name__}: {str(exc)[:160]}"}
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def plan(presets: list[str], with_baselines: bool, compiled: list[str],
         eager: list[str] = ()) -> list[tuple[str, str]]:
    """Row order: ours, the baselines that need no build, torch.compile rows, then the baselines built on the machine
    (mamba-ssm, causal-conv1d: their build can run in the background meanwhile, see --wait-for-baselines)."""
    rows = [("ours", p) for p in presets]
    if "vil_tiny" in presets and "deit_tiny" in presets:
        rows.append(("ours", "deit_tiny@192"))
    rows += [("ours+eager", p) for p in eager]
    wanted = [(name, b) for name, b in BASELINES.items() if with_baselines and b.preset in presets]
    built = {"mamba_ssm", "causal_conv1d"}
    rows += [(name, b.preset) for name, b in wanted if not built & set(b.needs)]
    rows += [("ours+compile", p) for p in compiled]
    return rows + [(name, b.preset) for name, b in wanted if built & set(b.needs)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="*", default=list(PRESETS))
    ap.add_argument("--quick", action="store_true", help="5 timed steps per row (default 15)")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--time-limit", type=float, default=540.0, help="seconds; rows left when it is near are skipped")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--wait-for-baselines", type=float, default=0.0, help="seconds (from the start) to wait for a "
                    "baseline whose packages do not import yet (a build running in the background)")
    ap.add_argument("--compile", nargs="*", default=[], help="presets also timed through torch.compile(model) "
                    "(each in a child process, bounded by the time limit)")
    ap.add_argument("--eager", nargs="*", default=[], help="presets also timed with the eager step (no CUDA graph; "
                    "torch's default AdamW), as before the graph")
    ap.add_argument("--smoke", action="store_true", help="CPU check of the script: tiny shapes, reference kernels")
    ap.add_argument("--profile", nargs="*", default=[], help="presets whose train step is profiled (kernel table)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--row-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    global CURRENT
    if args.smoke:
        CURRENT = SMOKE
    CURRENT["deit_tiny@192"] = CURRENT["vil_tiny"]
    reps = args.reps or (5 if args.quick or args.smoke else 15)
    if args.row_child:
        row_child(args.row_child, reps)
        return
    device = "cpu" if args.smoke else "cuda"
    start = time.perf_counter()
    print(versions_line(device), flush=True)
    results: dict[tuple[str, str], dict] = {}
    for kind, preset in plan(args.presets, not args.no_baselines, args.compile, args.eager):
        left = args.time_limit - (time.perf_counter() - start)
        why_not = None if kind.startswith("ours") else baseline_available(kind)
        while why_not is not None and time.perf_counter() - start < min(args.wait_for_baselines, args.time_limit - 60):
            time.sleep(10)  # a build in the background (mamba-ssm, causal-conv1d) may still finish
            importlib.invalidate_caches()
            why_not = baseline_available(kind)
        if why_not is None and left < 45:
            why_not = f"skipped: {left:.0f} s of the time limit left"
        if why_not is not None:
            results[(kind, preset)] = {"error": why_not}
        else:
            child = kind == "ours+compile" or (not kind.startswith("ours") and BASELINES[kind].child)
            results[(kind, preset)] = run_row(kind, preset, reps, device, child, timeout=max(30.0, left - 15))
        print(kind, preset, json.dumps(results[(kind, preset)]), flush=True)
    profiles = []
    for preset in args.profile:
        if args.time_limit - (time.perf_counter() - start) < 30:
            profiles.append(f"profile of {preset}: skipped (time limit)")
            continue
        try:
            profiles.append(profile_step(preset, device))
        except Exception as exc:  # a profile that fails says why
            profiles.append(f"profile of {preset} failed: {type(exc).__name__}: {str(exc)[:160]}")
    macs: dict[str, float] = {}
    for preset in sorted({p for kind, p in results if kind == "ours" and "error" not in results[(kind, p)]}):
        try:
            macs[preset] = dense_gmacs(preset.split("@")[0], CURRENT[preset][1])
        except Exception as exc:  # the count is context; a failure says why and the table goes on
            print(f"MAC count of {preset} failed: {type(exc).__name__}: {str(exc)[:160]}", flush=True)
    report(results, args, time.perf_counter() - start, device, profiles, macs)


def _label(kind: str, preset: str) -> str:
    if kind == "ours":
        return f"{preset} (ours, the trial's step)"
    if kind == "ours+eager":
        return f"{preset} (ours, eager step)"
    if kind == "ours+compile":
        return f"{preset} (ours, torch.compile)"
    return f"{preset}: {BASELINES[kind].label}"


def report(results: dict, args, seconds: float, device: str, profiles: list[str],
           macs: dict[str, float] | None = None) -> None:
    from kernels.triton.roofline import markdown_table

    rows, macs = [], macs or {}
    for (kind, preset), r in results.items():
        batch, res = CURRENT[preset]
        ours = results.get(("ours", preset.split("@")[0]), {})
        ratio = (f"{r['img_s'] / ours['img_s']:.2f}" if "img_s" in r and "img_s" in ours and kind != "ours" else "-")
        gmac = f"{macs[preset]:.2f}" if kind == "ours" and preset in macs else "-"
        if "error" in r:
            rows.append([_label(kind, preset), batch, f"{res}²", gmac, "-", "-", "-", "-", r["error"]])
        else:
            rows.append([_label(kind, preset), batch, f"{res}²", gmac, r["ms"], r["img_s"], r["peak_mib"], ratio,
                         ", ".join(f"{k}: {v}" for k, v in r.get("kernels", {}).items()) or r.get("note", "")])
    header = ["row", "batch", "input", "dense GMAC/image", "step ms", "images/s", "peak MiB", "this / ours (images/s)",
              "kernels / note"]
    targets = []
    for preset, base, need in TARGETS:
        o, b = results.get(("ours", preset), {}), results.get((base_key(base, preset), preset), {})
        if "img_s" in o and "img_s" in b:
            got = o["img_s"] / b["img_s"]
            targets.append([f"{preset} ≥ {need}× ({base})", f"{got:.2f}×", "met" if got >= need else "not met"])
        else:
            targets.append([f"{preset} ≥ {need}× ({base})", b.get("error", o.get("error", "not measured")), "-"])
        e = results.get(("ours+eager", preset), {})
        if "img_s" in e and "img_s" in b:  # both eager: the kernels' share, without the CUDA graph's
            got = e["img_s"] / b["img_s"]
            targets.append([f"{preset} ≥ {need}× ({base}), our step eager as theirs", f"{got:.2f}×",
                            "met" if got >= need else "not met"])
    for preset in ("vim_tiny", "vmamba_tiny", "vil_tiny"):
        deit = "deit_tiny@192" if CURRENT[preset][1] == CURRENT.get("deit_tiny@192", (0, 0))[1] and \
            preset == "vil_tiny" else "deit_tiny"
        o, d = results.get(("ours", preset), {}), results.get(("ours", deit), {})
        if "img_s" in o and "img_s" in d:
            got = d["img_s"] / o["img_s"]
            targets.append([f"{preset} time/image ≤ {WITHIN_DEIT}× deit_tiny's ({deit})", f"{got:.2f}×",
                            "met" if got <= WITHIN_DEIT else "not met"])
            if preset in macs and deit in macs:  # context, not a target: the models' work per image differs
                work = macs[preset] / macs[deit]
                targets.append([f"{preset} time per dense MAC against {deit}'s (it does {work:.2f}× the MACs)",
                                f"{got / work:.2f}×", "context"])
    text = (f"{versions_line(device)}\nrun: {seconds:.0f} s, {args.reps or (5 if args.quick else 15)} timed steps per "
            f"row\n\n" + markdown_table(header, rows) + "\n\ntargets:\n\n" +
            markdown_table(["target", "measured", "verdict"], targets) + "\n" + MACS_NOTE +
            "".join(f"\n{p}\n" for p in profiles))
    print(text)
    if args.out:
        pathlib.Path(args.out).write_text(text)


def base_key(letter: str, preset: str) -> str:
    for name, b in BASELINES.items():
        if b.letter == letter and b.preset == preset and b.primary:
            return name
    return "?"


if __name__ == "__main__":
    main()
