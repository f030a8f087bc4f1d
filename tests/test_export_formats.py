"""Deployment formats: ONNX (the reference kernels' path, checked against PyTorch with onnxruntime on the CPU) and
timm's `create_model` for the presets and for model files."""

from __future__ import annotations

import pytest
import timm
import timm.data
import timm.optim
import torch

import blocks.timm_models  # noqa: F401  (registers visionseq_* with timm)
from blocks import ModelFileError, NasError, build_backbone, get_preset, save_backbone


@pytest.fixture(scope="module")
def vim_file(tmp_path_factory):
    torch.manual_seed(0)
    spec = get_preset("test_vim")
    model = build_backbone(spec).eval()
    return save_backbone(model, spec, tmp_path_factory.mktemp("m") / "vim.safetensors"), model


# ---- timm ---------------------------------------------------------------------------------------------------------
def test_presets_are_timm_models():
    assert {"visionseq_vim_tiny", "visionseq_vil_tiny", "visionseq_model_file"} <= set(timm.list_models("visionseq_*"))
    model = timm.create_model("visionseq_test_vim", num_classes=7, drop_path_rate=0.1)
    assert model.spec == get_preset("test_vim").with_overrides({"num_classes": 7, "drop_path_rate": 0.1})
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7) and model.num_classes == 7
    cfg = timm.data.resolve_data_config({}, model=model)
    assert cfg["input_size"] == (3, 32, 32)
    opt = timm.optim.create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)  # reads no_weight_decay()
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0 for p in g["params"]}
    named = dict(model.named_parameters())
    assert id(named["cls_token"]) in no_decay and id(named["stages.0.blocks.0.mixer.A_log"]) in no_decay
    with pytest.raises(NasError, match="unsupported keyword"):
        timm.create_model("visionseq_test_vim", global_pool="avg")
    with pytest.raises(ModelFileError, match="no published weights"):
        timm.create_model("visionseq_test_vim", pretrained=True)


def test_model_files_load_through_timm(vim_file):
    path, model = vim_file
    x = torch.randn(2, 3, 32, 32)
    again = timm.create_model("visionseq_model_file", model_file=str(path)).eval()
    same = timm.create_model("visionseq_test_vim", pretrained=True, pretrained_cfg_overlay={"file": str(path)}).eval()
    with torch.no_grad():
        want = model(x)
        assert torch.equal(again(x), want) and torch.equal(same(x), want)
    head = timm.create_model("visionseq_model_file", model_file=str(path), num_classes=3)  # fine-tuning: new head
    assert torch.equal(head.tokenizer.proj.weight, model.tokenizer.proj.weight) and head(x).shape == (2, 3)
    with pytest.raises(ModelFileError, match="not visionseq_test_deit"):
        timm.create_model("visionseq_test_deit", pretrained=True, pretrained_cfg_overlay={"file": str(path)})


# ---- ONNX ---------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_onnx_export_matches_pytorch(vim_file, tmp_path):
    pytest.importorskip("onnxscript", reason="the onnx extra is not installed")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    import onnx

    from nas.export_onnx import export_onnx

    path, model = vim_file
    result = export_onnx(path, tmp_path / "vim.onnx", metadata={"study": "demo"}, optimize=False, check_batch=3)
    assert result.max_abs_diff is not None and result.max_abs_diff < 1e-4  # float32 logits of O(1)
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["spec_id"] == model.spec.id and props["study"] == "demo"


def test_onnx_missing_package_is_a_clear_error(monkeypatch):
    import importlib.util

    from nas import export_onnx

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(NasError, match=r"onnxscript .*pip install 'visionseq-nas\[onnx\]'"):
        export_onnx.require()


def test_cli_refuses_an_unknown_format_before_anything(tmp_path):
    from typer.testing import CliRunner

    from nas.cli import app

    out = tmp_path / "m.pdf"
    result = CliRunner().invoke(app, ["export", "some_study", "-o", str(out), "--format", "pdf",
                                      "--db", f"sqlite:///{tmp_path / 'none.db'}"])
    assert result.exit_code == 2 and "allowed are safetensors, onnx" in result.output
    assert not out.exists() and not (tmp_path / "none.db").exists()
