"""Backbone speed: vim_tiny (route-fused Triton scan) against deit_tiny (PyTorch SDPA, flash backend).

Run on the GPU machine:  python benchmarks/bench_backbone.py [--quick] [--out results.md]
Needs torch, triton, and the project's `blocks` package (pydantic, timm). Batch inference of backbone features in
bf16 autocast, as in Vim's Fig. 1, at 224² and 1248²; plus a training step (fwd+bwd) at 224². Each row reports the
kernel paths that ran (`kernels.dispatch.record_kernel_paths`) and the attention backend that was forced.

If `blocks` cannot build the presets here, the script falls back to the mixer cores alone and labels them so: Vim-Ti's
24 bidirectional scans (fused Triton) against DeiT-Ti's 12 attention calls (SDPA flash) at the same token counts.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels.triton.roofline import device_line, emit_report, median_ms  # noqa: E402

RES = {224: 128, 1248: 4}  # resolution → inference batch


def flash_only():
    return torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION)


def build(name: str, img_size: int):
    from blocks import build_backbone, get_preset

    spec = get_preset(name)
    fields = getattr(type(spec), "model_fields", {})
    for key in ("img_size", "image_size", "resolution"):
        if key in fields:
            spec = spec.model_copy(update={key: img_size})
            return build_backbone(spec).cuda()
    return build_backbone(spec, img_size=img_size).cuda()


def features(model, x):
    fn = getattr(model, "forward_features", model)
    return fn(x)


def bench_models(reps: int, notes: list[str]) -> list[list]:
    from kernels.dispatch import record_kernel_paths

    rows = []
    for res, bsz in RES.items():
        times = {}
        for name in ("vim_tiny", "deit_tiny"):
            model = build(name, res).eval()
            x = torch.randn(bsz, 3, res, res, device="cuda")
            with torch.no_grad(), torch.autocast("cuda", torch.bfloat16), flash_only(), \
                    record_kernel_paths() as used:
                try:
                    t = median_ms(lambda: features(model, x), warmup=3, reps=reps)
                except torch.OutOfMemoryError:
                    t = "OOM"
            times[name] = t
            ips = f"{bsz / (t * 1e-3):.0f}" if isinstance(t, float) else "-"
            rows.append([f"{res}² ×{bsz}", name, "inference", t, ips, dict(used) or "-"])
            del model
            torch.cuda.empty_cache()
        if all(isinstance(t, float) for t in times.values()):
            notes.append(f"{res}²: deit_tiny / vim_tiny inference time = {times['deit_tiny'] / times['vim_tiny']:.2f}")
    for name in ("vim_tiny", "deit_tiny"):  # a training step at 224²
        model = build(name, 224).train()
        x = torch.randn(64, 3, 224, 224, device="cuda")

        def step():
            with torch.autocast("cuda", torch.bfloat16), flash_only():
                features(model, x).float().square().mean().backward()

        with record_kernel_paths() as used:
            t = median_ms(step, warmup=3, reps=max(5, reps // 2))
        rows.append(["224² ×64", name, "train step (fwd+bwd)", t, f"{64 / (t * 1e-3):.0f}", dict(used) or "-"])
    return rows


def bench_mixer_cores(reps: int, notes: list[str]) -> list[list]:
    """Fallback: only the token mixers, labelled as such."""
    from kernels.triton.selective_scan import selective_scan_paths_triton

    rows = []
    for res, bsz in RES.items():
        grid = res // 16
        length = grid * grid + 1
        e, n = 384, 16
        g = torch.Generator(device="cuda").manual_seed(0)

        def r(*s):
            return torch.randn(*s, generator=g, device="cuda").bfloat16()

        u, dt, B, C, z = r(bsz, 2, e, length), r(bsz, 2, e, length), r(bsz, 2, n, length), r(bsz, 2, n, length), \
            r(bsz, e, length)
        A = -torch.arange(1, n + 1, device="cuda", dtype=torch.float32).repeat(2, e, 1)
        D, bias = torch.ones(2, e, device="cuda"), torch.full((2, e), -4.0, device="cuda")
        paths = torch.stack([torch.arange(length), torch.arange(length).flip(0)]).cuda()
        t_vim = 24 * median_ms(lambda: selective_scan_paths_triton(u, dt, A, B, C, D, z, bias, True, paths, "mean"),
                               reps=reps)
        q = r(bsz, 3, length, 64)
        with flash_only():
            t_deit = 12 * median_ms(lambda: F.scaled_dot_product_attention(q, q, q), reps=reps)
        rows.append([f"{res}² ×{bsz}", "vim_tiny mixer cores only (24 fused bi-scans)", "inference", t_vim,
                     f"{bsz / (t_vim * 1e-3):.0f}", "triton"])
        rows.append([f"{res}² ×{bsz}", "deit_tiny mixer cores only (12 SDPA flash)", "inference", t_deit,
                     f"{bsz / (t_deit * 1e-3):.0f}", "sdpa-flash"])
        notes.append(f"{res}²: mixer cores only, deit/vim = {t_deit / t_vim:.2f} (not a backbone comparison)")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    reps = 5 if args.quick else 20
    notes: list[str] = []
    try:
        rows = bench_models(reps, notes)
        mode = "whole backbones (blocks.build_backbone)"
    except Exception as exc:
        notes.append(f"blocks could not build the presets here ({type(exc).__name__}: {exc}); "
                     "fell back to mixer cores only")
        notes.append(traceback.format_exc(limit=3).replace("\n", " | "))
        rows = bench_mixer_cores(reps, notes)
        mode = "MIXER CORES ONLY (not whole backbones)"
    header = ["input", "model", "pass", "ms", "images/s", "kernel paths"]
    emit_report(f"device: {device_line()}; mode: {mode}", header, rows, notes, args.out)


if __name__ == "__main__":
    main()
