"""A toy mixer that plugs into the platform from this one file: the proof that a mixer is the unit of extension.

    u = in_proj(x);  per path p, in path order:  h_t = a_p ⊙ h_{t-1} + (1 − a_p) ⊙ u_t   (a_p = sigmoid(decay_logit_p))
    y = out_proj(mean_p scatter_p(h) ⊙ SiLU(gate(x)))

An exponential moving average along each path of the route: causal along the path, elementwise (so PyTorch's FLOP
counter misses the recurrence: the class says its cost), with a per-path decay AdamW must not shrink. Importing this
module registers it (tests/conftest.py imports every tests/_*_mixer.py), and the registry-driven tests (test_grammar,
test_mixer_contract) build, train, cost and check it like any built-in mixer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from blocks import MIXERS, MixContext, MixerParams, TokenMixer


class ToyEMAParams(MixerParams):
    expand: float = Field(1.0, gt=0)


class ToyEMA(TokenMixer):
    Params = ToyEMAParams
    no_weight_decay_names = frozenset({"decay_logit"})
    test_params = ({}, {"expand": 2.0})

    def __init__(self, dim: int, *, params: ToyEMAParams, n_paths: int = 1, layer_idx: int = 0, depth: int = 1,
                 kernel_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, params=params, n_paths=n_paths, layer_idx=layer_idx, depth=depth,
                         kernel_backend=kernel_backend, device=device, dtype=dtype)
        inner = self.inner = int(params.expand * dim)
        if inner < 1:
            raise ValueError(f"toy_ema: expand={params.expand} gives no channels at dim={dim}")
        fk = dict(device=device, dtype=dtype)
        self.in_proj = nn.Linear(dim, inner, **fk)
        self.gate = nn.Linear(dim, inner, **fk)
        self.decay_logit = nn.Parameter(torch.linspace(0.0, 3.0, inner, **fk).repeat(max(1, n_paths), 1))  # (P, E)
        self.out_proj = nn.Linear(inner, dim, **fk)

    @classmethod
    def is_causal(cls, params: ToyEMAParams) -> bool:
        return True

    def sequence_flops(self, tokens: int) -> int:
        return 2 * 2 * len(self.decay_logit) * tokens * self.inner  # two multiply-adds per step, channel and path

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:  # (B, L, C) → (B, L, C)
        u = self.in_proj(x)  # (B, L, E)
        out = torch.zeros_like(u)
        for p, path in enumerate(ctx.paths):
            a = torch.sigmoid(self.decay_logit[p if len(self.decay_logit) > 1 else 0])
            h, steps = torch.zeros_like(u[:, 0]), []
            for u_t in path.gather(u).unbind(1):
                h = a * h + (1 - a) * u_t
                steps.append(h)
            out = out + path.scatter(torch.stack(steps, 1))
        return self.out_proj(out / len(ctx.paths) * F.silu(self.gate(x)))


MIXERS.register("toy_ema", ToyEMA)
