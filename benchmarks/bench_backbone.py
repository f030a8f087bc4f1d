"""Backbone speed and memory: vim_tiny (route-fused Triton scan) against deit_tiny (PyTorch SDPA, flash backend).

Run on the GPU machine:  python benchmarks/bench_backbone.py [--quick] [--out results.md]
Check the script on a CPU (tiny images, reference kernels; the times mean nothing):  ... --smoke

Needs torch, triton and the project's `blocks` package (pydantic). For each resolution (224² and 1248²) and each
model, two passes in bf16 autocast with fp32 weights:
- inference: `forward_features` under `torch.no_grad()` (batch feature extraction, as in Vim's Fig. 1);
- train step: forward to the logits, cross-entropy on random labels, backward, AdamW step.
Each cell is the median of CUDA-event timings after warm-up (`kernels.triton.roofline.median_ms`, L2 flushed before
each), and the peak of `torch.cuda.max_memory_allocated` over one more call (weights, input, activations and, for the
train step, gradients and optimizer state: the whole GPU footprint of the step as PyTorch allocates it).

Baseline: deit_tiny with SDPA forced to the flash backend, measured in the same run. deit_tiny with SDPA forced to the
math backend (it materialises the L×L attention matrix, as the attention Vim's paper compared with did) is listed too,
labelled "unfused". Each row names the kernel paths that ran (`kernels.dispatch.record_kernel_paths`).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels.triton.roofline import device_line, emit_report, median_ms  # noqa: E402

BATCH = {224: 128, 1248: 4}  # resolution → batch (inference and train step); 1248² × 4 is the Vim shape
SMOKE_BATCH = {32: 2}
MODELS = [  # (row label, preset, SDPA backend or None)
    ("vim_tiny", "vim_tiny", None),
    ("deit_tiny (SDPA flash)", "deit_tiny", "FLASH_ATTENTION"),
    ("deit_tiny (SDPA math: unfused, materialises L×L)", "deit_tiny", "MATH"),
]
BASELINE = "deit_tiny (SDPA flash)"


def sdpa_backend(name: str | None):
    if name is None:
        return nullcontext()
    return torch.nn.attention.sdpa_kernel(getattr(torch.nn.attention.SDPBackend, name))


def build(preset: str, img_size: int, device: str):
    from blocks import build_backbone, get_preset

    return build_backbone(get_preset(preset).with_overrides({"img_size": img_size})).to(device)


def timer(device: str, reps: int):
    if device == "cuda":
        return lambda fn: median_ms(fn, warmup=3, reps=reps)

    def cpu_ms(fn):
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)

    return cpu_ms


def peak_mib(fn, device: str):
    """Peak allocated MiB over one call of fn (everything live on the GPU during it counts)."""
    if device != "cuda":
        return "-"
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def run_case(preset: str, backend: str | None, res: int, bsz: int, device: str, reps: int):
    """{pass: (ms, peak MiB, kernel paths)} for one model at one resolution; 'OOM'/'error: ...' strings on failure."""
    from kernels.dispatch import record_kernel_paths

    out = {}
    ac = torch.autocast(device, torch.bfloat16)
    time_it = timer(device, reps)
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(bsz, 3, res, res, device=device, generator=g)
    model = build(preset, res, device)
    labels = torch.randint(0, model.num_classes if hasattr(model, "num_classes") else 1000, (bsz,), device=device,
                           generator=g)
    model.eval()

    def infer():
        with torch.no_grad(), ac, sdpa_backend(backend):
            return model.forward_features(x)

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def train_step():
        opt.zero_grad(set_to_none=True)
        with ac, sdpa_backend(backend):
            logits = model(x)
        F.cross_entropy(logits.float(), labels).backward()
        opt.step()

    for label, fn, mode in (("inference", infer, "eval"), ("train step", train_step, "train")):
        model.train(mode == "train")
        try:
            with record_kernel_paths() as used:
                feats = fn()
                if feats is not None and not torch.isfinite(feats.float()).all():
                    raise RuntimeError("non-finite features")
                ms = time_it(fn)
            mem = peak_mib(fn, device)
            paths = dict(used)
            if backend:
                paths["attention"] = f"sdpa-{backend.lower()}"
            out[label] = (ms, mem, paths or "-")
        except torch.OutOfMemoryError:
            out[label] = ("OOM", "OOM", "-")
        except RuntimeError as exc:
            out[label] = (f"error: {str(exc)[:80]}", "-", "-")
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.empty_cache()
    del model, opt, x
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="5 repetitions instead of 20")
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny images: checks the script, not the speed")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    reps = 1 if args.smoke else (5 if args.quick else 20)
    batches = SMOKE_BATCH if args.smoke else BATCH
    models = MODELS[:2] if args.smoke else MODELS  # the CPU has no flash kernel; the math one is the CPU default
    if args.smoke:
        models = [(lab, pre, None) for lab, pre, _ in models]
    torch.backends.cuda.matmul.allow_tf32 = True  # the usual training setting; bf16 autocast covers the matmuls
    rows, notes = [], []
    for res, bsz in batches.items():
        results = {label: run_case(pre, be, res, bsz, device, reps) for label, pre, be in models}
        base = results.get(models[1][0])
        for label, _, _ in models:
            for pas, (ms, mem, paths) in results[label].items():
                bms, bmem, _ = base[pas]
                speed = f"{bms / ms:.2f}" if isinstance(ms, float) and isinstance(bms, float) else "-"
                memr = f"{mem / bmem:.2f}" if isinstance(mem, float) and isinstance(bmem, float) else "-"
                ips = f"{bsz / (ms * 1e-3):.0f}" if isinstance(ms, float) else "-"
                rows.append([f"{res}² ×{bsz}", label, pas, ms, ips, mem, speed, memr, paths])
        vim, deit = results["vim_tiny"], base
        for pas in ("inference", "train step"):
            t_v, m_v = vim[pas][:2]
            t_d, m_d = deit[pas][:2]
            if isinstance(t_v, float) and isinstance(t_d, float):
                msg = f"{res}² {pas}: vim_tiny takes {t_v / t_d:.2f}× the time of {models[1][0]}"
                if isinstance(m_v, float) and isinstance(m_d, float):
                    msg += f", and {m_v / m_d:.2f}× its peak memory ({1 - m_v / m_d:+.1%} saved)"
                notes.append(msg)
    header = ["input", "model", "pass", "ms", "images/s", "peak MiB", f"{BASELINE} time / this time",
              f"this peak / {BASELINE} peak", "kernel paths"]
    mode = "CPU SMOKE RUN (reference kernels, tiny images: not a measurement)" if args.smoke else \
        "bf16 autocast, fp32 weights"
    pre = f"device: {device_line() if device == 'cuda' else 'cpu'}; {mode}"
    emit_report(pre, header, rows, notes, args.out)


if __name__ == "__main__":
    main()
