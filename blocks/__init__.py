"""The block grammar: an `ArchSpec` names every choice; `build_backbone` turns it into a model."""

from .backbone import Backbone, build_backbone, count_parameters
from .errors import InvalidSpecError, NasError, UnknownNameError
from .layout import MixContext, PathIndex, TokenLayout
from .mixers import MIXERS, TokenMixer
from .model_file import ModelFile, ModelFileError, load_backbone, read_model_file, save_backbone
from .presets import PRESETS, get_preset, list_presets
from .readout import READOUTS
from .routes import ORDERS, ROUTES, RouteSpec
from .spec import ArchSpec, Component
from .tokenizers import TOKENIZERS

LAYOUTS = ("plain", "hierarchical")

__all__ = [
    "ArchSpec", "Backbone", "Component", "InvalidSpecError", "LAYOUTS", "MIXERS", "MixContext", "ModelFile",
    "ModelFileError", "NasError", "ORDERS", "PRESETS", "PathIndex", "READOUTS", "ROUTES", "RouteSpec", "TOKENIZERS",
    "TokenLayout", "TokenMixer", "UnknownNameError", "build_backbone", "count_parameters", "get_preset",
    "list_presets", "load_backbone", "read_model_file", "save_backbone",
]
