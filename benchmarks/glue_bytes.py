"""Bytes written per train step by the ops around the kernels (everything but GEMMs/convs and the mLSTM cell), on the
CPU under bf16 autocast: a proxy, measurable without a GPU, for the memory traffic of a step's PyTorch glue.

    python benchmarks/glue_bytes.py vil_tiny --batch 2 16

The kernels are replaced by stubs that only allocate their outputs and gradients in the fast kernels' layouts (their
own traffic is not glue): the mLSTM cell, the selective scan and the path conv (and, since session 13, the mLSTM
layer's fused norm/skip/gate tail: one write of its output and of each gradient); the q/k/v maps of an mLSTM take the
CUDA path (dense GEMMs); RMSNorm counts as the one fused kernel CUDA runs for it. View ops and allocations are not counted; each other op counts the bytes of the tensors it
returns. The per-image line is the difference between the largest and the smallest batch, divided by the images
between them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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


class _StubScan(torch.autograd.Function):
    """selective_scan_paths' contract: (batch, dim, L) out; gradients allocated like their inputs."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias):  # noqa: ANN001, ANN205
        ctx.like = (u, delta, A, B, C, D, z, delta_bias)
        return u.new_empty((u.shape[0], u.shape[2], u.shape[3]))

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return tuple(None if t is None else torch.empty_like(t) for t in ctx.like)


class _StubConv(torch.autograd.Function):
    """causal_conv1d_paths' contract: (B, Pc, L, E) out with the Triton kernel's (Pc, B, L, E) memory."""

    @staticmethod
    def forward(ctx, x, weight, bias, n_paths):  # noqa: ANN001, ANN205
        ctx.like = (x, weight, bias)
        return x.new_empty((n_paths, *x.shape)).transpose(0, 1)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return (*(None if t is None else torch.empty_like(t) for t in ctx.like), None)


class _StubTail(torch.autograd.Function):
    """mlstm_tail_triton's contract: y (B, L, E) like c; gradients of h, c, z allocated like them."""

    @staticmethod
    def forward(ctx, h, c, z, w, b, skip):  # noqa: ANN001, ANN205
        ctx.like = (h, c, z, w, b, skip)
        return torch.empty_like(c, memory_format=torch.contiguous_format)

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return tuple(None if t is None else torch.empty_like(t) for t in ctx.like)


class _FusedRMSNorm(torch.autograd.Function):
    """What CUDA runs for F.rms_norm (aten._fused_rms_norm: one kernel each way), counted as such: one write of y
    forward, one of dx and the weight's row sums backward. On the CPU F.rms_norm is a chain of pow/mean/rsqrt/mul ops,
    each writing a (B, L, D) fp32 tensor, which the GPU step does not pay."""

    @staticmethod
    def forward(ctx, x, weight):  # noqa: ANN001, ANN205
        ctx.has_weight = weight is not None
        return x * 1.0

    @staticmethod
    def backward(ctx, g):  # noqa: ANN001, ANN205
        return g * 1.0, g.flatten(0, -2).sum(0) if ctx.has_weight else None


def _rms_norm_as_on_cuda(x, normalized_shape, weight=None, eps=None):  # noqa: ANN001, ANN202
    return _FusedRMSNorm.apply(x, weight)


def _stub_kernels() -> None:
    import blocks.mixers.mlstm as mlstm
    import blocks.mixers.ssm as ssm

    torch.nn.functional.rms_norm = _rms_norm_as_on_cuda  # nn.RMSNorm calls it through the module attribute

    mlstm.mlstm_cell = lambda q, k, v, i, f, reverse=False, backend=None: _StubCell.apply(q, k, v, i, f)
    ssm.selective_scan_paths = (lambda u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                                paths=None, merge="sum", backend=None: _StubScan.apply(u, delta, A, B, C, D, z,
                                                                                      delta_bias))
    ssm.causal_conv1d_paths = lambda x, w, b, paths, backend=None: _StubConv.apply(x, w, b, paths.shape[0])
    if hasattr(mlstm, "mlstm_tail_fused"):  # trees since session 13: the fused norm/skip/gate tail
        mlstm.mlstm_tail_fused = _StubTail.apply
        mlstm.MLSTM.fused_tail = True
    if hasattr(mlstm.MLSTM, "dense_qkv"):
        mlstm.MLSTM.dense_qkv = True
    else:  # trees before session 12 chose the dense product by the device only
        grouped = mlstm.BlockDiagonal.forward
        mlstm.BlockDiagonal.forward = lambda self, x, dense=None: grouped(self, x, True)


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
    from blocks import build_backbone, get_preset

    spec = get_preset(preset)
    _stub_kernels()
    torch.manual_seed(0)
    model = build_backbone(spec)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size)
    for mode in (contextlib.nullcontext(), BytesWritten()):  # an uncounted step first: one-off allocations
        model.zero_grad(set_to_none=True)
        with mode:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                out = model(x)
            out.float().sum().backward()
    return mode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset")
    ap.add_argument("--batch", type=int, nargs="+", default=[2, 16])
    ap.add_argument("--top", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    results = {b: measure(args.preset, b) for b in sorted(args.batch)}
    print(f"{args.preset}, torch {torch.__version__}, CPU bf16 autocast, kernels stubbed")
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
