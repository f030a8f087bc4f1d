"""Scan routes: orders over the token grids, their reverses, and named route shorthands.

A path is `ORDER` or `ORDER_rev` (the same sequence read backwards, class tokens included). A route is a tuple of
paths plus a schedule: `parallel` runs every path in every block and sums (or averages) the outputs at their canonical
positions (Vim's bidirectional scan, VMamba's cross-scan); `alternate` runs path `i mod P` in block i (ViL).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator

from .layout import PathIndex, Segment, TokenLayout
from .registry import Registry, unknown_name_message

OrderFn = Callable[[int, int], list[int]]  # (h, w) → raster indices of one segment in visiting order
ORDERS: Registry[OrderFn] = Registry("scan order")
REVERSE_SUFFIX = "_rev"


@ORDERS.decorator("raster")
def _raster(h: int, w: int) -> list[int]:
    return list(range(h * w))


@ORDERS.decorator("column")
def _column(h: int, w: int) -> list[int]:
    return [r * w + c for c in range(w) for r in range(h)]


@ORDERS.decorator("snake")
def _snake(h: int, w: int) -> list[int]:
    return [r * w + (c if r % 2 == 0 else w - 1 - c) for r in range(h) for c in range(w)]


@ORDERS.decorator("column_snake")
def _column_snake(h: int, w: int) -> list[int]:
    return [(r if c % 2 == 0 else h - 1 - r) * w + c for c in range(w) for r in range(h)]


@ORDERS.decorator("diagonal")
def _diagonal(h: int, w: int) -> list[int]:
    return [r * w + (d - r) for d in range(h + w - 1) for r in range(h) if 0 <= d - r < w]


class RouteSpec(BaseModel):
    """Paths and how blocks use them. Validated: every path names a registered order, optionally reversed."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    paths: tuple[str, ...]
    schedule: Literal["parallel", "alternate"] = "parallel"

    @field_validator("paths")
    @classmethod
    def _known_paths(cls, paths: tuple[str, ...]) -> tuple[str, ...]:
        if not paths:
            raise ValueError("a route needs at least one path")
        for p in paths:
            order = p[: -len(REVERSE_SUFFIX)] if p.endswith(REVERSE_SUFFIX) else p
            if order not in ORDERS:
                known = [n + s for n in ORDERS.names() for s in ("", REVERSE_SUFFIX)]
                raise ValueError(unknown_name_message("scan path", p, known))
        if len(set(paths)) != len(paths):
            raise ValueError(f"a route lists the same path twice: {list(paths)}")
        return paths


ROUTES: Registry[RouteSpec] = Registry("route")
for _name, _paths, _schedule in [
    ("uni", ("raster",), "parallel"),
    ("uni_rev", ("raster_rev",), "parallel"),
    ("bi", ("raster", "raster_rev"), "parallel"),  # Vim
    ("cross4", ("raster", "column", "raster_rev", "column_rev"), "parallel"),  # VMamba's cross-scan
    ("snake", ("snake", "snake_rev"), "parallel"),
    ("snake4", ("snake", "column_snake", "snake_rev", "column_snake_rev"), "parallel"),
    ("column_bi", ("column", "column_rev"), "parallel"),
    ("alternating", ("raster", "raster_rev"), "alternate"),  # ViL
    ("alternating4", ("raster", "raster_rev", "column", "column_rev"), "alternate"),
]:
    ROUTES.register(_name, RouteSpec(paths=_paths, schedule=_schedule))


def resolve_route(route: str | RouteSpec | dict) -> RouteSpec:
    """A shorthand name, a dict or a RouteSpec → RouteSpec (shorthands expand, so equal routes compare equal)."""
    if isinstance(route, RouteSpec):
        return route
    if isinstance(route, str):
        return ROUTES.get(route)
    return RouteSpec.model_validate(route)


def route_name(route: RouteSpec) -> str:
    """The shorthand for a route if one exists, else 'paths/schedule'; for tables and plots."""
    for name in ROUTES.names():
        if ROUTES.get(name) == route:
            return name
    return "+".join(route.paths) + ("" if route.schedule == "parallel" else "/alternate")


def path_grid_order(path: str, segments: tuple[Segment, ...]) -> list[int]:
    """Raster indices of the grid tokens in the order the path's ORDER visits them (direction not applied)."""
    order = ORDERS.get(path[: -len(REVERSE_SUFFIX)] if path.endswith(REVERSE_SUFFIX) else path)
    out, offset = [], 0
    for h, w in segments:
        out.extend(offset + i for i in order(h, w))
        offset += h * w
    return out


@lru_cache(maxsize=256)
def _path_positions(path: str, layout: TokenLayout) -> tuple[int, ...]:
    seq = layout.sequence_positions(path_grid_order(path, layout.segments))
    return tuple(reversed(seq)) if path.endswith(REVERSE_SUFFIX) else tuple(seq)


def path_index(path: str, layout: TokenLayout, device: torch.device | str | None = None) -> PathIndex:
    """The permutation of the canonical sequence that `path` visits, with its inverse."""
    positions = _path_positions(path, layout)
    index = torch.tensor(positions, dtype=torch.long, device=device)
    inverse = torch.empty_like(index)
    inverse[index] = torch.arange(index.numel(), device=index.device)
    n = len(positions)
    kind = ("identity" if positions == tuple(range(n)) else
            "reverse" if positions == tuple(range(n - 1, -1, -1)) else "permutation")
    return PathIndex(path, index, inverse, kind)


def block_paths(route: RouteSpec, block_idx: int) -> tuple[str, ...]:
    """The paths block `block_idx` runs under the route's schedule."""
    if route.schedule == "alternate":
        return (route.paths[block_idx % len(route.paths)],)
    return route.paths


def readout_sees_grid(route: RouteSpec, layout: TokenLayout, n_blocks: int) -> list[bool]:
    """For each class token: does some path of some block place a grid token before it (so a causal mixer lets it
    see the image)? A class token that sees nothing has the same value for every input."""
    paths = {p for b in range(n_blocks) for p in block_paths(route, b)}
    seen = [False] * layout.n_cls
    cls_pos = layout.cls_positions
    grid_pos = set(layout.grid_positions)
    for p in paths:
        seq = _path_positions(p, layout)
        for j, pos in enumerate(cls_pos):
            t = seq.index(pos)
            seen[j] = seen[j] or any(q in grid_pos for q in seq[:t])
    return seen
