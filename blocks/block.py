"""One residual block: x + DropPath(mixer(norm(x))), then an optional MLP sub-block (DeiT, VMamba v2)."""

from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from .layers import DropPath, Mlp
from .layout import MixContext
from .mixers.base import TokenMixer


def make_norm(kind: str, eps: float) -> Callable[[int], nn.Module]:
    """'layernorm' → LayerNorm(dim, eps); 'rmsnorm' → RMSNorm(dim, eps) (weight only, as in Vim)."""
    if kind == "rmsnorm":
        return lambda dim: nn.RMSNorm(dim, eps=eps)
    return lambda dim: nn.LayerNorm(dim, eps=eps)


class Block(nn.Module):
    def __init__(self, dim: int, mixer: TokenMixer, norm: Callable[[int], nn.Module], mlp_ratio: float = 0.0,
                 drop_path: float = 0.0) -> None:
        super().__init__()
        self.norm1 = norm(dim)
        self.mixer = mixer
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = norm(dim) if mlp_ratio > 0 else None
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU) if mlp_ratio > 0 else None

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:  # (B, L, C) → (B, L, C)
        x = x + self.drop_path(self.mixer(self.norm1(x), ctx))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x
