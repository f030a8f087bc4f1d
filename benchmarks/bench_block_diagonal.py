"""ViL's block-diagonal q/k/v maps (xLSTM's LinearHeadwiseExpand): the grouped product (a batched matmul of tiny
block × block matrices) against the dense matmul with the blocks on the diagonal (what `BlockDiagonal` runs on CUDA),
forward and forward + backward, bf16 autocast, in one run.

    python benchmarks/bench_block_diagonal.py [--reps 30] [--out bd.md]      # on the GPU machine

Shapes: one q/k/v map of ViL-T at 192² (batch 128, 144 tokens, inner 384, blocks of 4) and at 224² (196 tokens), and
ViL-S's inner width (768). The dense product does dim / block times the FLOPs of the grouped one.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from blocks.mixers.mlstm import BlockDiagonal  # noqa: E402
from kernels.triton.roofline import device_line, emit_report, median_ms  # noqa: E402

SHAPES = {"vil_tiny_192": (128, 144, 384), "vil_tiny_224": (128, 196, 384), "vil_small_224": (128, 196, 768)}


def bench(name: str, reps: int) -> list[list]:
    bsz, tokens, dim = SHAPES[name]
    bd = BlockDiagonal(dim, 4, True, device="cuda")
    torch.nn.init.normal_(bd.weight, std=0.05)
    x = torch.randn(bsz, tokens, dim, device="cuda", requires_grad=True)
    dy = torch.randn(bsz, tokens, dim, device="cuda")
    rows, base = [], None
    for label, dense in (("grouped (batched block × block matmul)", False), ("dense, blocks on the diagonal", True)):
        def fwd():
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return bd(x, dense=dense)

        def fwd_bwd():
            torch.autograd.grad(fwd(), (x, bd.weight, bd.bias), dy)
        t_f, t_fb = median_ms(fwd, reps=reps), median_ms(fwd_bwd, reps=reps)
        base = base or t_fb
        rows.append([name, label, t_f, t_fb, f"{base / t_fb:.2f}×"])
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", nargs="*", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    rows = [r for name in args.only for r in bench(name, args.reps)]
    notes = [f"shapes (batch, tokens, inner): {', '.join(f'{k} {v}' for k, v in SHAPES.items() if k in args.only)}; "
             "blocks of 4, fp32 weights, bf16 autocast",
             "speed-up = the grouped row's fwd+bwd ms / this row's"]
    emit_report(f"device: {device_line()}", ["shape", "product", "fwd ms", "fwd+bwd ms", "speed-up (fwd+bwd)"], rows,
                notes, args.out)


if __name__ == "__main__":
    main()
