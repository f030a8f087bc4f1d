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
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import StudyConfigError
from .schema import (DEFAULT_DB_URL, METRICS, AdaptiveSeeds, AshaConfig, BudgetConfig, DataConfig,  # noqa: F401
                     ExecutionConfig, FloatRange, IntRange, MeasureConfig, Objective, PaperConfig, SearchConfig,
                     StorageConfig, Study, TrainConfig, VariantFactor, level_name, unknown_message)

_level_name = level_name  # the name nas.summary imports

STUDIES_DIR = Path("studies")
SEARCH_SPACES_DIR = Path("search_spaces")
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
    """Read, check and merge a study file: the file as written and every one of its profiles must validate (a broken
    profile is found on the laptop, not on the cluster); then the run's own merge (profile, `--set`s, `--db`,
    `--address`) is validated and returned."""
    path = resolve_study_path(name_or_path)
    raw = load_yaml(path)
    file = str(path)
    profiles = _profiles(raw, file)
    if profile is not None and profile not in profiles:
        raise StudyConfigError(unknown_message("profile", profile, sorted(profiles)) +
                               (" (this study defines none)" if not profiles else ""), file=file, key="profiles")
    validate_study(raw, file)
    for name, overrides in profiles.items():
        validate_study(deep_merge(raw, overrides), file, profile=name)
    run = deep_merge(raw, profiles[profile]) if profile is not None else copy.deepcopy(raw)
    for item in sets:
        key, value = parse_set(item)
        _set_dotted(run, key, value, file)
    if db_url:
        _set_dotted(run, "storage.url", db_url, file)
    if address:
        _set_dotted(run, "execution.address", address, file)
    study = validate_study(run, file)
    return StudyFile(path=file, text=path.read_text(), study=study, profile=profile, overrides=tuple(sets))


def _profiles(raw: dict[str, Any], file: str) -> dict[str, dict[str, Any]]:
    profiles = raw.get("profiles") or {}
    if not isinstance(profiles, dict):
        raise StudyConfigError("`profiles` must map profile names to mappings of overrides, e.g. profiles: {gpu: "
                               "{train: {device: cuda}}}", file=file, key="profiles")
    for name, overrides in profiles.items():
        if not isinstance(overrides, dict):
            raise StudyConfigError(f"a profile must be a mapping of overrides (got {overrides!r})", file=file,
                                   key=f"profiles.{name}")
    return profiles


def validate_study(raw: dict[str, Any], file: str, *, profile: str | None = None) -> Study:
    """`raw` as a `Study`, or a StudyConfigError naming the file and the key (under `profiles.NAME.` when `raw` is
    the file merged with that profile)."""
    try:
        return Study.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = ".".join(str(p) for p in err["loc"] if not _is_union_tag(p))
        message = _message(err, raw)
        if profile is not None:
            key, message = f"profiles.{profile}" + (f".{key}" if key else ""), f"with profile {profile!r}: {message}"
        raise StudyConfigError(message, file=file, key=key or None) from None


def _is_union_tag(part: Any) -> bool:
    return isinstance(part, str) and (part.startswith(("list[", "dict[")) or part in ("IntRange", "FloatRange",
                                                                                      "VariantFactor",
                                                                                      "AdaptiveSeeds"))


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
        options = [typing.get_args(a)[0] if typing.get_origin(a) is typing.Annotated else a
                   for a in (typing.get_args(field.annotation) or (field.annotation,))]
        model = next((a for a in options if isinstance(a, type) and issubclass(a, BaseModel)), None)
    return list(getattr(model, "model_fields", {}))


__all__ = ["DEFAULT_DB_URL", "METRICS", "Study", "StudyFile", "deep_merge", "load_study", "load_yaml", "parse_set",
           "resolve_study_path", "validate_study"]
