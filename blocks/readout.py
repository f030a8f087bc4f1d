"""Class-token placements and readouts: where class tokens sit and how the head's feature vector is formed.

Vim's Table 5 (mean, max, head, double, middle) and ViL's classification designs (bilateral average / concat) are
all entries here; `none` keeps dense per-token features (a feature extractor, num_classes = 0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch
from torch import Tensor

from .layout import TokenLayout, index_tensor
from .registry import Registry

Pool = Literal["cls", "mean", "max", "bilateral_avg", "bilateral_concat", "none"]


@dataclass(frozen=True)
class Readout:
    """`slots(J)` gives the class-token slots for J grid tokens; `pool` says how features are read out."""

    name: str
    slots: Callable[[int], tuple[int, ...]]
    pool: Pool
    feature_mult: int = 1  # width of the pooled feature in units of the last stage's width

    @property
    def needs_class_tokens(self) -> bool:
        return self.pool == "cls"


READOUTS: Registry[Readout] = Registry("readout")
for _r in [
    Readout("head", lambda J: (0,), "cls"),
    Readout("middle", lambda J: (J // 2,), "cls"),  # Vim's default: index floor(J/2), before insertion
    Readout("tail", lambda J: (J,), "cls"),
    Readout("double", lambda J: (0, J), "cls"),  # head + tail, averaged
    Readout("mean", lambda J: (), "mean"),
    Readout("max", lambda J: (), "max"),  # Vim: the head scores every token, then max over tokens
    Readout("bilateral_avg", lambda J: (), "bilateral_avg"),  # ViL v1: mean of first and last token
    Readout("bilateral_concat", lambda J: (), "bilateral_concat", feature_mult=2),  # ViL v2
    Readout("none", lambda J: (), "none"),
]:
    READOUTS.register(_r.name, _r)


def pool_features(x: Tensor, readout: Readout, layout: TokenLayout) -> Tensor:
    """(B, L, C) normalised tokens → (B, F) pooled features, or (B, L, C) for `max` and `none` (scored per token)."""
    if readout.pool == "cls":
        pos = index_tensor(layout.cls_positions, x.device)
        return x.index_select(1, pos).mean(1)
    if readout.pool == "mean":
        return _grid_tokens(x, layout).mean(1)
    if readout.pool in ("bilateral_avg", "bilateral_concat"):
        grid = _grid_tokens(x, layout)
        first, last = grid[:, 0], grid[:, -1]
        return (first + last) / 2 if readout.pool == "bilateral_avg" else torch.cat([first, last], dim=-1)
    return x  # max / none: per-token


def _grid_tokens(x: Tensor, layout: TokenLayout) -> Tensor:
    if not layout.n_cls:
        return x
    return x.index_select(1, index_tensor(layout.grid_positions, x.device))
