"""`ArchSpec`: every choice that defines a backbone, as frozen, hashable, JSON-round-trippable data.

Construct with `ArchSpec.from_dict`, `from_json` or `spec.with_overrides` (all validate and normalise): component
parameters get their defaults filled in and a route is dropped for a fully visible mixer, so two specs that build the
same model have the same `id`. Bad input raises `UnknownNameError` / `InvalidSpecError` naming the clashing choices.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from .errors import InvalidSpecError
from .routes import RouteSpec, resolve_route
from .validate import normalize_spec


_ADDED_FIELDS = ("final_norm_eps",)


class Component(BaseModel):
    """A named choice on one axis plus its parameters (validated by the registered entry's `Params`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    params: dict[str, Any] = {}


class ArchSpec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    layout: Literal["plain", "hierarchical"] = "plain"
    tokenizer: Component
    mixer: Component
    route: RouteSpec | None = None
    readout: str = "mean"
    dims: tuple[int, ...]
    depths: tuple[int, ...]
    mlp_ratio: float = 0.0
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_eps: float = 1e-6
    pos_embed: bool = False
    final_norm: bool = True
    final_norm_eps: float | None = None  # the final norm's own eps (ViL: 1e-6 there, 1e-5 in the blocks); None: norm_eps
    head: Literal["linear", "norm_linear", "norm_mlp"] = "linear"
    img_size: int = 224
    in_chans: int = 3
    num_classes: int = 1000
    drop_path_rate: float = 0.0

    @field_validator("route", mode="before")
    @classmethod
    def _route_shorthand(cls, v: Any) -> Any:
        return resolve_route(v) if v is not None else None

    # ---- construction -------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ArchSpec":
        try:
            raw = cls.model_validate(data)
        except ValidationError as e:
            raise InvalidSpecError(_validation_message(e)) from None
        return normalize_spec(raw)

    @classmethod
    def from_json(cls, text: str) -> "ArchSpec":
        return cls.from_dict(json.loads(text))

    def with_overrides(self, overrides: dict[str, Any]) -> "ArchSpec":
        """A validated copy with dotted keys replaced: {"readout": "head", "mixer.params.d_state": 8}.

        Changing a component's name drops its old parameters (they belong to the old choice) unless given too."""
        data = self.to_dict()
        for key in sorted(overrides, key=lambda k: k.count(".")):
            parts = key.split(".")
            node = data
            for p in parts[:-1]:
                if not isinstance(node.get(p), dict):
                    raise InvalidSpecError(f"cannot set {key!r}: {p!r} is not a group of settings")
                node = node[p]
            if parts[-1] == "name" and len(parts) == 2 and node.get("name") != overrides[key]:
                node["params"] = {}
            node[parts[-1]] = copy.deepcopy(overrides[key])
        return ArchSpec.from_dict(data)

    # ---- serialisation ------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.to_json())

    def to_json(self, indent: int | None = None) -> str:
        # Fields added after ids were first stored are written only when set, so every older spec keeps its id.
        unset = {k for k in _ADDED_FIELDS if getattr(self, k) is None}
        return json.dumps(self.model_dump(mode="json", exclude=unset), sort_keys=True, indent=indent)

    @property
    def id(self) -> str:
        """Content hash of the canonical JSON: stable across processes and machines."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


def _validation_message(e: ValidationError) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(spec)"
        lines.append(f"{loc}: {err['msg']} (got {err.get('input')!r})")
    return "invalid architecture spec: " + "; ".join(lines)

