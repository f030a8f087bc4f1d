"""Registry-driven mixer contract: every registered mixer, with each of its class's `test_params`, builds into a tiny
backbone, trains one AdamW step with the platform's weight-decay groups, has its FLOPs counted (no kernel counted
twice, its own rule included), and — where its class says it is causal along the path — passes a causality check.
A mixer added in one file (e.g. tests/_toy_mixer.py) is covered on arrival."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from blocks import MIXERS, ArchSpec, MixContext, TokenLayout, TokenMixer, build_backbone
from blocks.routes import path_index
from nas.measure import count_flops
from nas.trial import param_groups

CASES = [(name, i) for name in MIXERS.names() for i in range(len(MIXERS.get(name).test_params))]
IDS = [f"{name}-{i}" for name, i in CASES]
CAUSAL = [(n, i) for n, i in CASES if MIXERS.get(n).causal_along_path(MIXERS.get(n).Params(**MIXERS.get(n).test_params[i]))]


def _spec(name: str, i: int) -> ArchSpec:
    cls = MIXERS.get(name)
    params = cls.test_params[i]
    causal = cls.is_causal(cls.Params(**params))
    return ArchSpec.from_dict(dict(tokenizer={"name": "patch", "params": {"patch_size": 4}},
                                   mixer={"name": name, "params": params}, route="bi" if causal else None,
                                   readout="mean", dims=[16], depths=[2], mlp_ratio=1.0, img_size=16, num_classes=5))


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_trains_one_step_with_its_no_decay_names(name, i):
    torch.manual_seed(0)
    model = build_backbone(_spec(name, i)).train()
    decay, no_decay = param_groups(model, 0.05)
    off = {id(p) for p in no_decay["params"]}
    named = dict(model.named_parameters())
    for full in model.no_weight_decay():
        assert full in named and id(named[full]) in off, full
    leaves = {n.rsplit(".", 1)[-1] for n in model.no_weight_decay()}
    assert MIXERS.get(name).no_weight_decay_names <= leaves  # every name the class gives exists in the model
    before = {n: p.detach().clone() for n, p in named.items()}
    opt = torch.optim.AdamW([decay, no_decay], lr=1e-2)
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 5, (4,))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss)
    stuck = [n for n, p in named.items() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not stuck, stuck
    opt.step()
    unchanged = [n for n, p in named.items() if torch.equal(p, before[n])]
    assert not unchanged, unchanged


@pytest.mark.parametrize("name,i", CASES, ids=IDS)
def test_flops_are_counted_once_with_the_mixers_rule(name, i):
    torch.manual_seed(0)
    model = build_backbone(_spec(name, i)).eval()
    x = torch.randn(1, 3, 16, 16)
    terms = count_flops(model, x)
    with torch.no_grad(), FlopCounterMode(display=False) as raw:
        model(x)
    assert all(v >= 0 for v in terms.values()) and sum(terms.values()) > 0
    assert terms["counter"] <= raw.get_total_flops()  # kernels' generic counts are replaced, never added twice
    mixers = [m for m in model.modules() if isinstance(m, TokenMixer)]
    assert terms["mixers"] == sum(m.sequence_flops(model.layout.length) for m in mixers)
    if any(m.sequence_flops(model.layout.length) for m in mixers):
        assert terms["mixers"] > 0


@pytest.mark.parametrize("name,i", CAUSAL, ids=[f"{n}-{i}" for n, i in CAUSAL])
@pytest.mark.parametrize("path", ["raster", "column_rev"])
def test_causal_along_path(name, i, path):
    """Perturbing the token at step t changes no output before t and the output at t and after."""
    torch.manual_seed(0)
    cls = MIXERS.get(name)
    mixer = cls(8, params=cls.Params(**cls.test_params[i]), n_paths=1, dtype=torch.float64).eval()
    with torch.no_grad():
        for p in mixer.parameters():  # biases start at zero in several mixers: make every term matter
            p.add_(0.1 * torch.randn_like(p))
    layout = TokenLayout(((3, 4),), cls_slots=(6,))
    ctx = MixContext(layout, (path_index(path, layout),))
    idx = ctx.paths[0].index
    x = torch.randn(1, layout.length, 8, dtype=torch.float64)
    with torch.no_grad():
        base = mixer(x, ctx)[0, idx]  # outputs in path order
        for t in (0, 6, layout.length - 1):
            x2 = x.clone()
            x2[0, idx[t]] += 1.0
            diff = (mixer(x2, ctx)[0, idx] - base).abs().amax(-1)
            assert torch.all(diff[:t] == 0), f"{name} {path}: step {t} changed earlier steps"
            assert diff[t] > 0, f"{name} {path}: step {t} did not change its own output"
