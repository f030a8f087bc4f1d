"""Presets are the seed papers' models: parameter counts equal the published/derived ones, and the DeiT and MambaOut
presets compute timm's function (same state dict through a documented key map → same logits)."""

from __future__ import annotations

import pytest
import timm
import torch

from blocks import PRESETS, build_backbone, count_parameters, get_preset, list_presets, summarize_preset
from blocks.timm_compat import convert_timm_state_dict

PAPER_PRESETS = [n for n in list_presets(include_test=False)]
TIMM_NAMES = {
    "deit_tiny": ("deit_tiny_patch16_224", "deit"),
    "deit_small": ("deit_small_patch16_224", "deit"),
    "mambaout_femto": ("mambaout_femto", "mambaout"),
    "mambaout_kobe": ("mambaout_kobe", "mambaout"),
    "mambaout_tiny": ("mambaout_tiny", "mambaout"),
    "mambaout_small": ("mambaout_small", "mambaout"),
}


def test_every_seed_model_is_a_preset():
    expected = {"deit_tiny", "deit_small", "vim_tiny", "vim_small", "vmamba_tiny", "mambaout_femto", "mambaout_kobe",
                "mambaout_tiny", "mambaout_small", "vil_tiny", "vil_small", "globalmamba_mini"}
    assert expected <= set(PAPER_PRESETS)


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_parameter_count_matches_published(name):
    published = PRESETS.get(name).published_params
    ours = count_parameters(get_preset(name))
    assert abs(ours - published) / published < 0.01, (ours, published)
    if name != "vmamba_tiny":  # the notes give VMamba-T only to 1e3; every other count is exact
        assert ours == published


@pytest.mark.parametrize("name", sorted(TIMM_NAMES))
def test_parameter_count_equals_timm(name):
    timm_name, _ = TIMM_NAMES[name]
    with torch.device("meta"):
        ref = timm.create_model(timm_name, pretrained=False)
    assert count_parameters(get_preset(name)) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name", ["deit_tiny", "mambaout_femto", "mambaout_kobe"])
def test_same_function_as_timm(name):
    timm_name, family = TIMM_NAMES[name]
    torch.manual_seed(0)
    ref = timm.create_model(timm_name, pretrained=False).eval()
    ours = build_backbone(get_preset(name)).eval()
    missing, unexpected = ours.load_state_dict(convert_timm_state_dict(ref.state_dict(), family), strict=True)
    assert not missing and not unexpected
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want, got = ref(x), ours(x)
        want_f, got_f = ref.forward_head(ref.forward_features(x), pre_logits=True), \
            ours.forward_head(ours.forward_features(x), pre_logits=True)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(got_f, want_f, rtol=0, atol=1e-5)


def test_vim_middle_token_index_and_length():
    m = build_backbone(get_preset("vim_tiny"), device="meta")
    assert m.layout.length == 197 and m.layout.cls_positions == (98,)
    g = build_backbone(get_preset("globalmamba_mini"), device="meta")
    assert g.layout.length == 256 and g.layout.cls_positions == (127,)
    assert g.segments == ((1, 1), (3, 3), (7, 7), (14, 14))


def test_vil_final_norm_eps_is_the_presets_own_setting():
    """ViL's final per-token LayerNorm uses eps 1e-6, its block norms and head norm 1e-5 (vil_mlstm.md)."""
    m = build_backbone(get_preset("vil_tiny"), device="meta")
    assert m.norm.eps == 1e-6 and m.head.norm.eps == 1e-5
    assert {b.norm1.eps for b in m.stages[0].blocks} == {1e-5}
    for name in ("vim_tiny", "deit_tiny"):  # every other preset: one eps everywhere, and no new key in its JSON
        spec = get_preset(name)
        assert build_backbone(spec, device="meta").norm.eps == spec.norm_eps
        assert "final_norm_eps" not in spec.to_json()  # so specs written before the field keep their ids
    vim = get_preset("vim_tiny")
    assert vim.with_overrides({"final_norm_eps": vim.norm_eps}).id == vim.id  # an eps equal to norm_eps is no change
    assert vim.with_overrides({"final_norm_eps": 1e-6}).id != vim.id


def test_summary_counts_on_the_meta_device():
    row = summarize_preset("vim_tiny")
    assert (row.params, row.tokens, row.route, row.matches) == (count_parameters(get_preset("vim_tiny")), 197, "bi",
                                                                 True)
    small = summarize_preset("test_vim")  # the meta count is the real model's
    assert small.params == sum(p.numel() for p in build_backbone(get_preset("test_vim")).parameters())


def test_spec_checks_on_the_meta_device_load_no_python_decompositions():
    """Validating a spec builds its parts on the meta device. The SSM and mLSTM mixers' init ran pointwise math
    there, which loads torch's Python decompositions and sympy (~1.5 s a process, on every study's first check):
    their `reset_parameters` now sets nothing on meta tensors. Fresh interpreter: other tests load sympy."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import sys\nfrom blocks.presets import get_preset\n"
            "for name in ('vim_tiny', 'vmamba_tiny', 'vil_tiny'):\n    get_preset(name)\n"
            "print('sympy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=str(Path(__file__).resolve().parents[1]))
    assert out.stdout.strip() == "False", out.stdout + out.stderr
