"""Normalisation and cross-axis checks of an `ArchSpec` (run by every constructor of a spec).

Every rule here raises `InvalidSpecError` naming the choices that clash; the final check builds the model on the
meta device (no memory, no compute), so nothing half-built ever reaches a caller.
"""

from __future__ import annotations

from pydantic import BaseModel, ValidationError

from .errors import InvalidSpecError
from .layout import TokenLayout
from .mixers import MIXERS
from .readout import READOUTS
from .routes import readout_sees_grid
from .spec import ArchSpec, Component
from .tokenizers import TOKENIZERS


def _params(axis: str, comp: Component, model: type[BaseModel], canonical=lambda p: p) -> Component:
    try:
        p = canonical(model.model_validate(comp.params))
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']} (got {x.get('input')!r})" for x in e.errors())
        allowed = ", ".join(f"{k}={f.default!r}" for k, f in model.model_fields.items())
        raise InvalidSpecError(f"{axis} {comp.name!r}: {bad}. Parameters and defaults: {allowed}") from None
    return Component(name=comp.name, params=p.model_dump(mode="json"))


def normalize_spec(spec: ArchSpec) -> ArchSpec:
    mixer_cls = MIXERS.get(spec.mixer.name)
    mixer = _params("mixer", spec.mixer, mixer_cls.Params, mixer_cls.canonical_params)
    tok_cls = TOKENIZERS.get(spec.tokenizer.name)
    tokenizer = _params("tokenizer", spec.tokenizer, tok_cls.Params)
    readout = READOUTS.get(spec.readout)
    causal = mixer_cls.is_causal(mixer_cls.Params.model_validate(mixer.params))
    route = spec.route if causal else None  # a fully visible mixer ignores the route: normalise it away
    if causal and route is None:
        raise InvalidSpecError(
            f"mixer {spec.mixer.name!r} is causal and needs a route (e.g. 'uni', 'bi', 'cross4', 'alternating')")
    spec = spec.model_copy(update=dict(mixer=mixer, tokenizer=tokenizer, route=route))
    _check_shapes(spec)
    mixes_cls = mixer_cls.mixes_class_tokens(mixer_cls.Params.model_validate(mixer.params))
    _check_readout(spec, readout, tok_cls, mixes_cls)
    _check_builds(spec)
    return spec


def _check_shapes(spec: ArchSpec) -> None:
    if len(spec.dims) != len(spec.depths):
        raise InvalidSpecError(f"dims {spec.dims} and depths {spec.depths} must have the same length")
    if spec.layout == "plain" and len(spec.dims) != 1:
        raise InvalidSpecError(f"layout 'plain' takes one width and one depth, got dims={spec.dims}")
    if spec.layout == "hierarchical":
        if len(spec.dims) < 2:
            raise InvalidSpecError(f"layout 'hierarchical' needs at least two stages, got dims={spec.dims}")
        if spec.pos_embed:
            raise InvalidSpecError("layout 'hierarchical' clashes with pos_embed=True (no absolute table across stages)")
        if spec.tokenizer.name == "dct_bands":
            raise InvalidSpecError("tokenizer 'dct_bands' clashes with layout 'hierarchical': several band grids "
                                   "cannot be downsampled as one image (use layout 'plain')")
    if any(d < 1 for d in spec.dims) or any(d < 1 for d in spec.depths):
        raise InvalidSpecError(f"dims and depths must be positive, got dims={spec.dims} depths={spec.depths}")
    if not 0.0 <= spec.drop_path_rate < 1.0 or spec.mlp_ratio < 0 or spec.num_classes < 0:
        raise InvalidSpecError("drop_path_rate must be in [0, 1), mlp_ratio and num_classes non-negative")


def _check_readout(spec: ArchSpec, readout, tok_cls, mixes_class_tokens: bool) -> None:
    if readout.pool == "none" and spec.num_classes:
        raise InvalidSpecError(f"readout 'none' keeps dense features and clashes with num_classes={spec.num_classes}"
                               " (set num_classes=0, or choose a pooled readout)")
    if not readout.needs_class_tokens:
        return
    if not mixes_class_tokens:
        raise InvalidSpecError(f"readout {spec.readout!r} (class tokens) clashes with mixer {spec.mixer.name!r}: it "
                               "never mixes class tokens with the image tokens, so the head would not see the image; "
                               "use mean, max or bilateral_*")
    if spec.layout == "hierarchical":
        raise InvalidSpecError(f"readout {spec.readout!r} (class tokens) clashes with layout 'hierarchical': "
                               "class tokens have no place on a downsampled grid; use mean, max or bilateral_*")
    try:
        segments = tok_cls.segments(spec.img_size, tok_cls.Params.model_validate(spec.tokenizer.params))
    except ValueError as e:
        raise InvalidSpecError(f"tokenizer {spec.tokenizer.name!r} at img_size {spec.img_size}: {e}") from None
    n_grid = sum(h * w for h, w in segments)
    layout = TokenLayout(segments, readout.slots(n_grid))
    if spec.route is not None and not any(readout_sees_grid(spec.route, layout, spec.depths[0])):
        raise InvalidSpecError(
            f"readout {spec.readout!r} with causal mixer {spec.mixer.name!r} and route {list(spec.route.paths)} "
            f"({spec.route.schedule}): every class token comes first on every path, so it only ever sees itself "
            "and carries no information; use a route with a reversed path (e.g. 'bi'), or readout tail/middle/mean")


def _check_builds(spec: ArchSpec) -> None:
    from .backbone import Backbone

    try:
        Backbone(spec, device="meta")
    except InvalidSpecError:
        raise
    except (ValueError, RuntimeError, TypeError) as e:
        raise InvalidSpecError(f"spec does not build ({spec.mixer.name}, {spec.tokenizer.name}, "
                               f"dims={spec.dims}): {e}") from None
