"""Statistics for ablations that hold with few seeds: per factor level a t interval over seeds kept inside the
metric's range, and per level the paired difference against a reference on matched seeds, tested with a paired t
test, corrected for comparing several levels at once (Holm), with a verdict and the smallest difference the seeds
could have detected.

Why these choices (docs_h3_readme.md has the long form):
- A t interval on the metric's own scale estimates what "mean accuracy" means (the mean over seeds), and the
  arithmetic mean always lies inside it. Intersecting it with the metric's range (accuracy in [0, 1]) cannot lower
  its coverage, because the true value lies in that range. A logit-scale interval was measured against it and
  rejected: it estimates another quantity (the mean log-odds), misses the mean accuracy more often when seeds
  disagree, and with two seeds near 99 % spans most of [0, 100].
- A share of a test set of m items cannot be known better than the m items allow: the seed-to-seed SD is never
  taken below the binomial SD of the test set (`binomial_floor_sd`), and a paired difference's SD never below the
  smallest SD two classifiers scored on the same m items can have (`paired_floor_sd`). So two seeds that happen to
  agree give no zero-width interval and no false "better".
- Holm's step-down verdicts control the family-wise error; each level's corrected interval is drawn at the level
  its Holm step used (`holm_alphas`), so it excludes 0 exactly when the verdict is better or worse.

Pure functions on plain values; results are frozen dataclasses. Missing or non-finite values (failed trials) are
counted, never averaged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Hashable, Iterable, Mapping, Sequence

from .beside import wait_for_imports
from .errors import NasError

# Two-sided 97.5% quantiles of Student's t for df = 1..30 (used when scipy is missing); beyond 30 the few rows below.
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)
_T975_LARGE = ((40, 2.021075), (60, 2.000298), (120, 1.979930), (math.inf, 1.959964))

BETTER, WORSE, NO_DIFFERENCE, TOO_FEW = "better", "worse", "no difference detected", "too few seeds"


@dataclass(frozen=True)
class MetricKind:
    """What the statistics need to know about a metric: its range, its direction, how it is shown."""

    low: float = -math.inf
    high: float = math.inf
    higher_is_better: bool | None = None
    scale: float = 1.0  # display factor: accuracy is stored in [0, 1] and shown in percent
    proportion: bool = False  # a share of the test set's items: the binomial floors apply

    @property
    def unit(self) -> str:
        return " (%)" if self.scale == 100.0 else ""

    @property
    def diff_range(self) -> tuple[float, float]:
        """The feasible range of a difference of two values of this metric."""
        return self.low - self.high, self.high - self.low


METRIC_KINDS: dict[str, MetricKind] = {
    "val_acc": MetricKind(0.0, 1.0, True, 100.0, True),
    "val_loss": MetricKind(higher_is_better=False), "train_loss": MetricKind(higher_is_better=False),
    "throughput": MetricKind(0.0, math.inf, True), "params": MetricKind(0.0, math.inf, False),
    "flops": MetricKind(0.0, math.inf, False), "peak_memory_bytes": MetricKind(0.0, math.inf, False),
}


def metric_kind(metric: str) -> MetricKind:
    """The kind of a known metric; anything else is unbounded, without a direction, shown as stored."""
    return METRIC_KINDS.get(metric, MetricKind())


# ------------------------------------------------------------------------------------------- distributions
@lru_cache(maxsize=512)
def t_critical(df: int, confidence: float = 0.95) -> float:
    """The two-sided Student-t critical value: scipy's (installed with scikit-learn), else the 95% table (exact to
    six decimals up to df = 30, conservative above)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    wait_for_imports()  # scipy may be loading on the side (nas/beside.py)
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


def t_pvalue(t: float, df: int) -> float:
    """Two-sided p-value of a t statistic (t = ±inf, from a zero SD, gives 0)."""
    wait_for_imports()
    from scipy.stats import t as student

    return 1.0 if t == 0 else float(2 * student.sf(abs(t), df))


