"""`build_backbone(spec)`: tokenizer → [class tokens] → blocks (plain, or 4-ish stages) → norm → readout → head.

Every backbone has timm's surface: `forward_features` (normalised tokens), `forward_head(x, pre_logits=)`,
`forward`, `feature_info`. Nothing here branches on a preset's name: the spec says everything.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor, nn

from .block import Block, make_norm
from .layers import trunc_normal_
from .layout import MixContext, PathIndex, TokenLayout, index_tensor
from .mixers import MIXERS, TokenMixer
from .readout import READOUTS, pool_features
from .routes import block_paths, path_index
from .spec import ArchSpec
from .tokenizers import TOKENIZERS
from .validate import normalize_spec


class ClassifierHead(nn.Module):
    """linear: fc; norm_linear: LN → fc (ViL v2); norm_mlp: LN → fc1 → GELU → LN → fc2 (MambaOut)."""

    def __init__(self, kind: str, in_dim: int, num_classes: int, eps: float) -> None:
        super().__init__()
        self.kind = kind
        self.norm = nn.LayerNorm(in_dim, eps=eps) if kind in ("norm_linear", "norm_mlp") else nn.Identity()
        if kind == "norm_mlp":
            self.fc1, self.act, self.norm2 = nn.Linear(in_dim, 4 * in_dim), nn.GELU(), nn.LayerNorm(4 * in_dim, eps=eps)
            in_dim = 4 * in_dim
        self.fc = nn.Linear(in_dim, num_classes) if num_classes else nn.Identity()

    def pre_logits(self, x: Tensor) -> Tensor:
        x = self.norm(x)
        if self.kind == "norm_mlp":
            x = self.norm2(self.act(self.fc1(x)))
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pre_logits(x))


class Downsample(nn.Module):
    """Conv3x3 stride 2 → LayerNorm, between hierarchical stages (VMamba v2's 'v3', MambaOut)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_dim, out_dim, 3, 2, 1)
        self.norm = nn.LayerNorm(out_dim, eps=eps)

    def forward(self, x: Tensor, hw: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        B, L, C = x.shape
        x = self.conv(x.transpose(1, 2).reshape(B, C, *hw))
        hw = (x.shape[-2], x.shape[-1])
        return self.norm(x.flatten(2).transpose(1, 2)), hw


class Stage(nn.Module):
    def __init__(self, blocks: list[Block], downsample: Downsample | None) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.ModuleList(blocks)


class Backbone(nn.Module):
    def __init__(self, spec: ArchSpec, kernel_backend: str = "auto", device: torch.device | str | None = None) -> None:
        super().__init__()
        with torch.device(device) if device is not None else nullcontext():
            self._build(spec, kernel_backend)
        if device is None or torch.device(device).type != "meta":
            self._init_weights()

    def _build(self, spec: ArchSpec, kernel_backend: str) -> None:
        self.spec = spec
        self.readout = READOUTS.get(spec.readout)
        norm = make_norm(spec.norm, spec.norm_eps)
        mixer_cls = MIXERS.get(spec.mixer.name)
        mixer_params = mixer_cls.Params.model_validate(spec.mixer.params)
        tok_cls = TOKENIZERS.get(spec.tokenizer.name)
        tok_params = tok_cls.Params.model_validate(spec.tokenizer.params)
        self.segments = tok_cls.segments(spec.img_size, tok_params)
        self.tokenizer = tok_cls(spec.in_chans, spec.dims[0], spec.img_size, tok_params, norm_eps=spec.norm_eps)
        n_grid = sum(h * w for h, w in self.segments)
        self.layout = TokenLayout(self.segments, self.readout.slots(n_grid))
        D0 = spec.dims[0]
        # canonical position q takes element _cls_order[q] of cat(grid tokens, class tokens)
        targets = list(self.layout.grid_positions) + list(self.layout.cls_positions)
        self._cls_order = tuple(sorted(range(self.layout.length), key=targets.__getitem__))
        self.cls_token = nn.Parameter(torch.zeros(1, self.layout.n_cls, D0)) if self.layout.n_cls else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.layout.length, D0)) if spec.pos_embed else None

        total = sum(spec.depths)
        dpr = torch.linspace(0, spec.drop_path_rate, total, device="cpu").tolist() if total > 1 else [0.0]
        self.block_path_names: list[tuple[str, ...]] = []
        stages, i = [], 0
        for s, (dim, depth) in enumerate(zip(spec.dims, spec.depths)):
            blocks = []
            for _ in range(depth):
                paths = block_paths(spec.route, i) if spec.route is not None else ()
                self.block_path_names.append(paths)
                mixer = mixer_cls(dim, params=mixer_params, n_paths=max(1, len(paths)), layer_idx=i, depth=total,
                                  kernel_backend=kernel_backend)
                blocks.append(Block(dim, mixer, norm, spec.mlp_ratio, dpr[i]))
                i += 1
            down = Downsample(spec.dims[s - 1], dim, spec.norm_eps) if s > 0 else None
            stages.append(Stage(blocks, down))
        self.stages = nn.ModuleList(stages)
        last = spec.dims[-1]
        final_eps = spec.final_norm_eps if spec.final_norm_eps is not None else spec.norm_eps
        self.norm = make_norm(spec.norm, final_eps)(last) if spec.final_norm else nn.Identity()
        self.num_features = last * self.readout.feature_mult
        self.num_classes = spec.num_classes
        self.head = ClassifierHead(spec.head, self.num_features, spec.num_classes, spec.norm_eps)
        reduction = spec.img_size // self.segments[-1][0] if len(self.segments) == 1 else 1
        self.feature_info = []
        for s, dim in enumerate(spec.dims):
            self.feature_info.append(dict(num_chs=dim, reduction=reduction * 2 ** s, module=f"stages.{s}"))
        self._ctx_cache: dict = {}
        # Token layout each stage sees: a conv3x3/s2/p1 downsample maps a side h to ceil(h / 2).
        self.stage_layouts = [self.layout]
        for _ in spec.dims[1:]:
            h, w = self.stage_layouts[-1].segments[0]
            self.stage_layouts.append(TokenLayout((((h + 1) // 2, (w + 1) // 2),)))

    def _init_weights(self) -> None:
        if self.cls_token is not None:
            trunc_normal_(self.cls_token, std=0.02)
        if self.pos_embed is not None:
            trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.head.fc.weight, std=0.02) if isinstance(self.head.fc, nn.Linear) else None
        if isinstance(self.head.fc, nn.Linear):
            nn.init.zeros_(self.head.fc.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names AdamW must not decay (timm's hook, read by its optimizer factory and by nas.trial): the
        class and position tokens and what each mixer class names (e.g. the SSM's A_log and D). 1-D parameters are
        left out by the caller's rule, as in timm."""
        names = {n for n in ("cls_token", "pos_embed") if getattr(self, n) is not None}
        for prefix, module in self.named_modules():
            if isinstance(module, TokenMixer):
                names.update(f"{prefix}.{n}" for n, _ in module.named_parameters()
                             if n.rsplit(".", 1)[-1] in module.no_weight_decay_names)
        return names

    # ---- contexts: paths per block, cached per (layout, device) -------------------------------------------------
    def _contexts(self, layout: TokenLayout, device: torch.device) -> list[MixContext]:
        key = (layout, str(device))
        if key not in self._ctx_cache or torch.compiler.is_compiling():  # a trace never fills the cache
            cache: dict[str, PathIndex] = {}
            ctxs = []
            for names in self.block_path_names:
                for n in names:
                    if n not in cache:
                        cache[n] = path_index(n, layout, device)
                ctxs.append(MixContext(layout, tuple(cache[n] for n in names)))
            if torch.compiler.is_compiling():
                return ctxs
            self._ctx_cache[key] = ctxs
        return self._ctx_cache[key]

    def _insert_class_tokens(self, x: Tensor) -> Tensor:
        if self.cls_token is None:
            return x
        B = x.shape[0]
        order = index_tensor(self._cls_order, x.device)
        return torch.cat([x, self.cls_token.expand(B, -1, -1)], dim=1).index_select(1, order)

    # ---- timm surface ---------------------------------------------------------------------------------------------
    def forward_features(self, x: Tensor) -> Tensor:
        """(B, C_in, H, W) → (B, L, D) normalised tokens in canonical order (class tokens included)."""
        x = self._insert_class_tokens(self.tokenizer(x))
        if self.pos_embed is not None:
            x = x + self.pos_embed
        hw = self.segments[0]
        i = 0
        for stage, layout in zip(self.stages, self.stage_layouts):
            if stage.downsample is not None:
                x, hw = stage.downsample(x, hw)
            ctxs = self._contexts(layout, x.device)
            for block in stage.blocks:
                x = block(x, ctxs[i])
                i += 1
        return self.norm(x)

    def forward_head(self, x: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = pool_features(x, self.readout, self.stage_layouts[-1])
        if self.readout.pool == "max":
            if pre_logits:
                return self.head.pre_logits(pooled).amax(1)
            return self.head(pooled).amax(1)  # Vim: score every token, keep the max
        return self.head.pre_logits(pooled) if pre_logits else self.head(pooled)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def build_backbone(spec: ArchSpec, kernel_backend: str = "auto", device: torch.device | str | None = None) -> Backbone:
    """Validate `spec` (idempotent and cheap: no model is built to validate) and build its backbone once;
    `kernel_backend` is a run-time choice, not part of the spec: 'auto', 'reference', 'triton' or 'mamba_ssm' (see
    kernels.dispatch)."""
    return Backbone(normalize_spec(spec), kernel_backend=kernel_backend, device=device)


def count_parameters(spec: ArchSpec) -> int:
    """Parameter count without allocating: the model is built on the meta device."""
    return sum(p.numel() for p in Backbone(spec, device="meta").parameters())
