"""The safetensors model file: exact round trip for every family, metadata, and a clear refusal of every bad file
(pickles above all: loading must never unpickle anything)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from blocks import ArchSpec, ModelFileError, build_backbone, get_preset, load_backbone, read_model_file, save_backbone
from blocks.model_file import FORMAT
from nas.export import export_metadata, export_model_file

FAMILIES = ["test_vim", "test_deit", "test_vil", "test_mambaout", "test_vmamba", "test_globalmamba"]


def _saved(tmp_path, preset="test_deit", **kw):
    torch.manual_seed(0)
    spec = get_preset(preset)
    model = build_backbone(spec).eval()
    return model, spec, save_backbone(model, spec, tmp_path / "m.safetensors", **kw)


@pytest.mark.parametrize("preset", FAMILIES)
def test_round_trip_gives_identical_logits(tmp_path, preset):
    model, spec, path = _saved(tmp_path, preset)
    loaded = load_backbone(path)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert loaded.spec.id == spec.id and not loaded.training


def test_metadata_round_trip_and_header(tmp_path):
    meta = {"study": "cls_position", "trial": "7", "top1": "0.8125"}
    _, spec, path = _saved(tmp_path, metadata=meta)
    mf = read_model_file(path)
    assert mf.metadata == meta and mf.spec == spec
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    assert header["format"] == FORMAT and header["spec_id"] == spec.id and json.loads(header["arch_spec"])


def test_reserved_or_non_string_metadata_is_refused(tmp_path):
    spec = get_preset("test_deit")
    model = build_backbone(spec)
    with pytest.raises(ModelFileError, match="reserved"):
        save_backbone(model, spec, tmp_path / "a.safetensors", {"spec_id": "x"})
    with pytest.raises(ModelFileError, match="str to str"):
        save_backbone(model, spec, tmp_path / "b.safetensors", {"epoch": 3})  # type: ignore[dict-item]


def test_tied_tensors_are_stored_once_and_restored(tmp_path):
    spec = get_preset("test_deit")
    model = build_backbone(spec).eval()
    b0, b1 = model.stages[0].blocks[:2]
    with torch.no_grad():
        b0.norm1.weight.uniform_()
    b1.norm1.weight = b0.norm1.weight  # one Parameter under two names, like tied embeddings
    path = save_backbone(model, spec, tmp_path / "tied.safetensors")
    with safe_open(str(path), "pt") as f:
        assert "stages.0.blocks.1.norm1.weight" not in f.keys()
        assert json.loads(f.metadata()["tied"]) == {"stages.0.blocks.1.norm1.weight": "stages.0.blocks.0.norm1.weight"}
    loaded = load_backbone(path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_no_pickle_is_used(tmp_path, monkeypatch):
    model, _, path = _saved(tmp_path, "test_vim")

    def refuse(*a, **k):
        raise AssertionError("unpickling during load_backbone")

    for mod, name in [(pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load")]:
        monkeypatch.setattr(mod, name, refuse)
    loaded = load_backbone(path)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))


# ---- refusals ------------------------------------------------------------------------------------------------------
def _refused(path, *words):
    with pytest.raises(ModelFileError) as e:
        load_backbone(path)
    msg = str(e.value)
    assert str(path) in msg, msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_file(tmp_path):
    _refused(tmp_path / "nope.safetensors", "no such model file")


def test_pickle_file(tmp_path):
    p = tmp_path / "model.pkl"
    p.write_bytes(pickle.dumps({"w": [1.0, 2.0]}, protocol=4))
    _refused(p, "pickle files are never loaded", "nas export")


def test_torch_save_file(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(build_backbone(get_preset("test_deit")).state_dict(), p)
    _refused(p, "torch.save zip", "pickle files are never loaded", "nas export")


def test_garbage_file(tmp_path):
    p = tmp_path / "model.safetensors"
    p.write_bytes(b"not a model at all")
    _refused(p, "not a safetensors file")


def test_path_traversal_tensor_name(tmp_path):
    for i, name in enumerate(["../evil", "/etc/passwd", "a\x00b", "weight..bias"]):
        p = tmp_path / f"evil{i}.safetensors"
        save_file({name: torch.zeros(2)}, str(p), metadata={"format": FORMAT})
        _refused(p, "not dotted parameter paths", repr(name)[1:-1])


def test_safetensors_without_our_metadata(tmp_path):
    p = tmp_path / "plain.safetensors"
    save_file({k: v.contiguous() for k, v in build_backbone(get_preset("test_deit")).state_dict().items()}, str(p))
    _refused(p, "without visionseq-nas metadata", "no ArchSpec")


def test_spec_that_does_not_validate(tmp_path):
    _, spec, path = _saved(tmp_path)
    bad = dict(spec.to_dict(), readout="nowhere")
    _rewrite_header(path, arch_spec=json.dumps(bad))
    _refused(path, "arch_spec in its header does not validate", "nowhere")


def test_edited_spec_id(tmp_path):
    _, _, path = _saved(tmp_path)
    _rewrite_header(path, spec_id="0123456789abcdef")
    _refused(path, "spec_id '0123456789abcdef'")


def test_wrong_shapes_and_keys(tmp_path):
    spec = get_preset("test_deit")
    state = build_backbone(spec.with_overrides({"dims": [48]})).state_dict()
    state["bogus.weight"] = torch.zeros(1)
    del state["norm.bias"]
    p = tmp_path / "wrong.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(p),
              metadata={"format": FORMAT, "arch_spec": spec.to_json(), "spec_id": spec.id})
    msg = _refused(p, "do not match spec", "missing norm.bias", "unexpected bogus.weight",
                   "wrong shape cls_token (1, 1, 48) in file, (1, 1, 32) in spec")
    assert "more)" in msg  # the list is cut after the first few


def _rewrite_header(path, **changes: str) -> None:
    with safe_open(str(path), "pt") as f:
        header = dict(f.metadata())
    save_file(load_file(str(path)), str(path), metadata={**header, **changes})


def test_save_refuses_a_model_that_is_not_the_spec(tmp_path):
    spec = get_preset("test_deit")
    wrapper = nn.Module()
    wrapper.add_module("inner", build_backbone(spec))
    p = tmp_path / "wrapped.safetensors"
    with pytest.raises(ModelFileError, match=r"missing cls_token, .* \(\+\d+ more\); unexpected inner\.cls_token"):
        save_backbone(wrapper, spec, p)  # keys gain 'inner.': a file that could never load is not written
    assert not p.exists()


# ---- export -------------------------------------------------------------------------------------------------------
def test_export_adds_provenance_and_pairs_the_spec(tmp_path):
    model, spec, src = _saved(tmp_path, "test_vil", metadata={"seed": "3"})
    meta = export_metadata("cls_position", 7, {"top1": 0.8125})
    assert meta == {"study": "cls_position", "trial": "7", "metric.top1": "0.8125"}
    out = export_model_file(src, tmp_path / "export" / "model.json", meta)
    assert out == tmp_path / "export" / "model.safetensors" and sorted(p.name for p in out.parent.iterdir()) == [
        "model.json", "model.safetensors"]
    assert ArchSpec.from_json((out.parent / "model.json").read_text()) == spec
    mf = read_model_file(out)
    assert mf.metadata == {"seed": "3", **meta} and mf.spec == spec
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), load_backbone(out)(x))

    alone = export_model_file(src, tmp_path / "alone.safetensors", {"trial": "8"})
    assert not alone.with_suffix(".json").exists() and read_model_file(alone).metadata["trial"] == "8"
    export_model_file(alone, alone, {"trial": "9"}, pair=True)  # in place: metadata updated, spec paired
    assert read_model_file(alone).metadata["trial"] == "9" and alone.with_suffix(".json").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("alone")) == [
        "alone.json", "alone.safetensors"]  # no partial file left


def test_export_refuses_a_pickle_source_and_writes_nothing(tmp_path):
    src = tmp_path / "trial.pt"
    torch.save({"w": torch.zeros(1)}, src)
    with pytest.raises(ModelFileError, match="pickle files are never loaded"):
        export_model_file(src, tmp_path / "out.json", {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trial.pt"]
