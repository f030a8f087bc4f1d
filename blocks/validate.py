"""Normalisation and cross-axis checks of an `ArchSpec`, run by every constructor of a spec (`blocks.spec`).

Every rule here raises `InvalidSpecError` naming the choices that clash. The last check builds each distinct part on
the meta device (no memory, no compute): the tokenizer, and one mixer per stage width and path count, so a part's own
constructor checks (a width its heads do not divide) surface here; the backbone itself is built once, by
`build_backbone`. Layering: the registries → this module → `spec.py` → `backbone.py`; a spec is read through its
fields and returned as a normalised copy, so nothing here imports `spec` or `backbone` at run time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import torch
from pydantic import BaseModel, ValidationError

from .errors import InvalidSpecError
from .layout import TokenLayout
from .mixers import MIXERS, MixerParams, TokenMixer
from .readout import READOUTS, Readout
from .routes import block_paths, readout_sees_grid
from .tokenizers import TOKENIZERS, Tokenizer

if TYPE_CHECKING:  # annotations only: spec.py imports this module
    from .spec import ArchSpec


def _params(axis: str, name: str, params: dict[str, Any], model: type[BaseModel],
            canonical: Callable[[Any], Any] = lambda p: p) -> BaseModel:
    try:
        return canonical(model.model_validate(params))
    except ValidationError as e:
        bad = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']} (got {x.get('input')!r})" for x in e.errors())
        allowed = ", ".join(f"{k}={f.default!r}" for k, f in model.model_fields.items())
        raise InvalidSpecError(f"{axis} {name!r}: {bad}. Parameters and defaults: {allowed}") from None


def normalize_spec(spec: ArchSpec) -> ArchSpec:
    """Fill component defaults, drop choices that cannot change the model, and check the cross-axis rules."""
    mixer_cls = MIXERS.get(spec.mixer.name)
    mixer = _params("mixer", spec.mixer.name, spec.mixer.params, mixer_cls.Params, mixer_cls.canonical_params)
    tok_cls = TOKENIZERS.get(spec.tokenizer.name)
    tokenizer = _params("tokenizer", spec.tokenizer.name, spec.tokenizer.params, tok_cls.Params)
    readout = READOUTS.get(spec.readout)
    causal = mixer_cls.is_causal(mixer)
    route = spec.route if causal else None  # a fully visible mixer ignores the route: normalise it away
    if causal and route is None:
        raise InvalidSpecError(
            f"mixer {spec.mixer.name!r} is causal and needs a route (e.g. 'uni', 'bi', 'cross4', 'alternating')")
    # the final norm's own eps only when it differs (and there is a final norm), so equal models hash equal
    final_eps = spec.final_norm_eps if spec.final_norm and spec.final_norm_eps != spec.norm_eps else None
    spec = spec.model_copy(update=dict(
        mixer=spec.mixer.model_copy(update={"params": mixer.model_dump(mode="json")}),
        tokenizer=spec.tokenizer.model_copy(update={"params": tokenizer.model_dump(mode="json")}),
        route=route, final_norm_eps=final_eps))
    _check_shapes(spec)
    layout = _token_layout(spec, tok_cls, tokenizer, readout)
    _check_readout(spec, readout, layout, mixer_cls.mixes_class_tokens(mixer))
    _check_parts_build(spec, tok_cls, tokenizer, mixer_cls, mixer)
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
    if spec.mlp_ratio > 0 and int(min(spec.dims) * spec.mlp_ratio) < 1:
        raise InvalidSpecError(f"mlp_ratio={spec.mlp_ratio} gives an MLP of width 0 at dims={spec.dims}")
    if spec.norm_eps <= 0 or (spec.final_norm_eps is not None and spec.final_norm_eps <= 0):
        raise InvalidSpecError(f"norm_eps and final_norm_eps must be positive, got {spec.norm_eps} and "
                               f"{spec.final_norm_eps}")


def _token_layout(spec: ArchSpec, tok_cls: type[Tokenizer], params: BaseModel, readout: Readout) -> TokenLayout:
    try:
        segments = tok_cls.segments(spec.img_size, params)
        return TokenLayout(segments, readout.slots(sum(h * w for h, w in segments)))
    except ValueError as e:
        raise InvalidSpecError(f"tokenizer {spec.tokenizer.name!r} at img_size {spec.img_size}: {e}") from None


def _check_readout(spec: ArchSpec, readout: Readout, layout: TokenLayout, mixes_class_tokens: bool) -> None:
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
    if spec.route is not None and not any(readout_sees_grid(spec.route, layout, spec.depths[0])):
        raise InvalidSpecError(
            f"readout {spec.readout!r} with causal mixer {spec.mixer.name!r} and route {list(spec.route.paths)} "
            f"({spec.route.schedule}): every class token comes first on every path, so it only ever sees itself "
            "and carries no information; use a route with a reversed path (e.g. 'bi'), or readout tail/middle/mean")


def _check_parts_build(spec: ArchSpec, tok_cls: type[Tokenizer], tok_params: BaseModel,
                       mixer_cls: type[TokenMixer], mixer_params: MixerParams) -> None:
    total = sum(spec.depths)
    n_paths = {max(1, len(block_paths(spec.route, i))) if spec.route is not None else 1 for i in range(total)}
    try:
        with torch.device("meta"):
            tok_cls(spec.in_chans, spec.dims[0], spec.img_size, tok_params, norm_eps=spec.norm_eps)
            for dim in sorted(set(spec.dims)):
                for n in sorted(n_paths):
                    mixer_cls(dim, params=mixer_params, n_paths=n, depth=total)
    except InvalidSpecError:
        raise
    except (ValueError, RuntimeError, TypeError) as e:
        raise InvalidSpecError(f"spec does not build ({spec.mixer.name}, {spec.tokenizer.name}, "
                               f"dims={spec.dims}): {e}") from None