def min_detectable_difference(sd: float, n: int, alpha: float, power: float = 0.8) -> float:
    """The smallest true mean difference a two-sided one-sample (paired) t test on n pairs with SD `sd` detects with
    probability `power` at level `alpha` (exact, from the noncentral t). NaN for n < 2."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    if sd == 0:
        return 0.0
    wait_for_imports()
    from scipy.optimize import brentq
    from scipy.stats import nct, t

    df, crit = n - 1, float(t.ppf(1 - alpha / 2, n - 1))

    def short(d: float) -> float:  # power at standardised effect d, minus the target
        nc = d * math.sqrt(n)  # P(T < −crit | nc) = P(T > crit | −nc): scipy's far-left cdf can return NaN
        return float(nct.sf(crit, df, nc) + nct.sf(crit, df, -nc)) - power

    hi = 1.0
    while short(hi) < 0:
        hi *= 2
    return sd * float(brentq(short, 0.0, hi, xtol=1e-10))


# ------------------------------------------------------------------------------------------- floors
def binomial_floor_sd(p: float, n_test: int) -> float:
    """SD of an accuracy measured on `n_test` items when the true accuracy is p, with half an item of continuity
    correction (p̃ = (p·m + ½)/(m + 1)) so that 0 % and 100 % still carry the uncertainty of m items."""
    pt = (min(max(p, 0.0), 1.0) * n_test + 0.5) / (n_test + 1)
    return math.sqrt(pt * (1 - pt) / n_test)


def paired_floor_sd(delta: float, n_test: int) -> float:
    """The smallest SD a difference of two accuracies scored on the same `n_test` items can have: with discordant
    shares b (only the level right) and c (only the reference right), Δ = b − c and Var = (b + c − Δ²)/m, least when
    c = 0, i.e. |Δ|(1 − |Δ|)/m (McNemar's setting); half an item of continuity correction as above."""
    d = (min(abs(delta), 1.0) * n_test + 0.5) / (n_test + 1)
    return math.sqrt(d * (1 - d) / n_test)


# ------------------------------------------------------------------------------------------- intervals
@dataclass(frozen=True)
class Interval:
    """A t interval over n values: `sd` is the sample SD, `sd_used` the SD after the test-set floor; `low` and
    `high` are clipped to the feasible range, `half_width` is not (it measures precision)."""

    n: int
    mean: float
    sd: float
    sd_used: float
    low: float
    high: float
    half_width: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def t_interval(values: Sequence[float], *, confidence: float = 0.95, bounds: tuple[float, float] = (-math.inf,
               math.inf), floor_sd: float = 0.0) -> Interval:
    """Mean ± t(n−1)·max(sd, floor_sd)/√n, intersected with `bounds`; NaN limits for fewer than two values."""
    xs = [float(v) for v in values]
    if not xs:
        raise NasError("an interval needs at least one value")
    n, mean = len(xs), math.fsum(xs) / len(xs)
    if n < 2:
        return Interval(n, mean, math.nan, math.nan, math.nan, math.nan, math.nan)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    used = max(sd, floor_sd)
    half = t_critical(n - 1, confidence) * used / math.sqrt(n)
    return Interval(n, mean, sd, used, max(bounds[0], mean - half), min(bounds[1], mean + half), half)


def level_interval(values: Sequence[float], kind: MetricKind = MetricKind(), *, n_test: int | None = None,
                   confidence: float = 0.95) -> Interval:
    """The interval of one level's metric over its seeds, inside the metric's range."""
    mean = math.fsum(values) / len(values) if values else math.nan
    floor = binomial_floor_sd(mean, n_test) if kind.proportion and n_test and values else 0.0
    return t_interval(values, confidence=confidence, bounds=(kind.low, kind.high), floor_sd=floor)


def paired_interval(diffs: Sequence[float], kind: MetricKind = MetricKind(), *, n_test: int | None = None,
                    confidence: float = 0.95) -> Interval:
    """The interval of level − reference over matched seeds, inside the difference's feasible range."""
    mean = math.fsum(diffs) / len(diffs) if diffs else math.nan
    floor = paired_floor_sd(mean, n_test) if kind.proportion and n_test and diffs else 0.0
    return t_interval(diffs, confidence=confidence, bounds=kind.diff_range, floor_sd=floor)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, sample std, half-width of the plain t interval); std and half-width are NaN for fewer than 2 values."""
    iv = t_interval(list(values), confidence=confidence)
    return iv.mean, iv.sd, iv.half_width


# ------------------------------------------------------------------------------------------- multiplicity
def holm(p_values: Sequence[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down rejections: sort p ascending, reject while p_(i) <= alpha/(m − i) (i from 0)."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [False] * m
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (m - rank):
            break
        out[i] = True
    return out


def holm_alphas(p_values: Sequence[float], alpha: float = 0.05) -> list[float]:
    """The level at which each hypothesis's corrected interval is drawn so that it never contradicts Holm: a rejected
    hypothesis of rank i uses alpha/(m − i), where its own p passed (so the interval excludes 0); every other one uses
    alpha/(m − r), the threshold at which the procedure stopped (r rejections), which its p exceeds (so the interval
    holds 0). The most significant level gets the Bonferroni interval."""
    m = len(p_values)
    rejected = holm(p_values, alpha)
    r = sum(rejected)
    order = sorted(range(m), key=lambda i: p_values[i])
    out = [alpha / (m - r) if r < m else alpha] * m
    for rank, i in enumerate(order):
        if rejected[i]:
            out[i] = alpha / (m - rank)
    return out


# ------------------------------------------------------------------------------------------- comparisons
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
    """level − reference on matched seeds: the mean difference, its plain interval (`ci_*`), the paired t test, the
    Holm-corrected interval (`adj_*`, drawn at `alpha`), the verdict and the smallest detectable difference."""

    level: Any
    reference: Any
    n_pairs: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    seeds: tuple[Hashable, ...]
    p_value: float = math.nan
    alpha: float = math.nan
    adj_low: float = math.nan
    adj_high: float = math.nan
    adj_half_width: float = math.nan
    verdict: str = TOO_FEW
    mde: float = math.nan


def _finite(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def compare_levels(values: Mapping[Any, Mapping[Hashable, float | None]], reference: Any,
                   kind: MetricKind = MetricKind(), *, n_test: int | None = None, confidence: float = 0.95,
                   looks: int = 1) -> list[PairedDifference]:
    """Every level of `values` ({level: {seed: value or None}}) other than `reference` against it on the seeds both
    have values for. The family's error rate is 1 − confidence, split over `looks` interim analyses (Bonferroni over
    looks, see nas.adaptive) and over the levels by Holm. The smallest detectable difference is at 80 % power at the
    strictest Holm step, alpha/(m·looks)."""
    if reference not in values:
        raise NasError(f"reference level {reference!r} is not among the levels: {', '.join(map(repr, values))}")
    ref = {s: v for s, v in ((s, _finite(v)) for s, v in values[reference].items()) if v is not None}
    stats, tests = [], []
    for level, by_seed in values.items():
        if level == reference:
            continue
        seeds = tuple(s for s, v in by_seed.items() if _finite(v) is not None and s in ref)
        diffs = [float(by_seed[s]) - ref[s] for s in seeds]  # type: ignore[arg-type]
        iv = paired_interval(diffs, kind, n_test=n_test, confidence=confidence) if diffs else None
        stats.append((level, seeds, iv))
        if iv is not None and iv.n >= 2:
            t = math.copysign(math.inf, iv.mean) if iv.sd_used == 0 else iv.mean / (iv.sd_used / math.sqrt(iv.n))
            tests.append((len(stats) - 1, t_pvalue(0.0 if iv.mean == 0 else t, iv.n - 1)))
    alpha = (1 - confidence) / looks
    levels = holm_alphas([p for _, p in tests], alpha) if tests else []
    tested = {i: (p, a) for (i, p), a in zip(tests, levels)}
    out = []
    for i, (level, seeds, iv) in enumerate(stats):
        if iv is None:
            out.append(PairedDifference(level, reference, 0, math.nan, math.nan, math.nan, math.nan, ()))
            continue
        if i not in tested:
            out.append(PairedDifference(level, reference, iv.n, iv.mean, iv.sd, iv.low, iv.high, seeds))
            continue
        p, a = tested[i]
        diffs = [float(values[level][s]) - ref[s] for s in seeds]  # type: ignore[arg-type]
        adj = paired_interval(diffs, kind, n_test=n_test, confidence=1 - a)
        verdict = _verdict(p <= a, iv.mean, kind)
        mde = min_detectable_difference(iv.sd_used, iv.n, alpha / len(tests))
        out.append(PairedDifference(level, reference, iv.n, iv.mean, iv.sd, iv.low, iv.high, seeds, p, a, adj.low,
                                    adj.high, adj.half_width, verdict, mde))
    return out


def _verdict(rejected: bool, mean: float, kind: MetricKind) -> str:
    if not rejected:
        return NO_DIFFERENCE
    up = mean > 0
    if kind.higher_is_better is None:
        return "higher" if up else "lower"
    return BETTER if up == kind.higher_is_better else WORSE


# ------------------------------------------------------------------------------------------- rows
def values_by_level(rows: Iterable[Mapping[str, Any]], factor: str, metric: str,
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
        v = _finite(row.get(metric))
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
              confidence: float = 0.95, n_test: int | None = None) -> list[LevelSummary]:
    """Per level of `factor`: n, mean, std and the interval of `metric` over seeds (inside the metric's range)."""
    values, missing = values_by_level(rows, factor, metric, seed_key)
    kind = metric_kind(metric)
    out = []
    for level, by_seed in values.items():
        if not by_seed:
            out.append(LevelSummary(level, 0, math.nan, math.nan, math.nan, math.nan, missing[level]))
            continue
        iv = level_interval(list(by_seed.values()), kind, n_test=n_test, confidence=confidence)
        out.append(LevelSummary(level, iv.n, iv.mean, iv.sd, iv.low, iv.high, missing[level]))
    return out


def paired_differences(rows: Iterable[Mapping[str, Any]], factor: str, metric: str, reference: Any, *,
                       seed_key: str = "seed", confidence: float = 0.95, n_test: int | None = None,
                       looks: int = 1) -> list[PairedDifference]:
    """For every level other than `reference`: level − reference on the seeds both have (`compare_levels`)."""
    values, _ = values_by_level(rows, factor, metric, seed_key)
    if reference not in values:
        raise NasError(f"reference level {reference!r} is not among the levels of {factor!r}: "
                       f"{', '.join(map(repr, values))}")
    return compare_levels(values, reference, metric_kind(metric), n_test=n_test, confidence=confidence, looks=looks)


__all__ = ["BETTER", "METRIC_KINDS", "NO_DIFFERENCE", "TOO_FEW", "WORSE", "Interval", "LevelSummary", "MetricKind",
           "PairedDifference", "binomial_floor_sd", "compare_levels", "holm", "holm_alphas", "level_interval",
           "mean_ci", "metric_kind", "min_detectable_difference", "paired_differences", "paired_floor_sd",
           "paired_interval", "summarize", "t_critical", "t_interval", "t_pvalue", "values_by_level"]
