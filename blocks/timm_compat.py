"""Key maps from timm's DeiT and MambaOut state dicts to our backbones, so the presets can be checked to compute the
same function as timm's models (tests/test_presets.py) and so timm checkpoints can be loaded.

| timm key (deit_*_patch16_224)        | ours                                   |
|--------------------------------------|----------------------------------------|
| patch_embed.proj.*                   | tokenizer.proj.*                       |
| blocks.i.attn.{qkv,proj}.*           | stages.0.blocks.i.mixer.{qkv,proj}.*   |
| blocks.i.{norm1,norm2,mlp.*}         | stages.0.blocks.i.{norm1,norm2,mlp.*}  |
| head.*                               | head.fc.*                              |
| cls_token, pos_embed, norm.*         | unchanged                              |

| timm key (mambaout_*)                | ours                                   |
|--------------------------------------|----------------------------------------|
| stem.*                               | tokenizer.*                            |
| stages.s.blocks.j.norm.*             | stages.s.blocks.j.norm1.*              |
| stages.s.blocks.j.{fc1,conv,fc2}.*   | stages.s.blocks.j.mixer.{fc1,conv,fc2}.* |
| stages.s.downsample.*                | unchanged                              |
| head.norm / head.pre_logits.fc / head.pre_logits.norm / head.fc | head.norm / head.fc1 / head.norm2 / head.fc |
"""

from __future__ import annotations

import re

from torch import Tensor

KEY_MAPS: dict[str, list[tuple[str, str]]] = {
    "deit": [
        (r"^patch_embed\.proj\.", "tokenizer.proj."),
        (r"^blocks\.(\d+)\.attn\.", r"stages.0.blocks.\1.mixer."),
        (r"^blocks\.(\d+)\.", r"stages.0.blocks.\1."),
        (r"^head\.", "head.fc."),
    ],
    "mambaout": [
        (r"^stem\.", "tokenizer."),
        (r"^(stages\.\d+\.blocks\.\d+)\.norm\.", r"\1.norm1."),
        (r"^(stages\.\d+\.blocks\.\d+)\.(fc1|conv|fc2)\.", r"\1.mixer.\2."),
        (r"^head\.pre_logits\.fc\.", "head.fc1."),
        (r"^head\.pre_logits\.norm\.", "head.norm2."),
    ],
}


def convert_timm_state_dict(state_dict: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """Rename timm keys to ours (first matching rule wins); `family` is 'deit' or 'mambaout'."""
    if family not in KEY_MAPS:
        raise ValueError(f"no key map for {family!r}; known: {', '.join(KEY_MAPS)}")
    out = {}
    for key, value in state_dict.items():
        new = key
        for pattern, repl in KEY_MAPS[family]:
            new, n = re.subn(pattern, repl, key)
            if n:
                break
        out[new] = value
    return out
