"""Multi-head self-attention as in timm's / DeiT's `Attention`, via `F.scaled_dot_product_attention`.

`qkv` = Linear(dim, 3·dim) with channels laid out [Q | K | V], heads contiguous inside each, and `proj` =
Linear(dim, dim): timm's `blocks.i.attn.{qkv,proj}` weights load unchanged and give the same outputs. Parameters:
4·dim² + 4·dim (with qkv bias). Non-causal attention ignores the route. Causal attention (`causal=True`) runs each path
of `ctx.paths` with a causal mask in path order (shared weights), averages the paths at canonical positions, then
projects.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from ..layout import MixContext
from .base import MIXERS, MixerParams, TokenMixer


class AttentionParams(MixerParams):
    head_dim: int = Field(64, ge=1)
    qkv_bias: bool = True
    causal: bool = False


class Attention(TokenMixer):
    Params = AttentionParams
    test_params = ({"head_dim": 8}, {"head_dim": 8, "causal": True})

    def __init__(self, dim: int, *, params: AttentionParams, n_paths: int = 1, layer_idx: int = 0, depth: int = 1,
                 kernel_backend: str = "auto", device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__(dim, params=params, n_paths=n_paths, layer_idx=layer_idx, depth=depth,
                         kernel_backend=kernel_backend, device=device, dtype=dtype)
        if dim % params.head_dim:
            raise ValueError(f"attention: dim={dim} is not divisible by head_dim={params.head_dim}")
        self.num_heads = dim // params.head_dim
        self.head_dim = params.head_dim
        fk = dict(device=device, dtype=dtype)
        self.qkv = nn.Linear(dim, 3 * dim, bias=params.qkv_bias, **fk)
        self.proj = nn.Linear(dim, dim, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.qkv, self.proj):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    @classmethod
    def is_causal(cls, params: AttentionParams) -> bool:
        return params.causal

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, L, head_dim)
        if not self.params.causal:
            out = F.scaled_dot_product_attention(q, k, v)
        else:
            if not ctx.paths:
                raise ValueError("causal attention needs at least one path in the MixContext")
            out = None
            for path in ctx.paths:
                o = F.scaled_dot_product_attention(path.gather(q, 2), path.gather(k, 2), path.gather(v, 2),
                                                   is_causal=True)
                o = path.scatter(o, 2)
                out = o if out is None else out + o
            if len(ctx.paths) > 1:
                out = out / len(ctx.paths)
        return self.proj(out.transpose(1, 2).reshape(B, L, C))


MIXERS.register("attention", Attention)
