"""Study files: YAML → a validated, immutable `Study`.

A study names one question (`name`, `question`), a base search space from `search_spaces/`, the choices it fixes,
the factors it ablates (a grid, expanded by us into factors × seeds) or the ranges it searches (an Optuna sampler),
the seeds, the data, the training budget, the objectives, the execution and the storage. Profiles (`--profile gpu`)
and `--set key=value` overrides are merged into the raw YAML *before* validation, so they are checked like the file.

Every problem raises `StudyConfigError` naming the file, the key, the bad value and what is allowed; nothing runs
and nothing is written on a bad file.
"""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import StudyConfigError

STUDIES_DIR = Path("studies")
SEARCH_SPACES_DIR = Path("search_spaces")
DEFAULT_DB_URL = "sqlite:///runs/nas.db"

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
            raise ValueError(_unknown("data set", self.name, sorted(DATASETS)))
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


class Objective(_Strict):
    metric: str
    direction: Literal["maximize", "minimize"] | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if v not in METRICS:
            raise ValueError(_unknown("metric", v, list(METRICS)))
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


class Study(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$")
    question: str = ""
    search_space: str
    fixed: dict[str, Any] = {}
    factors: dict[str, Union[list[Any], VariantFactor]] = {}
    reference: dict[str, Any] = {}
    search: SearchConfig | None = None
    seeds: list[int] = Field([0, 1], min_length=1, max_length=1000)
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
    def _seeds(cls, seeds: list[int]) -> list[int]:
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct non-negative integers (got {seeds})")
        return seeds

    @model_validator(mode="after")
    def _shape(self) -> "Study":
        if bool(self.factors) == bool(self.search):
            raise ValueError("give exactly one of `factors` (a grid ablation) or `search` (a sampled search)")
        for name, levels in self.factors.items():
            n = len(levels) if isinstance(levels, list) else len(levels.levels)
            if n < 1:
                raise ValueError(f"factors.{name}: needs at least one level")
            if isinstance(levels, list) and len({_level_name(v) for v in levels}) != len(levels):
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
        return self

    # ---- helpers --------------------------------------------------------------------------------------------
    def level_names(self, factor: str) -> list[str]:
        levels = self.factors[factor]
        return [_level_name(v) for v in levels] if isinstance(levels, list) else list(levels.levels)

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


def _level_name(value: Any) -> str:
    """A level's display name and Optuna categorical value: strings as they are, anything else as flow YAML."""
    if isinstance(value, str):
        return value
    text = yaml.safe_dump(value, default_flow_style=True).strip()
    return text.removesuffix("...").strip()  # PyYAML ends a bare scalar document with "..."


def _unknown(what: str, value: Any, allowed: list[str]) -> str:
    near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return f"unknown {what} {value!r}{hint} Allowed: {', '.join(map(str, allowed))}"


# -------------------------------------------------------------------------------------------------- loading
class StudyFile(BaseModel):
    """A validated study plus where it came from (the text is stored with every run)."""
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)
    path: str
    text: str
    study: Study
    profile: str | None = None
    overrides: tuple[str, ...] = ()


