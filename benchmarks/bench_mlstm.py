"""Chunkwise mLSTM (Triton forward; Triton tile backward, or the chunkwise-PyTorch recompute one) against the
parallel reference.

Run on the GPU machine:  python benchmarks/bench_mlstm.py [--quick] [--out results.md]
Shapes: ViL-T heads (4 heads of 96, bf16 q/k/v, fp32 gates) at 196 tokens (224²), 729 (stride 8) and 6084 (1248²).
Ours: the Triton chunkwise forward with the tile backward of kernels/triton/mlstm_bwd.py (the default); the
"recompute" backward (PyTorch chunkwise under autograd) is listed as a variant. Baseline: `kernels.mlstm.mlstm_parallel_ref` (the parallel stabilised form, O(L²) memory), measured in the same run.
Public baseline: `mlstm_kernels` (NX-AI's TFLA "xl_chunk" Triton kernels) when installed, inputs padded to its chunk.
For scale, causal SDPA (flash) on the same q/k/v is listed too: it is a different operator (softmax attention, no
gates), shown only as the speed of a tuned quadratic-time kernel on the same shape.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

import torch
import torch.nn.functional as F

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from kernels.triton.mlstm import forward_mode, mlstm_triton  # noqa: E402
from kernels.triton.roofline import device_line, emit_report, median_ms  # noqa: E402

try:
    from kernels.mlstm import mlstm_parallel_ref
    REF_NOTE = "reference: kernels.mlstm.mlstm_parallel_ref"
except Exception:  # the reference module is another engineer's; fall back to the test oracle's parallel form
    sys.path.insert(0, str(ROOT / "tests"))
    from _scan_oracle import mlstm_parallel_loop

    def mlstm_parallel_ref(q, k, v, i, f, eps=1e-6):
        return mlstm_parallel_loop(q, k, v, i, f, eps, dtype=torch.float32).to(v.dtype)

    REF_NOTE = "reference: tests/_scan_oracle.mlstm_parallel_loop in fp32 (kernels.mlstm not importable)"

def tfla_version() -> str | None:
    """mlstm_kernels' version when installed (NX-AI's TFLA Triton kernels, the public chunkwise baseline)."""
    import importlib.metadata
    try:
        return importlib.metadata.version("mlstm_kernels")
    except importlib.metadata.PackageNotFoundError:
        return None


TFLA_VARIANTS = (("xl_chunk", 64), ("limit_chunk", 64))


def tfla(kernel: str, chunk: int):
    """mlstm_kernels' chunkwise kernel (same math: exp input gate, logsigmoid forget gate, max(|n·q|, exp(-m)) + eps)
    on inputs zero-padded at the end to a multiple of its chunk (it takes no other lengths; causal, so the padding
    does not change the first L outputs); the padding is part of the timed call."""
    from mlstm_kernels.torch.chunkwise import triton_limit_chunk, triton_xl_chunk
    fn = (triton_xl_chunk.mlstm_chunkwise__xl_chunk if kernel == "xl_chunk"
          else triton_limit_chunk.mlstm_chunkwise__limit_chunk)

    def run(q, k, v, i, f):
        length = q.shape[2]
        pad = -length % chunk
        if pad:
            q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
            i, f = F.pad(i, (0, pad)), F.pad(f, (0, pad))
        return fn(q, k, v, i, f, chunk_size=chunk, autocast_kernel_dtype=torch.bfloat16)[:, :, :length]
    return run


def tfla_child(name: str, kernel: str, chunk: int, reps: int) -> None:
    """Time one mlstm_kernels variant and print one JSON line; run in a child process because a Triton compile
    failure inside LLVM aborts the whole process (seen with triton 3.6.0), which must not take our rows with it."""
    x = make(*SHAPES[name])
    with torch.no_grad():
        ref = mlstm_parallel_ref(*[t.float() for t in x])
        err = ((tfla(kernel, chunk)(*x).float() - ref.float()).norm() / ref.float().norm()).item()
    print(json.dumps({"err": err, "t": list(timed(tfla(kernel, chunk), x, reps))}), flush=True)


def tfla_rows(name: str, length: int, reps: int, t_o, notes: list[str]) -> list[list]:
    version = tfla_version()
    if version is None:
        return [[name, "mlstm_kernels not installed", "-", "-", "-", "-"]]
    rows = []
    for kernel, chunk in TFLA_VARIANTS:
        label = f"mlstm_kernels {version} {kernel} (TFLA), chunk {chunk}, padded to {-(-length // chunk) * chunk}"
        try:
            res = subprocess.run([sys.executable, __file__, "--tfla-child", name, kernel, str(chunk), "--reps",
                                  str(reps)], capture_output=True, text=True, timeout=100)
            last = (res.stdout.strip().splitlines() or [""])[-1]
            data = json.loads(last) if res.returncode == 0 and last.startswith("{") else None
        except subprocess.TimeoutExpired:
            data, res = None, None
        if data is None:
            why = "timed out" if res is None else (res.stderr.strip().splitlines() or ["?"])[-1][:120]
            rows.append([name, f"{label}: failed ({why})", "-", "-", "-", "-"])
            continue
        t_k = tuple(data["t"])
        notes.append(f"{name}: {label} vs fp32 parallel rel. diff {data['err']:.1e}")
        rows.append([name, label, *t_k, ratio(t_k[0], t_o[0]), ratio(t_k[1], t_o[1])])
    return rows


SHAPES = {"vil_t_224": (64, 4, 196, 96), "vil_t_stride8": (16, 4, 729, 96), "vil_t_1248": (2, 4, 6084, 96)}
# all of q, k, v, i, f in bf16 (the reference computes in its inputs' dtype and wants one dtype)


def make(bsz, heads, length, dh):
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(bsz, heads, length, dh, generator=g, device="cuda").bfloat16() for _ in range(3))
    i = torch.randn(bsz, heads, length, generator=g, device="cuda").bfloat16()
    f = (torch.randn(bsz, heads, length, generator=g, device="cuda") + 3.0).bfloat16()
    return [q, k, v, i, f]


def timed(fn, inputs, reps):
    """(fwd ms, fwd+bwd ms) or 'OOM' strings."""
    try:
        t_fwd = median_ms(lambda: fn(*inputs), reps=reps)
        leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
        out = fn(*leaves)
        dout = torch.randn_like(out)
        t_fb = median_ms(lambda: torch.autograd.grad(fn(*leaves), leaves, dout, allow_unused=True), reps=reps)
        return t_fwd, t_fb
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM", "OOM"
    except RuntimeError as exc:  # a reference that refuses these dtypes: say so in the row
        return f"error: {str(exc)[:60]}", "-"


def sdpa(q, k, v, i, f):
    with torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.FLASH_ATTENTION):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def ratio(a, b):
    return f"{a / b:.2f}" if isinstance(a, float) and isinstance(b, float) else "-"


BWD_TILES = [(64, 8), (32, 8), (32, 4), (16, 4)]  # (tile side, warps) of the Triton backward; the first = the previous default


def bwd_sweep(reps: int) -> None:
    """fwd+bwd time of the Triton backward per tile (BWD_TILES) at the three shapes, against the first tile in the same
    run, with the largest relative gradient difference from it (offline SASS: 64 × 64 tiles spill, 32/8 and 16/4 not)."""
    rows = []
    for name, shape in SHAPES.items():
        x = make(*shape)
        leaves = [t.detach().clone().requires_grad_(True) for t in x]
        dout = torch.randn_like(mlstm_triton(*leaves))
        base_t = base_g = None
        for tile in BWD_TILES:
            grads = torch.autograd.grad(mlstm_triton(*leaves, bwd_tile=tile), leaves, dout)
            t = median_ms(lambda: torch.autograd.grad(mlstm_triton(*leaves, bwd_tile=tile), leaves, dout), reps=reps)
            if base_t is None:
                base_t, base_g = t, grads
            diff = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(grads, base_g))
            rows.append([name, f"tile {tile[0]}, {tile[1]} warps", t, f"{base_t / t:.2f}", f"{diff:.1e}"])
            print(rows[-1], flush=True)
    emit_report(f"device: {device_line()}; mLSTM Triton backward tiles", ["shape", "backward tile", "fwd+bwd ms",
                "first row / this (same run)", "max grad rel. diff vs first row"], rows, [], None)


LAYOUT_SHAPE = (128, 4, 144, 96)  # vil_tiny's train step: batch 128, 192² (12 × 12 patches), 4 heads of 96


def mixer_views(bsz: int, heads: int, length: int, dh: int) -> list[torch.Tensor]:
    """q, k, v, i, f laid out as ViL's layer hands them to the cell (blocks/mixers/mlstm.py: _run_cell): q and k
    head views of one (B, L, 2E) GEMM output, v of a (B, L, E) one, the gates (B, H, L) views of a (B, L, 2H) one;
    all bf16 (autocast). Same values as `make`'s contiguous tensors."""
    contiguous = make(bsz, heads, length, dh)
    e = heads * dh
    qk = torch.empty(bsz, length, 2 * e, device="cuda", dtype=torch.bfloat16)
    v = torch.empty(bsz, length, e, device="cuda", dtype=torch.bfloat16)
    gates = torch.empty(bsz, length, 2 * heads, device="cuda", dtype=torch.bfloat16)
    views = [qk[..., :e], qk[..., e:], v]
    views = [t.view(bsz, length, heads, dh).transpose(1, 2) for t in views]
    views += [g.transpose(1, 2) for g in gates.split(heads, dim=-1)]
    for view, src in zip(views, contiguous):
        view.copy_(src)
    return views


