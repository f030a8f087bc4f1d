"""Token mixers, one file each; importing this package registers them all."""

from .base import MIXERS, MixerParams, TokenMixer
from . import attention, gated_conv, mlstm, ssm  # noqa: F401  (registration)

__all__ = ["MIXERS", "MixerParams", "TokenMixer"]
