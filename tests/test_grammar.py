"""Registry-driven tests: every registered mixer × route × readout × tokenizer that is valid builds, runs forward
and backward on a tiny input, every parameter gets a gradient, nothing is NaN; invalid ones raise InvalidSpecError
naming the clash. New registry entries are covered on arrival; each mixer's grid parameters are its class's first
`test_params`."""

from __future__ import annotations

import pytest
import torch

from blocks import MIXERS, READOUTS, ROUTES, TOKENIZERS, ArchSpec, InvalidSpecError, UnknownNameError, build_backbone

TOKENIZER_PARAMS = {"patch": {"patch_size": 4}, "dct_bands": {"patch_size": 4, "bands": 2}, "conv_stem": {}}


def _tiny(mixer: str, route: str | None, readout: str, tokenizer: str, layout: str = "plain", **extra) -> dict:
    hier = layout == "hierarchical"
    return dict(layout=layout, tokenizer={"name": tokenizer, "params": TOKENIZER_PARAMS.get(tokenizer, {})},
                mixer={"name": mixer, "params": MIXERS.get(mixer).test_params[0]}, route=route, readout=readout,
                dims=[8, 16] if hier else [16], depths=[1, 1] if hier else [2], img_size=16,
                num_classes=0 if readout == "none" else 5, mlp_ratio=1.0, **extra)


def _combos():
    """Each mixer with every route, every readout and every tokenizer (one axis varied at a time: every registered
    entry meets every mixer; the full product adds ~10x the time and no new code paths)."""
    seen = set()
    for mixer in MIXERS.names():
        rows = [(mixer, r, "middle", "patch") for r in ROUTES.names()]
        rows += [(mixer, "bi", r, "patch") for r in READOUTS.names()]
        rows += [(mixer, "alternating", "mean", t) for t in TOKENIZERS.names()]
        for row in rows:
            if row not in seen:
                seen.add(row)
                yield row


def _run(spec: ArchSpec, img: int = 16) -> None:
    torch.manual_seed(0)
    model = build_backbone(spec)
    x = torch.randn(2, 3, img, img)
    out = model(x)
    assert torch.isfinite(out).all()
    with torch.no_grad():  # the output must depend on the image (a readout that sees nothing would not)
        assert not torch.allclose(model.eval()(x), model(torch.randn(2, 3, img, img)))
    model.train()
    (out.float().square().mean() + 0 * sum(p.sum() for p in model.parameters())).backward()
    # every parameter must receive a gradient through the *data* path, not only through the 0·p term above
    model.zero_grad()
    model(x).float().square().mean().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not dead, dead


@pytest.mark.parametrize("mixer,route,readout,tokenizer", list(_combos()))
def test_every_valid_combination_builds_and_trains(mixer, route, readout, tokenizer):
    try:
        spec = ArchSpec.from_dict(_tiny(mixer, route, readout, tokenizer))
    except InvalidSpecError as e:
        # The only clashes in this grid: a class token that can see nothing (causal route), or a mixer that never
        # mixes class tokens with the image (gated_conv).
        assert "only ever sees itself" in str(e) or "never mixes class tokens" in str(e), str(e)
        return
    _run(spec)


@pytest.mark.parametrize("mixer", MIXERS.names())
@pytest.mark.parametrize("readout", ["mean", "max", "bilateral_avg"])
def test_hierarchical_layout(mixer, readout):
    cls = MIXERS.get(mixer)
    route = "cross4" if cls.is_causal(cls.Params(**cls.test_params[0])) else None
    spec = ArchSpec.from_dict(_tiny(mixer, route, readout, "conv_stem", layout="hierarchical"))
    _run(spec)


def test_head_token_with_causal_attention_and_no_other_path_is_invalid():
    with pytest.raises(InvalidSpecError, match="readout 'head'.*attention"):
        ArchSpec.from_dict(_tiny("attention", "uni", "head", "patch") | {
            "mixer": {"name": "attention", "params": {"head_dim": 8, "causal": True}}})
    # the reversed path lets the same class token see the image
    ArchSpec.from_dict(_tiny("attention", "bi", "head", "patch") | {
        "mixer": {"name": "attention", "params": {"head_dim": 8, "causal": True}}})


@pytest.mark.parametrize("changes,match", [
    ({"layout": "hierarchical", "dims": [8, 16], "depths": [1, 1], "readout": "middle"}, "clashes with layout"),
    ({"readout": "none"}, "num_classes"),
    ({"dims": [16, 32], "depths": [1, 1]}, "plain"),
    ({"mixer": {"name": "ssm", "params": {"d_state": 0}}}, "d_state"),
    ({"mixer": {"name": "ssm", "params": {"dstate": 4}}}, "dstate"),
    ({"mixer": {"name": "attention", "params": {"head_dim": 7}}}, "head_dim"),
    ({"route": None}, "needs a route"),
    ({"layout": "hierarchical", "dims": [8, 16], "depths": [1, 1], "readout": "mean",
      "tokenizer": {"name": "dct_bands"}}, "dct_bands"),
    ({"dims": "wide"}, "dims"),
])
def test_invalid_specs_name_the_clash(changes, match):
    with pytest.raises(InvalidSpecError, match=match):
        ArchSpec.from_dict(_tiny("ssm", "bi", "middle", "patch") | changes)


@pytest.mark.parametrize("field,value,axis", [("mixer", {"name": "ssn"}, "mixer"), ("readout", "midle", "readout"),
                                              ("tokenizer", {"name": "pach"}, "tokenizer"), ("route", "bii", "route")])
def test_unknown_names_suggest_and_list(field, value, axis):
    with pytest.raises((UnknownNameError, InvalidSpecError)) as info:
        ArchSpec.from_dict(_tiny("ssm", "bi", "middle", "patch") | {field: value})
    msg = str(info.value)
    assert "did you mean" in msg and "known:" in msg, msg
