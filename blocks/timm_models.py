"""The presets and model files as timm models, so a backbone found by a study drops into timm's training scripts.

    import blocks.timm_models                      # registers every preset as visionseq_<preset>, and visionseq_model_file
    timm.create_model("visionseq_vim_tiny", num_classes=100, drop_path_rate=0.1)
    timm.create_model("visionseq_model_file", model_file="best.safetensors")                 # its spec and weights
    timm.create_model("visionseq_model_file", model_file="best.safetensors", num_classes=10)  # new head, rest loaded
    timm.create_model("visionseq_vim_tiny", pretrained=True,                  # timm's own local-file route, as
                      pretrained_cfg_overlay={"file": "best.safetensors"})    # train.py --pretrained-path does

timm's `create_model` reads a name with '/' or ':' as a Hub repo or a local path, so the prefix is `visionseq_`, not
`visionseq/`. Models carry timm's surface (`forward_features`, `forward_head`, `num_classes`, `pretrained_cfg` for
`resolve_data_config`, `no_weight_decay()` for `create_optimizer_v2`). No published weights ship with the presets:
`pretrained=True` needs a model file.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import register_model
from torch import Tensor

from .backbone import Backbone, build_backbone
from .errors import InvalidSpecError
from .model_file import ModelFileError, read_model_file
from .presets import get_preset, list_presets
from .spec import ArchSpec

PREFIX = "visionseq_"
MODEL_FILE = f"{PREFIX}model_file"
_SPEC_KWARGS = ("num_classes", "img_size", "in_chans", "drop_path_rate")  # timm's usual kwargs that map to the spec


def create(spec: ArchSpec, *, pretrained: bool = False, model_file: str | os.PathLike[str] | None = None,
           name: str = MODEL_FILE, kernel_backend: str = "auto", drop_rate: float = 0.0,
           **kwargs: Any) -> Backbone:
    """Build `spec` with timm's usual keyword arguments applied to it; with `model_file` (or `pretrained=True` and
    `pretrained_cfg_overlay={"file": ...}`, which timm passes in `kwargs`) load that file's weights, the classifier
    excepted when `num_classes` changes it."""
    overlay = kwargs.pop("pretrained_cfg_overlay", None) or {}
    for ignored in ("pretrained_cfg", "cache_dir"):  # timm passes these to every entry point; nothing to fetch here
        kwargs.pop(ignored, None)
    unknown = sorted(set(kwargs) - set(_SPEC_KWARGS))
    if unknown:
        raise InvalidSpecError(f"{name}: unsupported keyword(s) {unknown}; allowed: {', '.join(_SPEC_KWARGS)}, "
                               "model_file, kernel_backend, drop_rate=0")
    if drop_rate:
        raise InvalidSpecError(f"{name}: drop_rate={drop_rate}: these backbones have no classifier dropout (use "
                               "drop_path_rate)")
    source = model_file or (overlay.get("file") if pretrained else None)
    if pretrained and source is None:
        raise ModelFileError(f"{name}: no published weights ship with the visionseq presets; pass a model file "
                             f"(pretrained_cfg_overlay={{'file': path}}, or {MODEL_FILE} with model_file=path)")
    state = None
    if source is not None:
        mf = read_model_file(source)
        if name != MODEL_FILE and mf.spec.id != spec.id:
            raise ModelFileError(f"{source}: holds spec {mf.spec.id}, not {name}'s ({spec.id}); load it with "
                                 f"timm.create_model({MODEL_FILE!r}, model_file=...)")
        spec, state = mf.spec, mf.state_dict
    spec = spec.with_overrides(kwargs) if kwargs else spec
    model = build_backbone(spec, kernel_backend=kernel_backend)
    if state is not None:
        _load(model, state, source)
    model.pretrained_cfg = model.default_cfg = pretrained_cfg(spec, name)
    return model


def _load(model: Backbone, state: dict[str, Tensor], source: str | os.PathLike[str]) -> None:
    """Strict, except the classifier when its shape changed (timm's rule for a new `num_classes`)."""
    own = model.state_dict()
    head = [k for k in state if k.startswith("head.fc.") and (k not in own or own[k].shape != state[k].shape)]
    state = {k: v for k, v in state.items() if k not in head}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # a shape that differs (e.g. the position table after an img_size change)
        raise ModelFileError(f"{source}: weights do not fit the requested model: {e}") from None
    missing = [k for k in missing if not k.startswith("head.fc.") or not head]
    if missing or unexpected:
        raise ModelFileError(f"{source}: weights do not fit the requested model (missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}); only num_classes may change when loading a model file")


def pretrained_cfg(spec: ArchSpec, name: str) -> dict[str, Any]:
    """What timm's `resolve_data_config` reads: input size (fixed: position tables are tied to it), normalisation and
    the classifier's name."""
    return dict(architecture=name, input_size=(spec.in_chans, spec.img_size, spec.img_size), fixed_input_size=True,
                num_classes=spec.num_classes, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                interpolation="bicubic", crop_pct=0.875, first_conv="", classifier="head.fc")


def _entry(name: str, spec_of: Callable[[], ArchSpec]) -> Callable[..., Backbone]:
    def entry(pretrained: bool = False, **kwargs: Any) -> Backbone:
        return create(spec_of(), pretrained=pretrained, name=name, **kwargs)

    entry.__name__ = entry.__qualname__ = name  # timm registers an entry point under its function's name
    entry.__module__ = __name__
    entry.__doc__ = f"timm entry point for {name}; see blocks.timm_models.create"
    return entry


def _from_file(pretrained: bool = False, *, model_file: str | os.PathLike[str] | None = None,
               **kwargs: Any) -> Backbone:
    overlay = kwargs.get("pretrained_cfg_overlay") or {}
    path = model_file or overlay.get("file")
    if path is None:
        raise ModelFileError(f"{MODEL_FILE} needs model_file=path (a file written by nas export or save_backbone)")
    return create(read_model_file(path).spec, model_file=path, name=MODEL_FILE, **kwargs)


def _register() -> list[str]:
    names = []
    for preset in list_presets():
        names.append(PREFIX + preset)
        register_model(_entry(PREFIX + preset, lambda preset=preset: get_preset(preset)))
    _from_file.__name__ = _from_file.__qualname__ = MODEL_FILE
    register_model(_from_file)
    return [*names, MODEL_FILE]


REGISTERED = _register()

__all__ = ["MODEL_FILE", "PREFIX", "REGISTERED", "create", "pretrained_cfg"]
