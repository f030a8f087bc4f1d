"""The block grammar: an `ArchSpec` names every choice; `build_backbone` turns it into a model.

Names are loaded on first use (PEP 562), so `import blocks.errors` — which every platform command does for its error
types — does not pay for torch and timm; `from blocks import build_backbone` works as usual.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Backbone": "backbone", "build_backbone": "backbone", "count_parameters": "backbone",
    "InvalidSpecError": "errors", "NasError": "errors", "UnknownNameError": "errors",
    "MixContext": "layout", "PathIndex": "layout", "TokenLayout": "layout",
    "MIXERS": "mixers", "MixerParams": "mixers", "TokenMixer": "mixers",
    "ModelFile": "model_file", "ModelFileError": "model_file", "load_backbone": "model_file",
    "read_model_file": "model_file", "save_backbone": "model_file",
    "PRESETS": "presets", "PresetSummary": "presets", "get_preset": "presets", "list_presets": "presets",
    "summarize_preset": "presets",
    "READOUTS": "readout",
    "ORDERS": "routes", "ROUTES": "routes", "RouteSpec": "routes",
    "ArchSpec": "spec", "Component": "spec",
    "TOKENIZERS": "tokenizers",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'blocks' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
