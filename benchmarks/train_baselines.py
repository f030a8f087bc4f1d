"""The baselines of benchmarks/bench_train.py: the seed codebases' own fast paths, each on the same backbone shape.

Each baseline builds a model, checks that it computes what ours computes where the two share parameters (the
relative difference goes into the row's note), and times it with bench_train's `measure`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class Baseline:
    label: str
    preset: str
    letter: str  # the (a)-(d)
    needs: tuple[str, ...]  # importable modules, with the compiled extensions: a build in the background installs
    # the Python package before its CUDA extension (session 9: causal_conv1d imported, causal_conv1d_cuda not yet)
    build: Callable  # (preset, batch, res, device, build_ours) -> (model, note)
    primary: bool = True  # the row a target is judged on
    child: bool = False  # run in a child process

    def run(self, preset, batch, res, device, reps, measure, build_ours) -> dict:
        model, note = self.build(preset, batch, res, device, build_ours)
        out = measure(model, batch, res, device, reps)
        out["note"] = note
        return out


class VimInnerFnMixer(nn.Module):
    """Our SSM mixer's parameters run as Vim's v2 block: mamba_inner_fn on xz and on its flip, out_proj halved in each
    (so the sum is Vim's (out + out_b.flip) / 2 then out_proj)."""

    def __init__(self, mixer: nn.Module) -> None:
        super().__init__()
        if mixer.n_paths != 2 or mixer.in_proj.bias is not None or mixer.out_norm is not None:
            raise ValueError("mamba_inner_fn runs Vim's block: two paths, no in_proj bias, no out norm")
        self.m = mixer

    def forward(self, x, ctx):
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn

        m = self.m
        bsz, length, dim = x.shape
        xz = (m.in_proj.weight @ x.reshape(bsz * length, dim).t()).view(-1, bsz, length).permute(1, 0, 2)
        out = 0
        for p, seq in enumerate((xz, xz.flip(-1))):
            y = mamba_inner_fn(seq, m.conv_weight[p].unsqueeze(1), None if m.conv_bias is None else m.conv_bias[p],
                               m.x_proj_weight[p], m.dt_proj_weight[p], m.out_proj.weight / 2,
                               None if m.out_proj.bias is None else m.out_proj.bias / 2, -torch.exp(m.A_log[p].float()),
                               None, None, m.D[p].float(), m.dt_proj_bias[p].float(), delta_softplus=True)
            out = out + (y if p == 0 else y.flip(1))
        return out


def _vim_inner(preset, batch, res, device, build_ours):
    from blocks.mixers.ssm import SSMMixer

    model = build_ours(preset, res, device)
    swapped = 0
    for module in list(model.modules()):
        if hasattr(module, "mixer") and isinstance(module.mixer, SSMMixer):
            module.mixer = VimInnerFnMixer(module.mixer)
            swapped += 1
    return model, f"{swapped} mixers as mamba_inner_fn × 2; " + _same_output(model, build_ours, preset, res, device)


def _same_output(model, build_ours, preset, res, device) -> str:
    """Relative difference of the logits from ours with the same weights (bf16 autocast, one small batch)."""
    ours = build_ours(preset, res, device)
    ours.load_state_dict({k.replace(".m.", "."): v for k, v in model.state_dict().items()})
    x = torch.randn(2, 3, res, res, device=device, generator=torch.Generator(device=device).manual_seed(1))
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        a, b = model(x).float(), ours(x).float()
    return f"logits vs ours rel. diff {((a - b).norm() / b.norm()).item():.1e}"


def _vmamba_mamba_ssm(preset, batch, res, device, build_ours):
    model = build_ours(preset, res, device, backend="mamba_ssm")
    return model, "backend mamba_ssm (cross-scan copies + mamba-ssm + cross-merge); " + _same_output(
        model, build_ours, preset, res, device)


def _tfla(kernel: str):
    def build(preset, batch, res, device, build_ours):
        import blocks.mixers.mlstm as mod
        from mlstm_kernels.torch.chunkwise import triton_limit_chunk, triton_xl_chunk

        fn = (triton_xl_chunk.mlstm_chunkwise__xl_chunk if kernel == "xl_chunk"
              else triton_limit_chunk.mlstm_chunkwise__limit_chunk)

        def cell(q, k, v, i, f, reverse=False, backend=None):  # its kernels take multiples of the chunk (64): pad at
            # the end (causal); ViL's layout: contiguous (b, h, L, d) heads, the reversed blocks on flipped copies
            assert not reverse, "the baseline runs reversed paths on gathered (flipped) copies, as ViL does"
            q, k, v, i, f = (t.contiguous() for t in (q, k, v, i, f))
            length = q.shape[2]
            pad = -length % 64
            if pad:
                q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
                i, f = F.pad(i, (0, pad)), F.pad(f, (0, pad))
            return fn(q, k, v, i, f, chunk_size=64, autocast_kernel_dtype=torch.bfloat16)[:, :, :length]

        model = build_ours(preset, res, device)
        x = torch.randn(2, 3, res, res, device=device, generator=torch.Generator(device=device).manual_seed(1))
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            b = model(x).float()
            mod.mlstm_cell = cell  # this (child) process only: the mixer calls the module-level name
            mod.MLSTM.native_paths = False  # reversed blocks flip their inputs, as ViL's code does
            a = model(x).float()
        diff = ((a - b).norm() / b.norm()).item()
        return model, f"mlstm_kernels {kernel}, chunk 64; logits vs ours rel. diff {diff:.1e}"
    return build


def _timm(name: str):
    def build(preset, batch, res, device, build_ours):
        import timm

        from blocks import count_parameters, get_preset

        kw = {"img_size": res} if name.startswith("deit") else {}
        model = timm.create_model(name, pretrained=False, **kw).to(device)
        return model, (f"timm {timm.__version__} {name}: {sum(p.numel() for p in model.parameters())} params "
                       f"(ours {count_parameters(get_preset(preset))})")
    return build


BASELINES = {
    "vim_inner": Baseline("Vim's block as its code runs it (mamba_inner_fn on x and flip(x))", "vim_tiny", "a",
                          ("mamba_ssm", "selective_scan_cuda", "causal_conv1d", "causal_conv1d_cuda"), _vim_inner),
    "vil_tfla_limit": Baseline("ViL with mlstm_kernels limit_chunk (TFLA)", "vil_tiny", "b", ("mlstm_kernels",),
                               _tfla("limit_chunk"), child=True),
    "vil_tfla_xl": Baseline("ViL with mlstm_kernels xl_chunk (TFLA)", "vil_tiny", "b", ("mlstm_kernels",),
                            _tfla("xl_chunk"), primary=False, child=True),
    "timm_deit": Baseline("timm deit_tiny_patch16_224", "deit_tiny", "d", ("timm",), _timm("deit_tiny_patch16_224")),
    "timm_mambaout": Baseline("timm mambaout_femto", "mambaout_femto", "d", ("timm",), _timm("mambaout_femto")),
    "vmamba_mamba_ssm": Baseline("VMamba's pipeline (cross-scan + mamba-ssm + cross-merge)", "vmamba_tiny", "c",
                                 ("mamba_ssm", "selective_scan_cuda"), _vmamba_mamba_ssm),
}


def baseline_available(name: str) -> str | None:
    """None when the baseline's modules import, else a short reason for its row."""
    for module in BASELINES[name].needs:
        try:
            importlib.import_module(module)
        except Exception as exc:  # a missing or broken build is reported in the table, not raised
            return f"not measured: {module} unavailable ({type(exc).__name__})"
    return None


def versions_line(device: str) -> str:
    def ver(pkg: str) -> str:
        try:
            return importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            return "-"
    import triton

    dev = "cpu"
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        dev = f"{props.name}, {props.multi_processor_count} SMs"
    return (f"device: {dev}; torch {torch.__version__}, triton {triton.__version__}, timm {ver('timm')}, mamba_ssm "
            f"{ver('mamba_ssm')}, causal_conv1d {ver('causal_conv1d')}, mlstm_kernels {ver('mlstm_kernels')}")


__all__ = ["BASELINES", "Baseline", "baseline_available", "versions_line", "VimInnerFnMixer"]