def resolve_study_path(name_or_path: str | Path) -> Path:
    """`studies/x.yaml`, `x.yaml` or the bare name `x` (looked up in ./studies/)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for cand in (STUDIES_DIR / p, STUDIES_DIR / f"{p}.yaml", STUDIES_DIR / f"{p}.yml"):
        if cand.is_file():
            return cand
    known = sorted(x.stem for x in STUDIES_DIR.glob("*.y*ml")) if STUDIES_DIR.is_dir() else []
    raise StudyConfigError(
        f"no study file {str(name_or_path)!r}" + (f"; studies here: {', '.join(known)}" if known else
                                                 " (and no ./studies/ folder here)"), file=str(name_or_path))


def parse_set(item: str) -> tuple[str, Any]:
    """`key.sub=value` → ("key.sub", value parsed as YAML: numbers, lists, booleans)."""
    if "=" not in item:
        raise StudyConfigError(f"--set needs key=value (got {item!r}), e.g. --set train.epochs=3", key=item)
    key, raw = item.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_\-]+)*", key):
        raise StudyConfigError(f"--set key {key!r} is not a dotted name such as train.epochs", key=key)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise StudyConfigError(f"--set {key}: value {raw!r} is not valid YAML ({e})", key=key) from None
    if isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value.strip()):
        value = float(value)  # YAML 1.1 reads 1e-3 as text; on a command line it is a number
    return key, value


def _set_dotted(data: dict[str, Any], key: str, value: Any, file: str) -> None:
    node = data
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
        nxt = node.get(p)
        if nxt is None:
            nxt = node[p] = {}
        if not isinstance(nxt, dict):
            raise StudyConfigError(f"cannot set {key!r}: {'.'.join(parts[:i + 1])} is a value, not a group",
                                   file=file, key=key)
        node = nxt
    node[parts[-1]] = value


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def load_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise StudyConfigError(f"cannot read the file: {e}", file=str(path)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise StudyConfigError(f"malformed YAML{where}: {getattr(e, 'problem', None) or e}", file=str(path)) from None
    if not isinstance(data, dict):
        raise StudyConfigError(f"the top level must be a mapping of keys (got {type(data).__name__})", file=str(path))
    return data


def load_study(name_or_path: str | Path, *, profile: str | None = None, sets: list[str] | tuple[str, ...] = (),
               db_url: str | None = None, address: str | None = None) -> StudyFile:
    """Read, merge (profile, then `--set`s, then `--db` / `--address`) and validate a study file."""
    path = resolve_study_path(name_or_path)
    raw = load_yaml(path)
    file = str(path)
    if profile is not None:
        profiles = raw.get("profiles") or {}
        if not isinstance(profiles, dict) or profile not in profiles:
            raise StudyConfigError(_unknown("profile", profile, sorted(profiles) if isinstance(profiles, dict)
                                            else []) + (" (this study defines none)" if not profiles else ""),
                                   file=file, key="profiles")
        if not isinstance(profiles[profile], dict):
            raise StudyConfigError("a profile must be a mapping of overrides", file=file, key=f"profiles.{profile}")
        raw = deep_merge(raw, profiles[profile])
    for item in sets:
        key, value = parse_set(item)
        _set_dotted(raw, key, value, file)
    if db_url:
        _set_dotted(raw, "storage.url", db_url, file)
    if address:
        _set_dotted(raw, "execution.address", address, file)
    study = validate_study(raw, file)
    return StudyFile(path=file, text=path.read_text(), study=study, profile=profile, overrides=tuple(sets))


def validate_study(raw: dict[str, Any], file: str) -> Study:
    try:
        return Study.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        raise StudyConfigError(_message(err, raw), file=file, key=key or None) from None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(("list[", "dict[")) or part in ("IntRange", "FloatRange",
                                                                                      "VariantFactor"))


def _message(err: dict[str, Any], raw: dict[str, Any]) -> str:
    kind, loc = err["type"], [p for p in err["loc"] if not _is_union_tag(p)]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        near = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        return (f"unknown key {loc[-1]!r}" + (f"; did you mean {near[0]!r}?" if near else "")
                + (f" Allowed here: {', '.join(allowed)}" if allowed else ""))
    if kind == "missing":
        return "this key is required"
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if (isinstance(value, dict) and len(str(value)) > 120) or "(got " in msg else f" (got {value!r})"
    return f"{msg}{shown}"


def _allowed_keys(loc: list[Any]) -> list[str]:
    model: Any = Study
    for part in loc:
        field = getattr(model, "model_fields", {}).get(str(part))
        if field is None:
            return []
        ann = field.annotation
        model = next((a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and
                      issubclass(a, BaseModel)), ann)
    return list(getattr(model, "model_fields", {}))


__all__ = ["DEFAULT_DB_URL", "METRICS", "Study", "StudyFile", "deep_merge", "load_study", "load_yaml", "parse_set",
           "resolve_study_path", "validate_study"]
