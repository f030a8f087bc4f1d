"""The seed papers' models as data: each preset is an `ArchSpec` dict, never a class or a code branch.

Published parameter counts (../shared/reference/) live beside each preset so tests and the demo compare against them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .backbone import build_backbone
from .registry import Registry
from .routes import route_name
from .spec import ArchSpec


@dataclass(frozen=True)
class PresetSummary:
    """One row of `nas presets`: the preset's choices, its token count and parameter count against the published."""

    name: str
    spec: ArchSpec
    layout: str
    mixer: str
    route: str
    readout: str
    tokens: int
    params: int
    published_params: int | None

    @property
    def ratio(self) -> float | None:
        return self.params / self.published_params if self.published_params else None

    @property
    def matches(self) -> bool:
        """Within 1% of the published count (exact for every preset but VMamba-T, which the notes round)."""
        return self.ratio is None or abs(self.ratio - 1) < 0.01


@dataclass(frozen=True)
class Preset:
    name: str
    spec: dict[str, Any]
    published_params: int | None = None  # exact count from the reference notes (None for test presets)
    source: str = ""


PRESETS: Registry[Preset] = Registry("preset")


def _reg(name: str, spec: dict[str, Any], published: int | None = None, source: str = "") -> None:
    PRESETS.register(name, Preset(name, spec, published, source))


def _deit(dim: int) -> dict[str, Any]:
    return dict(tokenizer={"name": "patch", "params": {"patch_size": 16}},
                mixer={"name": "attention", "params": {"head_dim": 64}}, readout="head", dims=[dim], depths=[12],
                mlp_ratio=4.0, norm="layernorm", norm_eps=1e-6, pos_embed=True, drop_path_rate=0.1)


def _vim(dim: int, dpr: float) -> dict[str, Any]:
    return dict(tokenizer={"name": "patch", "params": {"patch_size": 16}}, mixer={"name": "ssm"}, route="bi",
                readout="middle", dims=[dim], depths=[24], norm="rmsnorm", norm_eps=1e-5, pos_embed=True,
                drop_path_rate=dpr)


def _mambaout(dims: list[int], depths: list[int], dpr: float) -> dict[str, Any]:
    return dict(layout="hierarchical", tokenizer={"name": "conv_stem"}, mixer={"name": "gated_conv"},
                readout="mean", dims=dims, depths=depths, norm="layernorm", norm_eps=1e-6, final_norm=False,
                head="norm_mlp", drop_path_rate=dpr)


def _vil(dim: int, dpr: float) -> dict[str, Any]:
    return dict(tokenizer={"name": "patch", "params": {"patch_size": 16}}, mixer={"name": "mlstm"},
                route="alternating", readout="bilateral_concat", dims=[dim], depths=[24], norm="layernorm",
                norm_eps=1e-5, final_norm_eps=1e-6, pos_embed=True, head="norm_linear", img_size=192,
                drop_path_rate=dpr)


_reg("deit_tiny", _deit(192), 5_717_416, "deit.md")
_reg("deit_small", _deit(384), 22_050_664, "deit.md")
_reg("vim_tiny", _vim(192, 0.0), 7_148_008, "vim.md")
_reg("vim_small", _vim(384, 0.05), 25_796_584, "vim.md")
_reg("vmamba_tiny", dict(  # the paper's VMamba-T = T[s1l8]
    layout="hierarchical", tokenizer={"name": "conv_stem"},
    mixer={"name": "ssm", "params": {"d_state": 1, "expand": 1.0, "conv": "dw2d", "conv_bias": False, "gate": False,
                                     "out_norm": True, "merge": "sum"}},
    route="cross4", readout="mean", dims=[96, 192, 384, 768], depths=[2, 2, 8, 2], mlp_ratio=4.0, norm="layernorm",
    norm_eps=1e-5, drop_path_rate=0.2), 30_249_000, "vmamba.md (30.249M, rounded in the notes)")
_reg("mambaout_femto", _mambaout([48, 96, 192, 288], [3, 3, 9, 3], 0.025), 7_304_536, "mambaout.md")
_reg("mambaout_kobe", _mambaout([48, 96, 192, 288], [3, 3, 15, 3], 0.025), 9_141_208, "mambaout.md")
_reg("mambaout_tiny", _mambaout([96, 192, 384, 576], [3, 3, 9, 3], 0.2), 26_545_096, "mambaout.md")
_reg("mambaout_small", _mambaout([96, 192, 384, 576], [3, 4, 27, 3], 0.4), 48_488_072, "mambaout.md")
_reg("vil_tiny", _vil(192, 0.0), 6_381_544, "vil_mlstm.md (v2 at 192²)")
_reg("vil_small", _vil(384, 0.05), 23_378_728, "vil_mlstm.md (v2 at 192²)")
_reg("globalmamba_mini", dict(  # GlobalMamba-M* as released: Vim-Ti with the DCT-band tokenizer, unidirectional
    tokenizer={"name": "dct_bands", "params": {"patch_size": 16, "bands": 4, "order": "low_to_high"}},
    mixer={"name": "ssm"}, route="uni", readout="middle", dims=[192], depths=[24], norm="rmsnorm", norm_eps=1e-5,
    pos_embed=True), 6_431_272, "globalmamba.md (released unidirectional code, 256 position rows)")

# Tiny presets for CPU tests and the default study: 32² images, a handful of tokens, 10 classes.
_TINY = dict(img_size=32, num_classes=10)
_reg("test_vim", dict(_vim(32, 0.0), depths=[2], tokenizer={"name": "patch", "params": {"patch_size": 8}}, **_TINY))
_reg("test_deit", dict(_deit(32), depths=[2], tokenizer={"name": "patch", "params": {"patch_size": 8}},
                       mixer={"name": "attention", "params": {"head_dim": 16}}, **_TINY))
_reg("test_vil", dict(_vil(32, 0.0), depths=[2], tokenizer={"name": "patch", "params": {"patch_size": 8}},
                      **_TINY))
_reg("test_mambaout", dict(_mambaout([16, 32], [1, 1], 0.0), **_TINY))
_reg("test_vmamba", dict(PRESETS.get("vmamba_tiny").spec, dims=[16, 32], depths=[1, 1], drop_path_rate=0.0, **_TINY))
_reg("test_globalmamba", dict(PRESETS.get("globalmamba_mini").spec, depths=[2], dims=[32],
                              tokenizer={"name": "dct_bands", "params": {"patch_size": 8, "bands": 2}}, **_TINY))


def get_preset(name: str) -> ArchSpec:
    """The preset's validated `ArchSpec` (unknown names raise with a did-you-mean and the list of presets)."""
    return ArchSpec.from_dict(PRESETS.get(name).spec)


def list_presets(include_test: bool = True) -> list[str]:
    return [n for n in PRESETS.names() if include_test or not n.startswith("test_")]


def summarize_preset(name: str) -> PresetSummary:
    """Count the preset's parameters and tokens on the meta device (no memory, no weights initialised: milliseconds,
    where building and running every preset for real takes minutes on a CPU)."""
    spec, preset = get_preset(name), PRESETS.get(name)
    model = build_backbone(spec, device="meta")
    return PresetSummary(name, spec, spec.layout, spec.mixer.name, route_name(spec.route) if spec.route else "-",
                         spec.readout, model.layout.length, sum(p.numel() for p in model.parameters()),
                         preset.published_params)
