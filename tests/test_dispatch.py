"""kernels.dispatch: backend choice, forced backends, errors, and the scoped report of which path ran."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from _scan_oracle import rel_err, scan_paths_loop  # noqa: E402
from kernels import dispatch  # noqa: E402
from kernels.dispatch import (KernelUnavailableError, available_backends, record_kernel_calls,  # noqa: E402
                              record_kernel_paths)
from kernels.errors import NasError  # noqa: E402


def small_paths_inputs(n_paths=2, dim=3, n_state=4, length=19, seed=0):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(2, n_paths, dim, length, generator=g)
    delta = torch.randn(2, n_paths, dim, length, generator=g) * 0.5
    A = -(torch.rand(n_paths, dim, n_state, generator=g) + 0.5)
    B, C = (torch.randn(2, n_paths, n_state, length, generator=g) for _ in range(2))
    D, bias = torch.randn(n_paths, dim, generator=g), torch.randn(n_paths, dim, generator=g) * 0.3
    z = torch.randn(2, dim, length, generator=g)
    paths = torch.stack([torch.arange(length), torch.arange(length).flip(0)])[:n_paths]
    return (u, delta, A, B, C, D, z, bias), paths


def test_reference_paths_matches_oracle():
    pytest.importorskip("kernels.selective_scan", reason="the single-path reference is another module's job")
    args, paths = small_paths_inputs()
    from kernels.route_scan import selective_scan_paths_ref

    got = selective_scan_paths_ref(*[a.double() for a in args], delta_softplus=True, paths=paths, merge="mean")
    want = scan_paths_loop(*args, delta_softplus=True, paths=paths, merge="mean")
    assert rel_err(got, want) < 1e-12


def test_auto_on_cpu_is_reference_and_is_reported():
    pytest.importorskip("kernels.selective_scan", reason="the single-path reference is another module's job")
    args, paths = small_paths_inputs()
    with record_kernel_paths() as used:
        dispatch.selective_scan_paths(*args, delta_softplus=True, paths=paths)
    assert used == {"selective_scan_paths": "reference"}


def test_forced_triton_runs_under_interpreter_and_matches(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    if not torch.cuda.is_available():
        monkeypatch.setenv("TRITON_INTERPRET", "1")
    args, paths = small_paths_inputs()
    with record_kernel_paths() as outer:
        with record_kernel_paths() as inner:
            got = dispatch.selective_scan_paths(*args, delta_softplus=True, paths=paths, backend="triton")
    assert inner == outer == {"selective_scan_paths": "triton"}
    assert rel_err(got, scan_paths_loop(*args, delta_softplus=True, paths=paths)) < 1e-5


def test_record_is_scoped():
    with record_kernel_paths() as used:
        pass
    pytest.importorskip("kernels.mlstm", reason="the mLSTM reference is another module's job")
    q = torch.randn(1, 1, 5, 4)
    dispatch.mlstm(q, q, q, torch.zeros(1, 1, 5), torch.zeros(1, 1, 5), backend="reference")
    assert used == {}


def test_calls_are_recorded_with_the_ops_rule_and_the_probe():
    args, paths = small_paths_inputs()  # batch 2, 2 paths, dim 3, N 4, L 19
    q = torch.randn(2, 3, 7, 4)
    ticks = iter(range(0, 1000, 10))  # a probe that advances 10 per reading: every call spans exactly 10
    with record_kernel_paths() as used, record_kernel_calls(probe=lambda: next(ticks)) as calls:
        dispatch.selective_scan_paths(*args, delta_softplus=True, paths=paths)
        dispatch.mlstm(q, q, q, q[..., 0], q[..., 0])
    assert used == {"selective_scan_paths": "reference", "mlstm": "reference"}
    assert [(c.op, c.backend, c.flops_term, c.probed) for c in calls] == [
        ("selective_scan_paths", "reference", "selective_scan", 10), ("mlstm", "reference", "mlstm", 10)]
    assert calls[0].flops == 2 * 2 * (9 * 19 * (2 * 3) * 4 + 19 * (2 * 3))  # VMamba's rule, all paths' channels
    assert calls[1].flops == 2 * 2 * 3 * 7 * 7 * 4  # ViL's S²·E per head, batch 2
    with record_kernel_calls() as unprobed:
        dispatch.mlstm(q, q, q, q[..., 0], q[..., 0])
    assert unprobed[0].probed == 0 and len(calls) == 2  # the outer block closed: nothing more recorded there


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusals")
def test_forced_backends_refuse_with_actionable_message(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args, paths = small_paths_inputs()
    with pytest.raises(KernelUnavailableError, match="TRITON_INTERPRET=1"):
        dispatch.selective_scan_paths(*args, paths=paths, backend="triton")
    with pytest.raises(KernelUnavailableError, match="CUDA device"):
        dispatch.selective_scan(args[0][:, 0], args[1][:, 0], args[2][0], args[3][:, 0], args[4][:, 0],
                                backend="mamba_ssm")
    with pytest.raises(KernelUnavailableError, match="no 'mamba_ssm' backend"):
        q = torch.randn(1, 1, 4, 4)
        dispatch.mlstm(q, q, q, q[..., 0], q[..., 0], backend="mamba_ssm")
    assert available_backends("cpu", "selective_scan") == ("reference",)
    with pytest.raises(NasError, match="backend='reference'") as info:  # part of the project's error hierarchy
        dispatch.mlstm(q, q, q, q[..., 0], q[..., 0], backend="triton")
    assert "'ref'" not in str(info.value)


def test_fp64_inputs_refuse_triton_but_auto_falls_back(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    args, paths = small_paths_inputs()
    args = tuple(a.double() for a in args)
    with pytest.raises(KernelUnavailableError, match="float64"):
        dispatch.selective_scan_paths(*args, paths=paths, backend="triton")


def test_bad_names_say_what_exists():
    args, paths = small_paths_inputs()
    with pytest.raises(ValueError, match="backend must be one of"):
        dispatch.selective_scan_paths(*args, paths=paths, backend="cuda")
    with pytest.raises(ValueError, match="merge must be one of"):
        dispatch.selective_scan_paths(*args, paths=paths, merge="max")
    with pytest.raises(ValueError, match="unknown op"):
        available_backends("cpu", "attention")
    with pytest.raises(ValueError, match="delta must have shape"):
        dispatch.selective_scan_paths(args[0], args[1][:, :1], *args[2:], paths=paths)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (runs on the GPU machine)")
@pytest.mark.parametrize("backend", ["triton", "mamba_ssm"])
def test_gpu_backends_agree_with_reference(backend):
    if backend == "mamba_ssm":
        pytest.importorskip("mamba_ssm", reason="mamba-ssm is not installed on this GPU machine")
    args, paths = small_paths_inputs(dim=16, n_state=16, length=197)
    args = tuple(a.cuda() for a in args)
    with record_kernel_paths() as used:
        got = dispatch.selective_scan_paths(*args, delta_softplus=True, paths=paths.cuda(), merge="mean",
                                            backend=backend)
    assert used == {"selective_scan_paths": backend}
    want = scan_paths_loop(*args, delta_softplus=True, paths=paths.cuda(), merge="mean")
    assert rel_err(got, want) < 1e-4


def test_the_ssm_mixers_conv_is_a_dispatched_op_and_recorded():
    from blocks import build_backbone, get_preset
    from kernels.dispatch import record_kernel_calls

    model = build_backbone(get_preset("test_vim")).eval()
    mixer = model.stages[0].blocks[0].mixer
    tokens: list[int] = []
    mixer.register_forward_pre_hook(lambda m, args: tokens.append(args[0].shape[1]))
    with torch.no_grad(), record_kernel_paths() as used, record_kernel_calls() as calls:
        model(torch.randn(2, 3, 32, 32))
    assert used == {"causal_conv1d_paths": "reference", "selective_scan_paths": "reference"}
    conv = [c for c in calls if c.op == "causal_conv1d_paths"]
    n_conv, inner, width = mixer.conv_weight.shape  # (Pc, E, K)
    assert len(conv) == len(model.stages[0].blocks) and conv[0].flops_term == "causal_conv1d"
    assert conv[0].flops == 2 * 2 * n_conv * tokens[0] * inner * width  # 2 FLOPs per multiply-add, batch 2
