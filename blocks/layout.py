"""Where every token sits in the sequence a block sees.

The backbone keeps tokens in one *canonical* sequence: each token grid ("segment"; a plain patch grid has one,
GlobalMamba's frequency bands have K) flattened row-major, segments concatenated, and class tokens inserted at the
readout's slots. A path of a route is a permutation of that canonical sequence; mixers gather along it, mix, and
scatter back. 2-D operators (depthwise convs) use `grid_apply`, which sees each segment as an image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
from torch import Tensor

Segment = tuple[int, int]  # (height, width) of one token grid

_INDEX_CACHE: dict[tuple[tuple[int, ...], torch.device], Tensor] = {}


def index_tensor(values: tuple[int, ...], device: torch.device) -> Tensor:
    """`values` as a long tensor on `device`, built once per (values, device). Why: building it in every forward is a
    blocking host-to-device copy, which stalls the CPU until the GPU has drained its queue (every step) and cannot
    be captured in a CUDA graph. The cached tensor is read-only by convention (index_select's index)."""
    if torch.compiler.is_compiling():
        return torch.as_tensor(values, device=device)
    key = (values, torch.device(device))
    index = _INDEX_CACHE.get(key)
    if index is None:
        if len(_INDEX_CACHE) > 1024:  # layouts are few; a bound keeps a long sweep from growing it forever
            _INDEX_CACHE.clear()
        index = _INDEX_CACHE[key] = torch.as_tensor(values, dtype=torch.long, device=device)
    return index


@dataclass(frozen=True)
class TokenLayout:
    """Segments of grid tokens plus class-token slots.

    `cls_slots[j]` is the number of grid tokens that precede class token j along any path's order (before the path's
    direction is applied): head → 0, middle → J//2, tail → J, double → (0, J). So a class token means the same thing
    on every route, and a reversed path reads the same sequence backwards (Vim's bidirectional semantics).
    """

    segments: tuple[Segment, ...]
    cls_slots: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.segments or any(h < 1 or w < 1 for h, w in self.segments):
            raise ValueError(f"token grids must be non-empty, got {self.segments}")
        if any(not 0 <= s <= self.n_grid for s in self.cls_slots) or list(self.cls_slots) != sorted(self.cls_slots):
            raise ValueError(f"class-token slots {self.cls_slots} must be sorted and within 0..{self.n_grid}")

    @property
    def n_grid(self) -> int:
        return sum(h * w for h, w in self.segments)

    @property
    def n_cls(self) -> int:
        return len(self.cls_slots)

    @property
    def length(self) -> int:
        return self.n_grid + self.n_cls

    @cached_property
    def cls_positions(self) -> tuple[int, ...]:
        """Canonical positions of the class tokens (slot + number of class tokens before it)."""
        return tuple(s + j for j, s in enumerate(self.cls_slots))

    @cached_property
    def grid_positions(self) -> tuple[int, ...]:
        """Canonical position of each grid token, grid tokens numbered in raster order over segments."""
        return tuple(_canonical_grid_positions(self))

    def sequence_positions(self, grid_order: list[int]) -> list[int]:
        """Canonical positions visited by a path that walks grid tokens in `grid_order`, class tokens at their slots."""
        if len(grid_order) != self.n_grid:
            raise ValueError(f"an order must visit all {self.n_grid} grid tokens, got {len(grid_order)}")
        grid_pos = self.grid_positions
        out: list[int] = []
        slots = list(zip(self.cls_slots, self.cls_positions))
        k = 0
        for t, g in enumerate(grid_order):
            while k < len(slots) and slots[k][0] == t:
                out.append(slots[k][1])
                k += 1
            out.append(grid_pos[g])
        out.extend(pos for _, pos in slots[k:])
        return out

    def segment_offsets(self) -> list[int]:
        """Raster index of each segment's first grid token."""
        offsets, total = [], 0
        for h, w in self.segments:
            offsets.append(total)
            total += h * w
        return offsets


def _canonical_grid_positions(layout: TokenLayout) -> list[int]:
    # The canonical sequence is the raster order with class tokens inserted, so grid token g lands at g + (number of
    # class tokens whose slot is <= g).
    pos, k = [], 0
    for g in range(layout.n_grid):
        while k < layout.n_cls and layout.cls_slots[k] <= g:
            k += 1
        pos.append(g + k)
    return pos


@dataclass(frozen=True)
class PathIndex:
    """One path as index tensors: `index[t]` is the canonical position visited at step t; `inverse` undoes it.

    `kind` says what the permutation is ("identity", "reverse" or "permutation"; set by `blocks.routes.path_index`
    from the positions on the host). gather/scatter use it: the identity is no copy and the reversal is a flip,
    whose backward is a flip too, where index_select's backward zero-fills and adds with atomics."""

    name: str
    index: Tensor
    inverse: Tensor = field(repr=False)
    kind: str = "permutation"

    def gather(self, x: Tensor, dim: int = 1) -> Tensor:
        """canonical → path order along `dim` (1: (B, L, C))."""
        return self._apply(x, dim, self.index)

    def scatter(self, y: Tensor, dim: int = 1) -> Tensor:
        """path order → canonical along `dim`."""
        return self._apply(y, dim, self.inverse)

    def _apply(self, x: Tensor, dim: int, index: Tensor) -> Tensor:
        if self.kind == "identity":
            return x
        if self.kind == "reverse":
            return x.flip(dim)
        return x.index_select(dim, index.to(x.device))


@dataclass(frozen=True)
class MixContext:
    """What a mixer needs besides the tokens: the layout and the paths this block runs (one, or all of a parallel
    route). Non-causal mixers ignore `paths`."""

    layout: TokenLayout
    paths: tuple[PathIndex, ...]


def grid_apply(x: Tensor, layout: TokenLayout, fn: Callable[[Tensor], Tensor]) -> Tensor:
    """Apply an image operator `fn` ((B, C, h, w) → (B, C', h, w)) to every segment of `x` (B, L, C).

    Class tokens have no spatial neighbours: their channels pass through unchanged (so C' must equal C when the
    layout has class tokens). Returns (B, L, C').
    """
    B, L, C = x.shape
    if L != layout.length:
        raise ValueError(f"sequence length {L} does not match the layout's {layout.length}")
    grid_pos = index_tensor(layout.grid_positions, x.device)
    grid = x.index_select(1, grid_pos) if layout.n_cls else x
    outs = []
    for (h, w), start in zip(layout.segments, layout.segment_offsets()):
        seg = grid[:, start : start + h * w].transpose(1, 2).reshape(B, C, h, w)
        y = fn(seg)
        outs.append(y.reshape(B, y.shape[1], h * w).transpose(1, 2))
    out_grid = torch.cat(outs, dim=1) if len(outs) > 1 else outs[0]
    if not layout.n_cls:
        return out_grid
    out = x.clone() if out_grid.shape[-1] == C else None
    if out is None:
        raise ValueError("grid_apply cannot change the channel count when the layout has class tokens")
    out[:, grid_pos] = out_grid
    return out