def layouts(reps: int) -> None:
    """The cell's time on vil_tiny's train-step shape per input layout and direction: contiguous (B, H, L, DH) copies
    against the mixer's strided head views, forward against `reverse` (session 13's forward got 13 % slower in the
    train step; this says which of the two costs it). Every row's output is checked against the first row's."""
    shape = LAYOUT_SHAPE
    variants = [("contiguous (B, H, L, DH) copies", make(*shape), False),
                ("mixer's head views (strided q/k/v/gates)", mixer_views(*shape), False),
                ("contiguous, reverse", make(*shape), True),
                ("mixer's head views, reverse", mixer_views(*shape), True)]
    rows, base = [], None
    for label, x, reverse in variants:
        try:
            run = (lambda *a, r=reverse: mlstm_triton(*a, reverse=r)) if reverse else mlstm_triton
            with torch.no_grad():
                out = run(*x).float()
        except TypeError:  # an older cell without `reverse` (a before/after run on an old tree)
            rows.append([str(shape), label, "-", "-", "-", "-", "no reverse in this tree"])
            continue
        flipped = [t.flip(2) for t in x] if reverse else x
        with torch.no_grad():
            expect = mlstm_triton(*[t.contiguous() for t in flipped]).float()
            expect = expect.flip(2) if reverse else expect
        diff = ((out - expect).norm() / expect.norm()).item()
        t = timed(run, x, reps)
        base = base or t
        rows.append([str(shape), label, *t, ratio(t[0], base[0]), ratio(t[1], base[1]), f"{diff:.1e}"])
        print(rows[-1], flush=True)
    emit_report(f"device: {device_line()}; mLSTM cell per input layout (vil_tiny train step)",
                ["shape (B, H, L, DH)", "inputs", "fwd ms", "fwd+bwd ms", "this / first fwd", "this / first fwd+bwd",
                 "rel. diff vs contiguous forward run"], rows, [], None)


