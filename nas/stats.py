"""Statistics for ablations: per factor level, the mean over seeds with a Student-t 95% interval, and the paired
difference against a reference level on the seeds both share (pairing removes the seed-to-seed variation that both
levels see, so it detects smaller effects than comparing two intervals).

Pure functions on plain rows (mappings such as {"readout": "head", "seed": 0, "val_acc": 0.71}); results are frozen
dataclasses. Rows whose metric is missing or not finite (failed trials) are counted in `n_missing`, not averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Hashable, Iterable, Mapping

from .errors import NasError

# Two-sided 97.5% quantiles of Student's t for df = 1..30 (used when scipy is missing); beyond 30 the few rows below.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_T975_LARGE = ((40, 2.021075), (60, 2.000298), (120, 1.979930), (math.inf, 1.959964))


def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t critical value: the exact 95% table for df <= 30 (the common case, and it spares
    `nas show` scipy's import time), else scipy's when installed, else the conservative table (95% only)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if math.isclose(confidence, 0.95) and df <= len(_T975):
        return _T975[df - 1]
    try:
        from scipy.stats import t
    except ImportError:
        if not math.isclose(confidence, 0.95):
            raise NasError(f"confidence={confidence} needs scipy (pip install scipy); without it only 0.95 is "
                           "available") from None
        return _t975_table(df)
    return float(t.ppf(0.5 + confidence / 2, df))


def _t975_table(df: int) -> float:
    if df <= len(_T975):
        return _T975[df - 1]
    prev = _T975[-1]
    for bound, value in _T975_LARGE:  # conservative: the next tabulated df at or below df
        if df < bound:
            return prev
        prev = value
    return _T975_LARGE[-1][1]


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, sample std, half-width of the t interval); std and half-width are NaN for fewer than 2 values."""
    xs = [float(v) for v in values]
    if not xs:
        raise NasError("mean_ci needs at least one value")
    n, mean = len(xs), math.fsum(xs) / len(xs)
    if n < 2:
        return mean, math.nan, math.nan
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    return mean, std, t_critical(n - 1, confidence) * std / math.sqrt(n)


@dataclass(frozen=True)
class LevelSummary:
    level: Any
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    n_missing: int = 0


@dataclass(frozen=True)
class PairedDifference:
    """level − reference on matched seeds: mean difference and its t interval over the pairs."""

    level: Any
    reference: Any
    n_pairs: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    seeds: tuple[Hashable, ...]


def _value(row: Mapping[str, Any], metric: str) -> float | None:
    v = row.get(metric)
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _by_level(rows: Iterable[Mapping[str, Any]], factor: str, metric: str,
              seed_key: str) -> tuple[dict[Any, dict[Hashable, float]], dict[Any, int]]:
    """{level: {seed: value}} in order of first appearance, and {level: rows without a usable value}."""
    values: dict[Any, dict[Hashable, float]] = {}
    missing: dict[Any, int] = {}
    for row in rows:
        if factor not in row:
            raise NasError(f"row {dict(row)} has no factor key {factor!r}")
        level = row[factor]
        values.setdefault(level, {})
        missing.setdefault(level, 0)
        v = _value(row, metric)
        if v is None:
            missing[level] += 1
            continue
        seed = row.get(seed_key)
        if seed in values[level]:
            raise NasError(f"two rows for {factor}={level!r}, {seed_key}={seed!r}; each (level, seed) must be one "
                           "trial (deduplicate the rows first)")
        values[level][seed] = v
    return values, missing


def summarize(rows: Iterable[Mapping[str, Any]], factor: str, metric: str, *, seed_key: str = "seed",
              confidence: float = 0.95) -> list[LevelSummary]:
    """Per level of `factor`: n, mean, std and the t confidence interval of `metric` over seeds."""
    values, missing = _by_level(rows, factor, metric, seed_key)
    out = []
    for level, by_seed in values.items():
        if not by_seed:
            out.append(LevelSummary(level, 0, math.nan, math.nan, math.nan, math.nan, missing[level]))
            continue
        mean, std, half = mean_ci(by_seed.values(), confidence)
        out.append(LevelSummary(level, len(by_seed), mean, std, mean - half, mean + half, missing[level]))
    return out


def paired_differences(rows: Iterable[Mapping[str, Any]], factor: str, metric: str, reference: Any, *,
                       seed_key: str = "seed", confidence: float = 0.95) -> list[PairedDifference]:
    """For every level other than `reference`: level − reference on the seeds both have, with its t interval."""
    values, _ = _by_level(rows, factor, metric, seed_key)
    if reference not in values:
        raise NasError(f"reference level {reference!r} is not among the levels of {factor!r}: "
                       f"{', '.join(map(repr, values))}")
    ref = values[reference]
    out = []
    for level, by_seed in values.items():
        if level == reference:
            continue
        seeds = tuple(s for s in by_seed if s in ref)
        if not seeds:
            out.append(PairedDifference(level, reference, 0, math.nan, math.nan, math.nan, math.nan, ()))
            continue
        mean, std, half = mean_ci((by_seed[s] - ref[s] for s in seeds), confidence)
        out.append(PairedDifference(level, reference, len(seeds), mean, std, mean - half, mean + half, seeds))
    return out


__all__ = ["LevelSummary", "PairedDifference", "mean_ci", "paired_differences", "summarize", "t_critical"]
