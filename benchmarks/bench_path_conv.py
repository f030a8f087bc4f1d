"""The route-ordered causal conv1d + SiLU (Vim's per-path conv) forward and backward: our Triton kernels against the
PyTorch composition a user would write (gather → cuDNN depthwise conv1d → SiLU → scatter) and, when installed,
causal-conv1d's CUDA kernel on gathered copies (how Vim's own code runs it), in one run.

    python benchmarks/bench_path_conv.py [--only study vim_tiny] [--reps 30] [--out conv.md]   # on the GPU machine

Rows per shape: forward ms, backward ms (one fixed upstream gradient, `autograd.grad` of x, weight and bias) and the
backward's ratio against the named baseline; last, the default backward at other pass-1 tiles. Our backward comes in
two variants (kernels/triton/path_conv.py): "steps" (two passes, each dpre computed once, the default) and "tokens"
(one pass that recomputes each dpre K times, the default before session 9). Shapes are one layer's conv in the mixer: x (B, L, E) a half of in_proj's output
(row stride 2E), bf16, two paths (the bi route), K = 4.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from kernels.path_conv import causal_conv1d_paths_ref  # noqa: E402
from kernels.triton import path_conv as tconv  # noqa: E402
from kernels.triton.path_conv import causal_conv1d_paths_triton  # noqa: E402
from kernels.triton.roofline import device_line, emit_report, median_ms  # noqa: E402

SHAPES = {"study": (256, 65, 384), "vim_tiny": (128, 197, 384), "vim_small": (64, 197, 768)}

try:  # Vim's conv: causal-conv1d's CUDA kernel (channel-first, one call per path on a gathered copy)
    from causal_conv1d import causal_conv1d_fn
except ImportError:
    causal_conv1d_fn = None


def causal_conv1d_composition(x, w, b, paths):
    """What Vim's block does per direction: gather (here a flip for the backward path), channel-first copy, the CUDA
    conv with SiLU, and back to canonical order."""
    outs = []
    for c in range(w.shape[0]):
        idx = paths[c].long()
        xc = x.index_select(1, idx).transpose(1, 2).contiguous()
        y = causal_conv1d_fn(xc, w[c].to(x.dtype), None if b is None else b[c].to(x.dtype), activation="silu")
        outs.append(y.transpose(1, 2).index_select(1, torch.argsort(idx)))
    return torch.stack(outs, 1)


def variants():
    """(label, function, pass-1 tile of the 'steps' backward or None)."""
    ours = lambda x, w, b, p: causal_conv1d_paths_triton(x, w, b, p)  # noqa: E731
    out = [(f"triton, backward 'steps' (default, {tconv.STEPS_BT} steps a tile)", ours, tconv.STEPS_BT),
           ("triton, backward 'tokens' (session 8)",
            lambda x, w, b, p: causal_conv1d_paths_triton(x, w, b, p, backward="tokens"), None),
           ("PyTorch: gather + cuDNN conv1d + SiLU + scatter", causal_conv1d_paths_ref, None)]
    if causal_conv1d_fn is not None:
        out.append(("causal-conv1d CUDA on gathered copies (Vim's)", causal_conv1d_composition, None))
    out += [(f"triton, backward 'steps', {bt} steps a tile", ours, bt) for bt in (8, 32) if bt != tconv.STEPS_BT]
    return out


def bench(name: str, reps: int) -> list[list]:
    bsz, length, e = SHAPES[name]
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(bsz, length, 2 * e, generator=g, device="cuda").to(torch.bfloat16)[..., :e].requires_grad_(True)
    w = (torch.randn(2, e, 4, generator=g, device="cuda") * 0.5).requires_grad_(True)
    b = (torch.randn(2, e, generator=g, device="cuda") * 0.3).requires_grad_(True)
    paths = torch.stack([torch.arange(length), torch.arange(length).flip(0)]).to("cuda", torch.int32)
    dout = torch.randn(bsz, 2, length, e, generator=g, device="cuda").to(torch.bfloat16)
    rows, base, ref = [], None, None
    default_bt = tconv.STEPS_BT
    for label, fn, bt in variants():
        tconv.STEPS_BT = bt or default_bt
        out = fn(x, w, b, paths)
        grads = torch.autograd.grad(out, (x, w, b), dout)
        t_f = median_ms(lambda: fn(x, w, b, paths), reps=reps)
        out = fn(x, w, b, paths)
        t_b = median_ms(lambda: torch.autograd.grad(out, (x, w, b), dout, retain_graph=True), reps=reps)
        base = base or t_b
        ref = ref or grads
        diff = max(((a.float() - r.float()).norm() / r.float().norm()).item() for a, r in zip(grads, ref))
        rows.append([name, label, t_f, t_b, f"{t_b / base:.2f}×", f"{diff:.1e}"])
        print(rows[-1], flush=True)
    tconv.STEPS_BT = default_bt
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=["study", "vim_tiny"], choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [r for name in args.only for r in bench(name, args.reps)]
    notes = [f"shapes (batch, tokens, E): {', '.join(f'{k} {v}' for k, v in SHAPES.items() if k in args.only)}",
             "speed-up of ours = this row's backward ms / the first row's (> 1: our default is faster than this row)",
             "grad diff = largest relative difference of dx, dw, dbias from the first row's"]
    if causal_conv1d_fn is None:
        notes.append("causal-conv1d is not installed: its row is missing (../shared/tools/gpu-baselines builds it)")
    emit_report(f"device: {device_line()}", ["shape", "variant (bf16)", "fwd ms", "bwd ms",
                "speed-up of ours over this row (bwd)", "grad diff"], rows, notes, args.out)


if __name__ == "__main__":
    main()
