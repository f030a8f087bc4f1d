"""The mixer contract: every token mixer maps (B, L, C) → (B, L, C) and says whether it is causal.

A mixer file defines one `TokenMixer` subclass with a pydantic `Params` model (defaults filled in by the spec, so
equal models hash equal), registers it in `MIXERS`, and nothing else: the mixer class is the unit of extension. What
the platform needs from a mixer lives on its class, so no other file changes when one is added:

- `is_causal` / `causal_along_path` / `mixes_class_tokens`: what the spec checks and the causality tests rely on;
- `no_weight_decay_names`: parameters AdamW must not decay (the backbone's `no_weight_decay()` collects them);
- `sequence_flops(tokens)`: FLOPs of work the mixer does itself that a generic counter misses (elementwise
  recurrences); ops it calls through `kernels.dispatch` are costed there, by the op's rule;
- `test_params`: small parameter sets the registry-driven tests build, train, cost and check for causality.

Causal mixers run along each path in `ctx.paths` (gather → mix → scatter) and merge; non-causal mixers ignore the route.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from ..layout import MixContext
from ..registry import Registry


class MixerParams(BaseModel):
    """Base of every mixer's parameter model: frozen, unknown keys rejected."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class TokenMixer(nn.Module):
    """Base class. Subclasses set `Params` and implement `is_causal` and `forward`."""

    Params: ClassVar[type[MixerParams]] = MixerParams
    no_weight_decay_names: ClassVar[frozenset[str]] = frozenset()  # leaf names; 1-D parameters are never decayed
    test_params: ClassVar[tuple[dict[str, Any], ...]] = ({},)  # small and fast; the first one is the grid's

    def __init__(
        self,
        dim: int,
        *,
        params: MixerParams,
        n_paths: int = 1,
        layer_idx: int = 0,
        depth: int = 1,
        kernel_backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.dim, self.params, self.n_paths = dim, params, n_paths
        self.layer_idx, self.depth, self.kernel_backend = layer_idx, depth, kernel_backend

    @classmethod
    def is_causal(cls, params: MixerParams) -> bool:
        raise NotImplementedError

    @classmethod
    def causal_along_path(cls, params: MixerParams) -> bool:
        """Whether the output at step t of a path depends on steps <= t only (the strict property the causality tests
        check). `is_causal` only says the mixer runs along the route; a variant with a 2-D conv before its recurrence
        (VMamba's SS2D, ViL v2) is causal only up to the conv's footprint and says False here."""
        return cls.is_causal(params)

    @classmethod
    def mixes_class_tokens(cls, params: MixerParams) -> bool:
        """Whether class tokens exchange information with the image tokens (a class-token readout is useless
        otherwise). True for sequence mixers; a purely spatial mixer that passes class tokens through says False."""
        return True

    @classmethod
    def canonical_params(cls, params: MixerParams) -> MixerParams:
        """Params with choices that cannot change the model set to one canonical value (so equal models hash
        equal). Default: unchanged."""
        return params

    def sequence_flops(self, tokens: int) -> int:
        """FLOPs (2 per multiply-add) per sequence of `tokens` tokens that a generic counter (PyTorch's
        FlopCounterMode counts matmuls and convs, not elementwise ops) misses in this mixer's own code. Default 0:
        matmuls are counted, and ops called through `kernels.dispatch` are costed by their rule there."""
        return 0

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:  # (B, L, C) → (B, L, C)
        raise NotImplementedError


MIXERS: Registry[type[TokenMixer]] = Registry("mixer")
