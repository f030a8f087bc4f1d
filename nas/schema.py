"""The study file's schema: one validated, immutable tree (pydantic) that every other module reads.

Loading, merging profiles and `--set`, and turning pydantic's errors into messages that name the file and the key live
in `nas.config`; this module only says what a valid study is.
"""

from __future__ import annotations

import difflib
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationInfo, field_validator,
                      model_validator)

DEFAULT_DB_URL = "sqlite:///runs/nas.db"
SEED_HIGH = 2**31 - 1  # the largest seed (Optuna records a grid's seed as an integer in 0 .. SEED_HIGH)
MAX_ADAPTIVE_SEEDS = 100  # an adaptive study never runs more seeds per level than this

# Metrics a trial produces (per epoch: the first four; after training: the cost ones).
METRICS: dict[str, str] = {
    "val_acc": "maximize", "val_loss": "minimize", "train_loss": "minimize",
    "throughput": "maximize", "params": "minimize", "flops": "minimize", "peak_memory_bytes": "minimize",
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    """The data set every trial of the study trains on (generated per seed on the trial's device)."""
    name: str = "digits"
    n_train: int = Field(1024, ge=16, le=10_000_000)
    n_test: int = Field(512, ge=16, le=10_000_000)
    img_size: int = Field(32, ge=8, le=4096)
    knobs: dict[str, Any] = {}

    @model_validator(mode="after")
    def _known(self) -> "DataConfig":
        from .data import DATASETS, dataset_knobs

        if self.name not in DATASETS:
            raise ValueError(unknown_message("data set", self.name, sorted(DATASETS)))
        allowed = dataset_knobs(self.name)
        for k in self.knobs:
            if k not in allowed:
                raise ValueError(f"unknown knob {k!r} for data set {self.name!r}; allowed: {', '.join(allowed)}")
        return self


class TrainConfig(_Strict):
    """The training budget and recipe of one trial (see nas/trial.py)."""
    epochs: int = Field(5, ge=1, le=10_000)
    batch_size: int = Field(64, ge=1, le=65_536)
    lr: float = Field(2e-3, gt=0, le=1.0)
    weight_decay: float = Field(0.05, ge=0, le=10.0)
    warmup_epochs: float = Field(0.5, ge=0, le=10_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    kernel_backend: str = "auto"
    amp: bool | None = None
    cuda_graph: bool = True  # replay each full batch's step from a CUDA graph on CUDA (nas/train_step.py)
    # the selective scan's lane kernels (Vim's bi route on CUDA) checkpoint their state every N steps; None = the
    # kernels' default (4). 8 halves the default's checkpoint memory for ~5 % of the train step.
    scan_checkpoints: Literal[2, 4, 8, 16, 32] | None = None

    @field_validator("kernel_backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        from kernels.dispatch import BACKENDS  # imported here: reading a study must not pay for torch elsewhere

        allowed = ["auto", *BACKENDS]
        if v not in allowed:
            raise ValueError(unknown_message("kernel backend", v, allowed))
        return v


class Objective(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(unknown_message("metric", v, list(METRICS)))
        return v

    @property
    def resolved_direction(self) -> str:
        return self.direction or METRICS[self.metric]


class IntRange(_Strict):
    low: int
    high: int
    step: int = Field(1, ge=1)
    log: bool = False


class FloatRange(_Strict):
    low: float
    high: float
    log: bool = False


Choice = Union[list[Any], IntRange, FloatRange]


class SearchConfig(_Strict):
    """A sampled search: Optuna picks `n_trials` points of `space` (dotted spec keys → choices or ranges)."""
    sampler: Literal["tpe", "random", "nsga2"] = "tpe"
    n_trials: int = Field(20, ge=1, le=1_000_000)
    space: dict[str, Choice]
    seed: int = 0

    @field_validator("space")
    @classmethod
    def _ranges(cls, space: dict[str, Choice]) -> dict[str, Choice]:
        if not space:
            raise ValueError("a search needs at least one key to vary")
        for key, c in space.items():
            if isinstance(c, list) and not c:
                raise ValueError(f"{key}: an empty list of choices")
            if isinstance(c, (IntRange, FloatRange)) and c.low >= c.high:
                raise ValueError(f"{key}: low ({c.low}) must be below high ({c.high})")
            if isinstance(c, (IntRange, FloatRange)) and c.log and c.low <= 0:
                raise ValueError(f"{key}: a log range needs low > 0 (got {c.low})")
        return space


class BudgetConfig(_Strict):
    """Match every candidate to a parameter budget by solving its width (or depth)."""
    params: int = Field(ge=1_000, le=100_000_000_000)
    tolerance: float = Field(0.02, gt=0, le=0.5)
    solve: Literal["width", "depth"] = "width"


class AshaConfig(_Strict):
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class ExecutionConfig(_Strict):
    """How trials are scheduled: local Ray by default, `address` joins an existing cluster."""
    max_concurrent: int | None = Field(None, ge=1, le=100_000)
    cpus_per_trial: float = Field(1.0, gt=0, le=1024)
    gpus_per_trial: float = Field(0.0, ge=0, le=64)
    gpu_memory_gb: float | None = Field(None, gt=0)
    retries: int = Field(1, ge=0, le=100)
    address: str | None = None
    asha: AshaConfig | None = None
    num_cpus: int | None = Field(None, ge=1, description="CPUs a local Ray may use (default: all)")
    warm_kernels: bool = Field(True, description="a local GPU study compiles its kernels in two background "
                                                 "processes while Ray starts (nas/warmup.py)")
    cuda_mps: bool = Field(False, description="a local GPU study that packs trials (gpus_per_trial < 1) runs them "
                                              "under its own CUDA MPS daemon, so their kernels overlap (nas/mps.py)")


class StorageConfig(_Strict):
    url: str = DEFAULT_DB_URL
    artifacts: str = "runs/artifacts"
    ray_results: str = "runs/ray"


class MeasureConfig(_Strict):
    skip: bool = False
    repeats: int = Field(3, ge=1, le=1000)
    resolutions: list[int] = []


class PaperConfig(_Strict):
    """The published numbers this study can be compared with (from ../shared/reference/)."""
    source: str
    metric: str = "ImageNet-1K top-1 (%)"
    values: dict[str, float] = {}
    note: str = ""


class VariantFactor(_Strict):
    """A factor whose levels are named sets of overrides: {levels: {name: {dotted.key: value, ...}}}."""
    levels: dict[str, dict[str, Any]]


class AdaptiveSeeds(_Strict):
    """Seeds added per level in rounds until the level's interval is narrow enough: `min` seeds first, at most `max`.
    `target_halfwidth` is in the metric's display unit (percentage points for val_acc). The policy that decides
    which levels get more seeds is `nas.rounds`'s; this is only what the study asks for."""
    min: int
    max: int
    target_halfwidth: float
    confidence: float = Field(0.95, gt=0.5, lt=1.0)

    @field_validator("min")
    @classmethod
    def _min(cls, v: int) -> int:
        if v < 2:
            raise ValueError(f"adaptive seeding needs at least 2 seeds per level to measure a spread (got {v})")
        return v

    @field_validator("max")
    @classmethod
    def _max(cls, v: int, info: ValidationInfo) -> int:
        low = info.data.get("min")
        if low is not None and v < low:
            raise ValueError(f"must be at least seeds.min ({low}) (got {v})")
        if v > MAX_ADAPTIVE_SEEDS:
            raise ValueError(f"at most {MAX_ADAPTIVE_SEEDS} seeds per level (got {v}); a level that needs more to "
                             "reach the target half-width needs a larger target or a less noisy setting")
        return v

    @field_validator("target_halfwidth")
    @classmethod
    def _halfwidth(cls, v: float) -> float:
        if not v > 0 or v == float("inf"):
            raise ValueError(f"must be a positive number in the metric's display unit, e.g. 1.0 percentage point "
                             f"(got {v})")
        return v


def _seeds_form(value: Any) -> str:
    """A mapping is the adaptive form; anything else is read (and refused) as a list."""
    if isinstance(value, (dict, AdaptiveSeeds)):
        return "AdaptiveSeeds"
    return "list[int]"


Seeds = Annotated[Union[Annotated[list[int], Tag("list[int]"), Field(min_length=1, max_length=1000)],
                        Annotated[AdaptiveSeeds, Tag("AdaptiveSeeds")]], Discriminator(_seeds_form)]


class Study(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    question: str = ""
    search_space: str
    fixed: dict[str, Any] = {}
    factors: dict[str, Union[list[Any], VariantFactor]] = {}
    reference: dict[str, Any] = {}
    search: SearchConfig | None = None
    seeds: Seeds = [0, 1]
    data: DataConfig = Field(default_factory=DataConfig)  # built on use: its check imports the data module
    train: TrainConfig = TrainConfig()
    objectives: list[Objective] = Field([Objective(metric="val_acc")], min_length=1, max_length=4)
    budget: BudgetConfig | None = None
    execution: ExecutionConfig = ExecutionConfig()
    storage: StorageConfig = StorageConfig()
    measure: MeasureConfig = MeasureConfig()
    paper: PaperConfig | None = None
    profiles: dict[str, dict[str, Any]] = {}

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, seeds: list[int] | AdaptiveSeeds) -> list[int] | AdaptiveSeeds:
        if isinstance(seeds, list) and (any(not 0 <= s <= SEED_HIGH for s in seeds) or len(set(seeds)) != len(seeds)):
            raise ValueError(f"seeds must be distinct non-negative integers, at most {SEED_HIGH} (got {seeds})")
        return seeds

    @model_validator(mode="after")
    def _shape(self) -> "Study":
        if bool(self.factors) == bool(self.search):
            raise ValueError("give exactly one of `factors` (a grid ablation) or `search` (a sampled search)")
        for name, levels in self.factors.items():
            n = len(levels) if isinstance(levels, list) else len(levels.levels)
            if n < 1:
                raise ValueError(f"factors.{name}: needs at least one level")
            if isinstance(levels, list) and len({level_name(v) for v in levels}) != len(levels):
                raise ValueError(f"factors.{name}: levels repeat ({levels})")
        for name, level in self.reference.items():
            if name not in self.factors:
                raise ValueError(f"reference.{name}: not a factor of this study (factors: {', '.join(self.factors)})")
            if str(level) not in self.level_names(name):
                raise ValueError(f"reference.{name}: {level!r} is not a level; levels: {self.level_names(name)}")
        if self.execution.asha is not None and len(self.objectives) > 1:
            raise ValueError("execution.asha: early stopping needs a single objective")
        if self.execution.gpu_memory_gb and not self.execution.gpus_per_trial:
            raise ValueError("execution.gpu_memory_gb needs execution.gpus_per_trial > 0")
        if self.adaptive_seeds is not None and self.search is not None:
            raise ValueError("seeds: adaptive seeding (a mapping with min/max) narrows the interval of each factor "
                             "level; a search has no levels: give a list of seeds, e.g. seeds: [0]")
        return self

    # ---- helpers --------------------------------------------------------------------------------------------
    def level_names(self, factor: str) -> list[str]:
        levels = self.factors[factor]
        return [level_name(v) for v in levels] if isinstance(levels, list) else list(levels.levels)

    @property
    def kind(self) -> str:
        return "grid" if self.factors else "search"

    @property
    def reference_levels(self) -> dict[str, str]:
        """The level every other level is compared with, per factor (the file's `reference` or the first level)."""
        return {f: str(self.reference.get(f, self.level_names(f)[0])) for f in self.factors}

    @property
    def directions(self) -> list[str]:
        return [o.resolved_direction for o in self.objectives]

    @property
    def adaptive_seeds(self) -> AdaptiveSeeds | None:
        """The adaptive-seeding settings, or None for a plain list of seeds."""
        return self.seeds if isinstance(self.seeds, AdaptiveSeeds) else None

    @property
    def initial_seeds(self) -> list[int]:
        """The seeds of the first round: the plain list, or 0 .. min-1 for adaptive seeding."""
        a = self.adaptive_seeds
        return list(range(a.min)) if a else list(self.seeds)

    @property
    def max_seeds(self) -> list[int]:
        """Every seed a cell may ever get: the plain list, or 0 .. max-1 for adaptive seeding. A cell's key is
        (study, spec, seed), so a later round's seed never repeats an earlier one."""
        a = self.adaptive_seeds
        return list(range(a.max)) if a else list(self.seeds)


def level_name(value: Any) -> str:
    """A level's display name and Optuna categorical value: strings as they are, anything else as flow YAML."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()  # PyYAML ends a bare scalar document with "..."


def unknown_message(what: str, value: Any, allowed: list[str]) -> str:
    """"unknown X 'v'; did you mean 'w'? Allowed: ..." (the closest allowed name, if any is close)."""
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown {what} {value!r}{hint} Allowed: {', '.join(map(str, allowed))}"




__all__ = ["DEFAULT_DB_URL", "METRICS", "AdaptiveSeeds", "AshaConfig", "BudgetConfig", "DataConfig", "ExecutionConfig",
           "FloatRange", "IntRange", "MeasureConfig", "Objective", "PaperConfig", "SearchConfig", "StorageConfig",
           "Study", "TrainConfig", "VariantFactor", "level_name", "unknown_message"]
