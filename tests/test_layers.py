"""blocks.layers against timm's layers: the same module names, outputs and random draws (the grammar dropped timm's
package import for its start-up cost; blocks/layers.py), including trunc_normal_ (the backbone's class token and
position embedding init: a seed must initialise a backbone as it did with timm's)."""

from __future__ import annotations

import pytest
import torch

from blocks.layers import DropPath, Mlp, trunc_normal_

timm_layers = pytest.importorskip("timm.layers")


def test_mlp_matches_timm():
    torch.manual_seed(0)
    ours = Mlp(24, 96, act_layer=torch.nn.GELU).double()
    theirs = timm_layers.Mlp(24, 96, act_layer=torch.nn.GELU).double()
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in theirs.named_modules()]
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(3, 7, 24, dtype=torch.float64)
    torch.testing.assert_close(ours(x), theirs(x), rtol=0, atol=0)


@pytest.mark.parametrize("prob", [0.0, 0.3, 1.0])
def test_drop_path_matches_timm(prob):
    ours, theirs = DropPath(prob), timm_layers.DropPath(prob)
    x = torch.randn(64, 5, 8, requires_grad=True)
    for training in (True, False):
        ours.train(training), theirs.train(training)
        torch.manual_seed(1)
        a = ours(x)
        torch.manual_seed(1)
        b = theirs(x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    ours.train(), theirs.train()
    torch.manual_seed(2)
    ga, = torch.autograd.grad(ours(x).sum(), x)
    torch.manual_seed(2)
    gb, = torch.autograd.grad(theirs(x).sum(), x)
    torch.testing.assert_close(ga, gb, rtol=0, atol=0)
    if 0.0 < prob < 1.0:  # some samples dropped, the rest scaled by 1 / keep (the expectation is kept)
        ours.train()
        torch.manual_seed(3)
        y = ours(torch.ones(4000, 1))
        kept = y[y != 0]
        assert 0 < kept.numel() < 4000
        torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - prob)))
        assert abs(y.mean().item() - 1.0) < 0.05


def test_drop_path_repr_names_the_rate():
    assert "drop_prob=0.100" in repr(DropPath(0.1))


@pytest.mark.parametrize("mean, std, lo, hi", [(0.0, 0.02, -2.0, 2.0), (0.5, 1.0, -0.5, 1.0)])
def test_trunc_normal_matches_timm(mean, std, lo, hi):
    a, b = torch.empty(1, 197, 192), torch.empty(1, 197, 192)
    torch.manual_seed(4)
    trunc_normal_(a, mean=mean, std=std, a=lo, b=hi)
    torch.manual_seed(4)
    timm_layers.trunc_normal_(b, mean=mean, std=std, a=lo, b=hi)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert lo <= a.min().item() and a.max().item() <= hi
