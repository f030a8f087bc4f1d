"""Scan backward variants on the SSM mixer's own memory layout: the chunk backward against the lane backward.

Run on the GPU machine:  python benchmarks/bench_scan_bwd.py [--reps 20] [--only vim_ti_224 study_64] [--sweep]
[--match TEXT ...] [--out bwd.md]

`--sweep` times the lane backward's channel blocks instead of the session-4 candidates: 32 channels a warp (one lane a
channel, all 16 states in its registers: 254 registers, 8 warps an SM) against 16 and 8 (a channel's states over 2 or
4 lanes: 194 / 121 registers, so more warps hide the per-step load and shuffle latency, at more instructions per
channel), with their register tiles and checkpoint stretches. `study_64` is issue 14's study row (batch 256, 64 tokens
and the class token, Vim blocks of width 192).

Inputs as `blocks.mixers.ssm` hands them to the scan (bf16): u, Δ, z channel-last ((…, L, E) memory), B and C column
blocks of one x_proj output (P, batch, L, 2N + R) with B first ("mixer") or Mamba's [δ; B; C] order ("mamba order",
B and C at an offset that is not 16-byte aligned: no vector loads). Each row: forward ms, forward + backward ms (one
fixed upstream gradient), their ratio, the largest relative difference of any gradient from the first row's, and the
mamba-ssm composition (two calls + flips, or one call) measured in the same run when mamba_ssm is installed.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from bench_scan import (MAMBA_NOTE, WORKLOADS, fwd_bwd, route_paths, selective_scan_fn, vim_baseline,  # noqa: E402
                        with_grad)
from kernels.triton.roofline import device_line, emit_report, median_ms  # noqa: E402
from kernels.triton.selective_scan import bc_vector_width, selective_scan_paths_triton  # noqa: E402

BASE = ("lane", 32, 32, 1, 4, 2, "input", "grid", 8, 0, "grid")  # session 3's default: lane forward, chunk backward
CANDIDATES = [  # (label, config, B/C layout)
    ("session-3 default, Mamba-order B/C", BASE, "mamba order"),
    ("session-3 default", BASE, "mixer"),
    ("lane bwd, stretch 16, tile 2", ("lane", 32, 16, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 2), "mixer"),
    ("lane bwd, stretch 32, tile 2", ("lane", 32, 32, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 2), "mixer"),
    ("lane bwd, stretch 8, tile 2", ("lane", 32, 8, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 2), "mixer"),
    ("lane bwd, stretch 16, tile 4", ("lane", 32, 16, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 4), "mixer"),
    ("lane bwd, stretch 16, tile 2, Σ_d over 32 lanes",
     ("lane", 32, 16, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 2, 32), "mixer"),
    ("lane bwd, stretch 8, tile 2, Σ_d over 32 lanes",
     ("lane", 32, 8, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 2, 32), "mixer"),
    ("lane bwd, stretch 16, tile 2, 2 warps", ("lane", 32, 16, 1, 64, 2, "input", "grid", 8, 0, "grid", "lane", 2),
     "mixer"),
]


# (label, config, B/C layout): the lane backward's channel blocks, tiles and stretches (offline sm_90 SASS per
# 2-step tile: bd 32 254 registers and 160 shuffles a step, bd 16 194 / 67, bd 8 121 / 30)
_LANE = ("lane", 32, 16, 1)
SWEEP = [("session 7 default (lane bwd, 32 channels a warp, stretch 16, tile 2)", _LANE + (0, 0, "input", "grid", 8, 0, "grid",
                                                                               "lane", 2, 32), "mixer")]
for _bd, _ck, _tile, _red in ((32, 8, 2, 32), (16, 16, 2, 16), (16, 16, 2, 8), (16, 8, 2, 16), (16, 16, 4, 8),
                              (8, 16, 2, 8), (8, 16, 4, 8), (8, 8, 4, 8), (8, 8, 8, 8), (8, 32, 4, 8), (16, 32, 2, 16)):
    SWEEP.append((f"lane bwd, {_bd} channels a warp, stretch {_ck}, tile {_tile}, Σ_d over {_red} lanes",
                  ("lane", 32, _ck, 1, _bd, 1, "input", "grid", 8, 0, "grid", "lane", _tile, _red), "mixer"))
for _red in (32, 8):  # one step in registers at a time: under Triton 3.6 tile 2 spills (255 registers, 168 B stack)
    SWEEP.append((f"lane bwd, 32 channels a warp, stretch 8, tile 1, Σ_d over {_red} lanes",
                  ("lane", 32, 8, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 1, _red), "mixer"))
for _red in (32, 8):  # dB/dC through a slot per group of channels, summed afterwards, instead of fp32 atomics
    SWEEP.append((f"lane bwd, 32 channels a warp, stretch 8, tile 2, Σ_d over {_red} lanes, dB/dC slots (no atomics)",
                  ("lane", 32, 8, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", 2, _red, "partial"), "mixer"))
# session 15: one lane a channel under Triton 3.6 too (lane_hint); session 17: the hinted default's neighbours (offline
# sm_90 SASS, Triton 3.6: stretch 4 / 2 drop the backward's re-advance through the stretch for 2× / 4× the checkpoint
# memory; Σ_d over 4 lanes 128 shuffles a tile against 192 for twice the atomics; none spills)
for _ck, _tile, _red in ((8, 2, 32), (8, 1, 32), (8, 2, 8), (4, 2, 8), (2, 2, 8), (8, 2, 4)):
    _label = f"lane bwd, 32 channels a warp, stretch {_ck}, tile {_tile}, Σ_d over {_red} lanes, lane_hint channels"
    SWEEP.append((_label, ("lane", 32, _ck, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", _tile, _red, "atomic",
                           "channels"), "mixer"))
for _ck, _tile in ((8, 2), (4, 2), (8, 1)):  # Σ_d of dB/dC by reduce-scatter (session 15), now with the hint (17)
    _label = f"lane bwd, 32 channels a warp, stretch {_ck}, tile {_tile}, dB/dC by reduce-scatter, lane_hint channels"
    SWEEP.append((_label, ("lane", 32, _ck, 1, 32, 1, "input", "grid", 8, 0, "grid", "lane", _tile, 32, "scatter",
                           "channels"), "mixer"))
WORKLOADS = {**WORKLOADS, "study_64": dict(bsz=256, dim=384, length=65, n_state=16, route="bi", gate=True,
                                           merge="mean")}


def mixer_inputs(w: dict, order: str, grad: bool = False, dev: str = "cuda"):
    """(views as the mixer passes them, the leaf tensors they are views of)."""
    g = torch.Generator(device=dev).manual_seed(0)
    bsz, dim, length, n = w["bsz"], w["dim"], w["length"], w["n_state"]
    n_paths, rank = 2, 12

    def rnd(*shape, scale=1.0, dt=torch.bfloat16):
        return (torch.randn(*shape, generator=g, device=dev) * scale).to(dt).requires_grad_(grad)

    u = rnd(n_paths, bsz, length, dim)  # the path conv's (P, B, L, E) memory
    delta = rnd(n_paths, bsz, length, dim, scale=0.5)
    xdbl = rnd(n_paths, bsz, length, 2 * n + rank)
    A = -torch.arange(1, n + 1, device=dev, dtype=torch.float32).repeat(n_paths, dim, 1).requires_grad_(grad)
    D, bias = rnd(n_paths, dim, dt=torch.float32), rnd(n_paths, dim, scale=0.5, dt=torch.float32)
    z = rnd(bsz, length, dim)
    b0 = 0 if order == "mixer" else rank
    views = dict(u=u.permute(1, 0, 3, 2), delta=delta.permute(1, 0, 3, 2), A=A,
                 B=xdbl[..., b0:b0 + n].permute(1, 0, 3, 2), C=xdbl[..., b0 + n:b0 + 2 * n].permute(1, 0, 3, 2),
                 D=D, z=z.transpose(1, 2), delta_bias=bias - 4.0)
    return views, [u, delta, xdbl, A, D, bias, z]


def bench(name: str, w: dict, reps: int, notes: list[str], candidates: list = CANDIDATES) -> list[list]:
    paths = route_paths("bi", w["length"]).cuda()
    rows, base_g = [], None
    for label, cfg, order in candidates:
        x, _ = mixer_inputs(w, order)
        xg, leaves = mixer_inputs(w, order, grad=True)

        def ours(xx):
            return selective_scan_paths_triton(xx["u"], xx["delta"], xx["A"], xx["B"], xx["C"], xx["D"], xx["z"],
                                               xx["delta_bias"], True, paths, "mean", config=cfg)
        try:
            out = ours(xg)
            dout = torch.randn(out.shape, generator=torch.Generator(device="cuda").manual_seed(3), device="cuda")
            grads = torch.autograd.grad(out, leaves, dout.to(out.dtype))
            t_f = median_ms(lambda: ours(x), reps=reps)
            t_fb = median_ms(lambda: torch.autograd.grad(ours(xg), leaves, dout.to(out.dtype)), reps=reps)
        except Exception as exc:  # a variant that does not compile is skipped, and said so
            notes.append(f"{name}: {label} failed: {type(exc).__name__}: {str(exc)[:120]}")
            continue
        if base_g is None or order != base_g[0]:  # gradients compare within one input layout (other values)
            base_g = (order, grads)
        diff = max(((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()
                   for a, b in zip(grads, base_g[1]))
        rows.append([name, f"{label} (B/C vector {bc_vector_width(x['B'], x['C'])})", t_f, t_fb, f"{t_fb / t_f:.2f}",
                     f"{diff:.1e}"])
        print(rows[-1], flush=True)
    if selective_scan_fn is not None:
        x, _ = mixer_inputs(w, "mixer")
        x = {k: v.detach().contiguous() for k, v in x.items()}  # the codebases' channel-first memory
        perm = {k: torch.stack([x[k][:, 0], x[k][:, 1].flip(-1)], 1) for k in ("delta", "B", "C")}
        xb, leaves_b = with_grad(x)
        perm_b, leaves_p = with_grad(perm)
        t_f = median_ms(lambda: vim_baseline(x, perm, 0.5), reps=reps)
        t_fb = median_ms(fwd_bwd(lambda: vim_baseline(xb, perm_b, 0.5), leaves_b + leaves_p), reps=reps)
        rows.append([name, "2× mamba-ssm + flips + add (channel-first)", t_f, t_fb, f"{t_fb / t_f:.2f}", "-"])
    else:
        notes.append(MAMBA_NOTE)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--only", nargs="*", default=["vim_ti_224"])
    ap.add_argument("--sweep", action="store_true", help="the lane backward's channel blocks, tiles and stretches")
    ap.add_argument("--match", nargs="*", default=None, help="only the variants whose label contains one of these "
                    "('text$': ends with text; the first variant always runs: it is the comparison's base)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    notes, rows = [], []
    cands = SWEEP if args.sweep else CANDIDATES
    if args.match:
        def wanted(label: str) -> bool:  # "text$" = the label ends with text
            return any(label.endswith(m[:-1]) if m.endswith("$") else m in label for m in args.match)
        cands = cands[:1] + [c for c in cands[1:] if wanted(c[0])]
    for name in args.only:
        rows += bench(name, WORKLOADS[name], args.reps, notes, cands)
    emit_report(f"device: {device_line()}; {MAMBA_NOTE}", ["workload", "variant (mixer layout, bf16)", "fwd ms",
                "fwd+bwd ms", "fwd+bwd / fwd", "max grad rel. diff vs the layout's first row"], rows, notes, args.out)


if __name__ == "__main__":
    main()
