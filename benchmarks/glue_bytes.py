"""Bytes written per train step by the ops around the kernels (everything but GEMMs/convs and the mLSTM cell), on the
CPU under bf16 autocast: a proxy, measurable without a GPU, for the memory traffic of a step's PyTorch glue.

    python benchmarks/glue_bytes.py vil_tiny --batch 2 16

The mLSTM cell is replaced by a stub (its own kernel's traffic is not glue), and the q/k/v maps take the CUDA path
(dense GEMMs). View ops and allocations are not counted; each other op counts the bytes of the tensors it returns.
Presets with SSM mixers are refused: the CPU reference scan would be counted as glue. The per-image column is the
difference between the largest and the smallest batch, divided by the images between them.
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import sys

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

VIEWS = {"view", "t", "transpose", "slice", "_unsafe_view", "permute", "expand", "unsqueeze", "squeeze", "alias",
         "split", "select", "as_strided", "_reshape_alias", "detach", "new_empty", "empty_like", "split_with_sizes",
         "unbind", "narrow", "empty", "empty_strided"}
GEMMS = {"mm", "addmm", "bmm", "convolution", "convolution_backward", "linear"}


class _StubCell(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, i, f):  # noqa: ANN001, ANN205
        return v.clone()

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return torch.zeros_like(g), torch.zeros_like(g), g, None, None


class BytesWritten(TorchDispatchMode):
    """Counts the bytes of every non-view op's outputs, by op name."""

    def __init__(self) -> None:
        super().__init__()
        self.bytes: collections.Counter = collections.Counter()
        self.calls: collections.Counter = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
        out = func(*args, **(kwargs or {}))
        name = func.overloadpacket.__name__
        if name not in VIEWS:
            outs = out if isinstance(out, (tuple, list)) else (out,)
            family = "GEMM/conv" if name in GEMMS else name
            self.bytes[family] += sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))
            self.calls[family] += 1
        return out


def measure(preset: str, batch: int) -> BytesWritten:
    import blocks.mixers.mlstm as mlstm
    from blocks import build_backbone, get_preset

    spec = get_preset(preset)
    if spec.mixer.name == "ssm":
        raise SystemExit(f"{preset}: SSM mixers run the CPU reference scan here, which is not glue; not measured")
    mlstm.mlstm_cell = lambda q, k, v, i, f, backend=None: _StubCell.apply(q, k, v, i, f)
    if hasattr(mlstm.MLSTM, "dense_qkv"):
        mlstm.MLSTM.dense_qkv = True
    else:  # trees before session 12 chose the dense product by the device only
        grouped = mlstm.BlockDiagonal.forward
        mlstm.BlockDiagonal.forward = lambda self, x, dense=None: grouped(self, x, True)
    torch.manual_seed(0)
    model = build_backbone(spec)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size)
    for counting in (False, True):  # the first step allocates optimiser-free lazies (nothing to count)
        model.zero_grad(set_to_none=True)
        mode = BytesWritten() if counting else None
        if mode is not None:
            mode.__enter__()
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            out.float().sum().backward()
        finally:
            if mode is not None:
                mode.__exit__(None, None, None)
    return mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {b: measure(args.preset, b) for b in sorted(args.batch)}
    print(f"{args.preset}, torch {torch.__version__}, CPU bf16 autocast, mLSTM cell stubbed")
    print("| batch | glue MiB written | glue ops | GEMM/conv MiB |\n|---|---|---|---|")
    glue = {}
    for b, m in results.items():
        glue[b] = sum(v for k, v in m.bytes.items() if k != "GEMM/conv")
        print(f"| {b} | {glue[b] / 2**20:.1f} | {sum(v for k, v in m.calls.items() if k != 'GEMM/conv')} | "
              f"{m.bytes['GEMM/conv'] / 2**20:.1f} |")
    lo, hi = min(results), max(results)
    if hi > lo:
        print(f"\nglue per image: {(glue[hi] - glue[lo]) / (hi - lo) / 2**20:.1f} MiB")
    print(f"\nlargest families at batch {hi}:")
    for k, v in results[hi].bytes.most_common(args.top):
        print(f"  {k:28s} {v / 2**20:9.1f} MiB in {results[hi].calls[k]} ops")


if __name__ == "__main__":
    main()