CHUNKS = (64, 32, 16)  # rows per chunk of the Triton forward; the first is the default


def chunks(reps: int, out: str | None = None) -> None:
    """The cell per forward chunk size, at vil_tiny's train shape (the mixer's head views) and ViL-T 224, against
    chunk 64 in the same run. Offline SASS (sm_90, Triton 3.6): at 144 rows chunk 64 walks 3 chunks with 592 B of
    spills; chunk 32 takes the two-phase forward (5 chunks, 152 and 106 registers, no spills)."""
    rows = []
    for name, x in (("vil_tiny train, mixer views", mixer_views(*LAYOUT_SHAPE)),
                    ("vil_t_224", make(*SHAPES["vil_t_224"]))):
        base = base_out = None
        for chunk in CHUNKS:
            def run(*a, c=chunk):
                return mlstm_triton(*a, chunk=c)
            with torch.no_grad():
                h = run(*x).float()
            t = timed(run, x, reps)
            if base is None:
                base, base_out = t, h
            diff = ((h - base_out).norm() / base_out.norm()).item()
            rows.append([name, str(tuple(x[0].shape)), f"chunk {chunk}", *t, ratio(base[0], t[0]), ratio(base[1], t[1]),
                         f"{diff:.1e}"])
            print(rows[-1], flush=True)
    emit_report(f"device: {device_line()}; mLSTM forward chunk size", ["shape", "(B, H, L, DH)", "forward chunk",
                "fwd ms", "fwd+bwd ms", "first / this fwd", "first / this fwd+bwd", "rel. diff vs first row"],
                rows, [], out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default=None)
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--bwd-sweep", action="store_true", help="only the backward-tile table (BWD_TILES)")
    ap.add_argument("--layouts", action="store_true", help="only the input-layout table (vil_tiny's train shape)")
    ap.add_argument("--chunks", action="store_true", help="only the forward chunk-size table (CHUNKS)")
    ap.add_argument("--tfla-child", nargs=3, default=None, metavar=("SHAPE", "KERNEL", "CHUNK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    reps = args.reps or (5 if args.quick else 30)
    if args.bwd_sweep:
        bwd_sweep(reps)
        return
    if args.layouts:
        layouts(reps)
        return
    if args.chunks:
        chunks(reps, args.out)
        return
    if args.tfla_child:
        tfla_child(args.tfla_child[0], args.tfla_child[1], int(args.tfla_child[2]), reps)
        return
    rows, notes = [], []
    for name, shape in SHAPES.items():
        x = make(*shape)
        with torch.no_grad():
            ours, ref = mlstm_triton(*x), mlstm_parallel_ref(*[t.float() for t in x])
        err = ((ours.float() - ref.float()).norm() / ref.float().norm()).item()
        notes.append(f"{name} {shape}: chunkwise (bf16 in) vs fp32 parallel rel. diff {err:.1e}")
        t_o = timed(lambda *a: mlstm_triton(*a, backward="triton"), x, reps)
        t_t = timed(lambda *a: mlstm_triton(*a, backward="recompute"), x, reps)
        t_w = timed(lambda *a: mlstm_triton(*a, forward="walk"), x, reps)
        t_2 = timed(lambda *a: mlstm_triton(*a, forward="two_phase"), x, reps)
        with torch.no_grad():
            err2 = ((mlstm_triton(*x, forward="two_phase").float() - ours.float()).norm() / ours.float().norm()).item()
        notes.append(f"{name}: two-phase vs walk forward rel. diff {err2:.1e}")
        t_r = timed(mlstm_parallel_ref, x, reps)
        t_s = timed(sdpa, x, reps)
        rows.append([name, f"chunkwise mLSTM (triton fwd, triton tile bwd; the default: forward "
                     f"{forward_mode(-(-shape[2] // 64), x[0].device)})",
                     *t_o, "1.00", "1.00"])
        rows.append([name, "chunkwise mLSTM, forward walk (one program per head walks the chunks)", *t_w,
                     ratio(t_w[0], t_o[0]), ratio(t_w[1], t_o[1])])
        rows.append([name, "chunkwise mLSTM, forward two_phase (states, then chunks in parallel)", *t_2,
                     ratio(t_2[0], t_o[0]), ratio(t_2[1], t_o[1])])
        rows.append([name, "chunkwise mLSTM (triton fwd, PyTorch recompute bwd)", *t_t, ratio(t_t[0], t_o[0]),
                     ratio(t_t[1], t_o[1])])
        rows.append([name, "parallel mLSTM reference", *t_r, ratio(t_r[0], t_o[0]), ratio(t_r[1], t_o[1])])
        rows.append([name, "causal SDPA flash (other operator, scale only)", *t_s, ratio(t_s[0], t_o[0]),
                     ratio(t_s[1], t_o[1])])
        rows += tfla_rows(name, shape[2], reps, t_o, notes)
        del x
        torch.cuda.empty_cache()
    header = ["shape", "variant", "fwd ms", "fwd+bwd ms", "variant/ours fwd", "variant/ours fwd+bwd"]
    emit_report(f"device: {device_line()}; {REF_NOTE}; mlstm_kernels {tfla_version() or 'not installed'}", header,
                rows, notes, args.out)


if __name__ == "__main__":
    main()
