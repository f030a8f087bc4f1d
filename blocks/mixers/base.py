"""The mixer contract: every token mixer maps (B, L, C) → (B, L, C) and says whether it is causal.

A mixer file defines one `TokenMixer` subclass with a pydantic `Params` model (defaults filled in by the spec, so
equal models hash equal), registers it in `MIXERS`, and nothing else. Causal mixers run along each path in
`ctx.paths` (gather → mix → scatter) and merge; non-causal mixers ignore the route.
"""

from __future__ import annotations

from typing import ClassVar

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

    def __init__(
        self,
        dim: int,
        *,
        params: MixerParams,
        n_paths: int = 1,
        layer_idx: int = 0,
        depth: int = 1,
        kernel_backend: str = "auto",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        self.dim, self.params, self.n_paths = dim, params, n_paths
        self.layer_idx, self.depth, self.kernel_backend = layer_idx, depth, kernel_backend

    @classmethod
    def is_causal(cls, params: MixerParams) -> bool:
        raise NotImplementedError

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

    def forward(self, x: Tensor, ctx: MixContext) -> Tensor:  # (B, L, C) → (B, L, C)
        raise NotImplementedError


MIXERS: Registry[type[TokenMixer]] = Registry("mixer")
