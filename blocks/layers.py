"""The small layers and the init the grammar needs, with timm's module names and math, without importing timm.

`import timm` loads all of `timm.layers`, which imports `torchvision.ops`: 9.7 s per process on the GPU machine, 2.6 s
of it timm's own modules, and 2.6 s on the 2-core development VM (benchmarks/RESULTS.md, session 14). Every Ray worker
of a study imports the block grammar before its first trial, so a study's start-up paid it in each worker.
These match timm's `DropPath`, `Mlp` and `trunc_normal_` exactly (same parameter names, same random draws;
tests/test_layers.py compares them with timm's), so state dicts and timm checkpoints load unchanged and a seed
initialises a backbone as it did with timm's (torch's own `nn.init.trunc_normal_` draws differently). timm is still
used where its models are (blocks/timm_models.py: the timm bridge), imported only there.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


@torch.no_grad()
def trunc_normal_(tensor: Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> Tensor:
    """Fill `tensor` from N(mean, std²) truncated to [a, b] (absolute bounds) by the inverse CDF: a uniform draw
    between Φ(α) and Φ(β), mapped back through Φ⁻¹ = √2·erfinv(2u − 1); one uniform draw per element."""
    def cdf(z: float) -> float:
        return (1.0 + math.erf(z / math.sqrt(2.0))) / 2.0

    lo, hi = cdf((a - mean) / std), cdf((b - mean) / std)
    tensor.uniform_(2 * lo - 1, 2 * hi - 1).erfinv_()
    return tensor.mul_(std * math.sqrt(2.0)).add_(mean).clamp_(min=a, max=b)


def drop_path(x: Tensor, prob: float, training: bool) -> Tensor:
    """Stochastic depth per sample: zero a whole sample's residual branch with probability `prob` and scale the kept
    ones by 1 / (1 - prob), so the expectation is unchanged (Huang et al., 2016; timm's `drop_path`)."""
    if prob == 0.0 or not training:
        return x
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    if keep > 0.0:
        mask.div_(keep)
    return x * mask


class DropPath(nn.Module):
    """`drop_path` as a module (identity in eval mode)."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: Tensor) -> Tensor:
        return drop_path(x, self.drop_prob, self.training)

    def extra_repr(self) -> str:
        return f"drop_prob={round(self.drop_prob, 3):0.3f}"


class Mlp(nn.Module):
    """fc1 → activation → fc2, with timm's module names (fc1, act, drop1, norm, fc2, drop2), so DeiT's and VMamba's
    `mlp.fc1` / `mlp.fc2` weights load unchanged."""

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 act_layer: Callable[[], nn.Module] = nn.GELU, bias: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = act_layer()
        self.drop1 = nn.Dropout(drop)
        self.norm = nn.Identity()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.norm(self.drop1(self.act(self.fc1(x))))))


__all__ = ["DropPath", "Mlp", "drop_path", "trunc_normal_"]
