"""ONNX export of a backbone or a model file, checked against PyTorch with onnxruntime on the CPU.

Why the reference path: the Triton and mamba-ssm kernels are opaque to the exporter (and need a GPU), so the model is
rebuilt on the CPU with `kernel_backend="reference"`: every op is plain PyTorch (the chunked selective scan, the
parallel mLSTM form, SDPA, convs), traced by `torch.export` and converted by `torch.onnx.export(dynamo=True)`. The
batch dimension stays dynamic; the image size is fixed (position tables and token routes are built for it). The
spec's JSON and the caller's metadata go into the ONNX file's `metadata_props`, so the file says what it is.

Needs the `onnx` extra (onnx, onnxscript; onnxruntime for the check): `pip install 'visionseq-nas[onnx]'`.
"""

from __future__ import annotations

import importlib.util
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from blocks import ArchSpec, NasError, build_backbone, read_model_file

ONNX_PACKAGES = ("onnx", "onnxscript")


@dataclass(frozen=True)
class OnnxExport:
    """What an export wrote and how it compared: file size, seconds spent, graph nodes, and the largest absolute
    difference between onnxruntime's and PyTorch's logits on a random batch (None when not checked)."""

    path: Path
    bytes: int
    seconds: float
    nodes: int
    max_abs_diff: float | None


def require(packages: tuple[str, ...] = ONNX_PACKAGES) -> None:
    """Raise a `NasError` that says what to install when a package of the ONNX path is missing."""
    missing = [p for p in packages if importlib.util.find_spec(p) is None]
    if missing:
        raise NasError(f"ONNX export needs {', '.join(missing)} (not installed): pip install 'visionseq-nas[onnx]'")


def reference_model(source: str | os.PathLike[str] | nn.Module) -> tuple[nn.Module, ArchSpec]:
    """The model to export, on the CPU on the reference kernels: read from a model file, or rebuilt from a backbone
    (its weights copied) so a model built for Triton or mamba-ssm exports the same function."""
    if isinstance(source, nn.Module):
        spec = getattr(source, "spec", None)
        if not isinstance(spec, ArchSpec):
            raise NasError("export_onnx takes a visionseq backbone (with .spec) or a model file")
        state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
    else:
        mf = read_model_file(source)
        spec, state = mf.spec, mf.state_dict
    model = build_backbone(spec, kernel_backend="reference", device="cpu")
    model.load_state_dict(state, strict=True)
    return model.eval(), spec


def export_onnx(source: str | os.PathLike[str] | nn.Module, out: str | os.PathLike[str], *,
                metadata: dict[str, str] | None = None, optimize: bool = True, check: bool = True,
                check_batch: int = 2) -> OnnxExport:
    """Export `source` (a model file or a backbone) to `out` (.onnx). With `check`, run the file with onnxruntime on
    a random batch of `check_batch` images (a different batch size than traced: the batch axis is dynamic) and report
    the largest absolute difference from PyTorch's logits."""
    require(ONNX_PACKAGES + (("onnxruntime",) if check else ()))
    model, spec = reference_model(source)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.randn(2, spec.in_chans, spec.img_size, spec.img_size)  # batch 1 would be specialised to a constant
    start = time.perf_counter()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's notes on constant folding, not actionable here
        program = torch.onnx.export(model, (example,), dynamo=True, optimize=optimize, verbose=False,
                                    input_names=["image"], output_names=["logits"],
                                    dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    program.model.metadata_props.update({"arch_spec": spec.to_json(), "spec_id": spec.id, **(metadata or {})})
    program.save(str(out))
    seconds = time.perf_counter() - start
    diff = _check(model, out, spec, check_batch) if check else None
    return OnnxExport(out, out.stat().st_size, seconds, len(list(program.model.graph)), diff)


def _check(model: nn.Module, path: Path, spec: ArchSpec, batch: int) -> float:
    import onnxruntime as ort

    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        want = model(x)
    return float((torch.from_numpy(got) - want).abs().max())


__all__ = ["OnnxExport", "export_onnx", "reference_model", "require"]
