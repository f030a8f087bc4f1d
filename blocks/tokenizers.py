"""Tokenizers: image (B, C_in, H, W) → tokens (B, J, D) in canonical raster order, plus their grid segments.

`patch` (ViT/Vim/ViL), `dct_bands` (GlobalMamba's frequency serialisation) and `conv_stem` (the two-conv stem of
VMamba v2 and MambaOut, for hierarchical layouts).
"""

from __future__ import annotations

import math
import random
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from kernels.dct import anti_diagonal_lowpass_masks, dct2, idct2

from .layout import Segment
from .registry import Registry


class TokenizerParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Tokenizer(nn.Module):
    """Base: `segments(img_size, params)` is known before building, so specs are validated without a model."""

    Params: ClassVar[type[TokenizerParams]] = TokenizerParams

    @classmethod
    def segments(cls, img_size: int, params: TokenizerParams) -> tuple[Segment, ...]:
        raise NotImplementedError


TOKENIZERS: Registry[type[Tokenizer]] = Registry("tokenizer")


class PatchParams(TokenizerParams):
    patch_size: int = Field(16, ge=1)
    stride: int | None = Field(None, ge=1)  # None: non-overlapping (stride = patch); Vim's long-sequence uses 8
    norm: bool = False  # LayerNorm after the projection (VMamba v1 stem)


@TOKENIZERS.decorator("patch")
class PatchTokenizer(Tokenizer):
    Params = PatchParams

    def __init__(self, in_chans: int, dim: int, img_size: int, params: PatchParams, norm_eps: float = 1e-6) -> None:
        super().__init__()
        stride = params.stride or params.patch_size
        self.proj = nn.Conv2d(in_chans, dim, params.patch_size, stride)
        self.norm = nn.LayerNorm(dim, eps=norm_eps) if params.norm else nn.Identity()

    @classmethod
    def segments(cls, img_size: int, params: PatchParams) -> tuple[Segment, ...]:
        g = (img_size - params.patch_size) // (params.stride or params.patch_size) + 1
        if g < 1:
            raise ValueError(f"patch_size {params.patch_size} is larger than the image ({img_size})")
        return ((g, g),)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))  # (B, D, g, g) → (B, g*g, D)


class DCTBandParams(TokenizerParams):
    patch_size: int = Field(16, ge=1)
    bands: int = Field(4, ge=1, le=8)
    order: Literal["low_to_high", "high_to_low", "random"] = "low_to_high"
    seed: int = 0  # the band permutation for order=random (fixed per model, not per image)


@TOKENIZERS.decorator("dct_bands")
class DCTBandTokenizer(Tokenizer):
    """GlobalMamba's global image serialisation, as in its released code.

    Band k keeps the cumulative low-pass spectrum u+v <= S/2^(K-1-k) - 1 (band K is the image itself), goes back
    through the inverse DCT, is embedded by ONE shared PxP patch conv at full resolution, and the token grid is
    bilinearly resized to g_k = max(1, floor(S / 2^(K-k) / P)). Grids are concatenated in band order (1 + 9 + 49 +
    196 = 255 tokens at 224/P16/K4). The clamp to one token for K >= 5 is our choice (the paper is silent).
    """

    Params = DCTBandParams

    def __init__(self, in_chans: int, dim: int, img_size: int, params: DCTBandParams, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.params, self.img_size = params, img_size
        self.proj = nn.Conv2d(in_chans, dim, params.patch_size, params.patch_size)
        masks = anti_diagonal_lowpass_masks(img_size, params.bands).to(torch.float32)
        self.register_buffer("masks", masks, persistent=False)  # (K, S, S)
        self.band_order = self.order(params)

    @staticmethod
    def order(params: DCTBandParams) -> list[int]:
        bands = list(range(params.bands))
        if params.order == "high_to_low":
            return bands[::-1]
        if params.order == "random":
            random.Random(params.seed).shuffle(bands)
        return bands

    @classmethod
    def grid_sides(cls, img_size: int, params: DCTBandParams) -> list[int]:
        K, P = params.bands, params.patch_size
        return [max(1, (img_size // 2 ** (K - 1 - k)) // P) for k in range(K)]

    @classmethod
    def segments(cls, img_size: int, params: DCTBandParams) -> tuple[Segment, ...]:
        if img_size < params.patch_size:
            raise ValueError(f"patch_size {params.patch_size} is larger than the image ({img_size})")
        sides = cls.grid_sides(img_size, params)
        return tuple((sides[k], sides[k]) for k in cls.order(params))

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] != self.img_size or x.shape[-2] != self.img_size:
            raise ValueError(f"dct_bands was built for {self.img_size}² images, got {tuple(x.shape[-2:])}")
        spec = dct2(x.float())  # (B, C, S, S)
        sides = self.grid_sides(self.img_size, self.params)
        tokens = []
        for k in self.band_order:
            band = idct2(spec * self.masks[k]).to(x.dtype)
            grid = self.proj(band)  # (B, D, S/P, S/P)
            if grid.shape[-1] != sides[k]:
                grid = F.interpolate(grid, size=(sides[k], sides[k]), mode="bilinear", align_corners=False)
            tokens.append(grid.flatten(2).transpose(1, 2))
        return torch.cat(tokens, dim=1)


class ConvStemParams(TokenizerParams):
    pass


@TOKENIZERS.decorator("conv_stem")
class ConvStemTokenizer(Tokenizer):
    """Conv3x3 s2 (→D/2) → LN → GELU → Conv3x3 s2 (→D) → LN: stride 4 (VMamba v2, MambaOut)."""

    Params = ConvStemParams

    def __init__(self, in_chans: int, dim: int, img_size: int, params: ConvStemParams, norm_eps: float = 1e-6) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, 2, 1)
        self.norm1 = nn.LayerNorm(dim // 2, eps=norm_eps)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, 2, 1)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)

    @classmethod
    def segments(cls, img_size: int, params: ConvStemParams) -> tuple[Segment, ...]:
        g = math.ceil(math.ceil(img_size / 2) / 2)
        return ((g, g),)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv1(x).permute(0, 2, 3, 1)  # NHWC for the channel LayerNorm
        x = self.act(self.norm1(x)).permute(0, 3, 1, 2)
        x = self.norm2(self.conv2(x).permute(0, 2, 3, 1))
        return x.flatten(1, 2)  # (B, H/4 * W/4, D)
