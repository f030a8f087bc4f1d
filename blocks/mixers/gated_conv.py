"""MambaOut's Gated CNN token mixer (Yu & Wang, CVPR 2025), without the block's LayerNorm and residual.

    [g, i, c] = split(fc1(x), (h, h - c, c))      # h = int(expansion_ratio * dim), c = int(conv_ratio * dim)
    c'        = DWConv_{k×k}(c)                    # per token grid (`grid_apply`); class tokens pass through
    y         = fc2(act(g) * concat(i, c'))

Module names `fc1`, `conv`, `fc2` match timm's `mambaout` block keys (stages.i.blocks.j.{fc1,conv,fc2}). Parameters:
dim·2h + 2h + k²·c + c + h·dim + dim. Non-causal (the 2-D conv sees both sides), so routes are ignored.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..layout import MixContext, grid_apply
from .base import MIXERS, MixerParams, TokenMixer


class GatedConvParams(MixerParams):
    expansion_ratio: float = Field(8 / 3, gt=0)
    kernel_size: int = Field(7, ge=1)
    conv_ratio: float = Field(1.0, gt=0)
    act: Literal["gelu", "silu"] = "gelu"


class GatedConv(TokenMixer):
    Params = GatedConvParams
    test_params = ({"kernel_size": 3},)

    def __init__(self, dim: int, *, params: GatedConvParams, n_paths: int = 1, layer_idx: int = 0, depth: int = 1,
                 kernel_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, params=params, n_paths=n_paths, layer_idx=layer_idx, depth=depth,
                         kernel_backend=kernel_backend, device=device, dtype=dtype)
        hidden = int(params.expansion_ratio * dim)
        conv_channels = int(params.conv_ratio * dim)
        if not 0 < conv_channels <= hidden:
            raise ValueError(f"gated_conv: conv channels int(conv_ratio*dim) = {conv_channels} must be in "
                             f"1..hidden = {hidden} (dim={dim}, conv_ratio={params.conv_ratio}, "
                             f"expansion_ratio={params.expansion_ratio})")
        if params.kernel_size % 2 == 0:
            raise ValueError(f"gated_conv: kernel_size must be odd to keep the grid size, got {params.kernel_size}")
        self.hidden, self.conv_channels = hidden, conv_channels
        self.split_sizes = (hidden, hidden - conv_channels, conv_channels)
        fk = dict(device=device, dtype=dtype)
        self.fc1 = nn.Linear(dim, 2 * hidden, **fk)
        k = params.kernel_size
        self.conv = nn.Conv2d(conv_channels, conv_channels, k, padding=k // 2, groups=conv_channels, **fk)
        self.fc2 = nn.Linear(hidden, dim, **fk)
        self.act = nn.GELU() if params.act == "gelu" else nn.SiLU()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.fc1, self.conv, self.fc2):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    @classmethod
    def is_causal(cls, params: GatedConvParams) -> bool:
        return False

    @classmethod
    def mixes_class_tokens(cls, params: GatedConvParams) -> bool:
        return False  # the depthwise conv runs on the grid; class tokens only pass through the gated MLP

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:
        g, i, c = torch.split(self.fc1(x), self.split_sizes, dim=-1)
        c = grid_apply(c, ctx.layout, self.conv)
        return self.fc2(self.act(g) * torch.cat((i, c), dim=-1))


MIXERS.register("gated_conv", GatedConv)
