"""Ablation statistics against values computed by hand."""

from __future__ import annotations

import math

import pytest

from nas import stats
from nas.errors import NasError
from nas.stats import mean_ci, paired_differences, summarize, t_critical

ROWS = [
    {"readout": "head", "seed": 0, "val_acc": 0.70},
    {"readout": "head", "seed": 1, "val_acc": 0.74},
    {"readout": "head", "seed": 2, "val_acc": 0.72},
    {"readout": "middle", "seed": 0, "val_acc": 0.75},
    {"readout": "middle", "seed": 1, "val_acc": 0.78},
    {"readout": "middle", "seed": 2, "val_acc": 0.80},
    {"readout": "tail", "seed": 0, "val_acc": 0.60},
    {"readout": "tail", "seed": 1, "val_acc": None},  # a failed trial
    {"readout": "tail", "seed": 2, "val_acc": float("nan")},
]


def test_t_critical_values_and_table_agree():
    assert t_critical(1) == pytest.approx(12.706205, abs=1e-5)
    assert t_critical(2) == pytest.approx(4.302653, abs=1e-5)
    assert t_critical(30) == pytest.approx(2.042272, abs=1e-5)
    for df in (1, 2, 5, 10, 29, 30):
        assert stats._t975_table(df) == pytest.approx(t_critical(df), abs=1e-5)
    assert t_critical(35) <= stats._t975_table(35) < stats._t975_table(30) + 1e-12  # conservative above 30
    assert stats._t975_table(10_000) == pytest.approx(1.979930) and t_critical(10_000) < 1.979930
    with pytest.raises(ValueError):
        t_critical(0)


def test_level_summaries_by_hand():
    head, middle, tail = summarize(ROWS, "readout", "val_acc")
    # head: mean 0.72, deviations −0.02, 0.02, 0 → s² = 0.0008/2 → s = 0.02; half = 4.302653·0.02/√3
    assert (head.level, head.n, head.n_missing) == ("head", 3, 0)
    assert head.mean == pytest.approx(0.72) and head.std == pytest.approx(0.02)
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert (head.ci_low, head.ci_high) == (pytest.approx(0.72 - half, abs=1e-6), pytest.approx(0.72 + half, abs=1e-6))
    # middle: 0.75, 0.78, 0.80 → mean 0.776667, s = sqrt(((−.026667)² + .003333² + .023333²)/2) = 0.025166
    assert middle.mean == pytest.approx(0.7766667, abs=1e-6) and middle.std == pytest.approx(0.0251661, abs=1e-6)
    assert tail.n == 1 and tail.n_missing == 2 and tail.mean == pytest.approx(0.60)
    assert math.isnan(tail.std) and math.isnan(tail.ci_low)


def test_paired_difference_on_matched_seeds_by_hand():
    diffs = {d.level: d for d in paired_differences(ROWS, "readout", "val_acc", reference="head")}
    mid = diffs["middle"]
    # differences 0.05, 0.04, 0.08 → mean 0.056667, s = sqrt((.006667² + .016667² + .023333²)/2) = 0.020817
    assert mid.n_pairs == 3 and mid.seeds == (0, 1, 2)
    assert mid.mean == pytest.approx(0.0566667, abs=1e-6) and mid.std == pytest.approx(0.0208167, abs=1e-6)
    half = 4.302653 * 0.0208167 / math.sqrt(3)
    assert mid.ci_low == pytest.approx(0.0566667 - half, abs=1e-5) and mid.ci_high > mid.ci_low
    tail = diffs["tail"]  # only seed 0 survives on both sides
    assert tail.n_pairs == 1 and tail.mean == pytest.approx(-0.10) and math.isnan(tail.ci_low)
    assert set(diffs) == {"middle", "tail"}


def test_pairing_uses_only_shared_seeds():
    rows = [{"f": "a", "seed": s, "m": v} for s, v in ((0, 1.0), (1, 2.0), (2, 3.0))]
    rows += [{"f": "b", "seed": s, "m": v} for s, v in ((1, 2.5), (2, 3.5), (7, 100.0))]
    (d,) = paired_differences(rows, "f", "m", reference="a")
    assert d.seeds == (1, 2) and d.mean == pytest.approx(0.5) and d.std == pytest.approx(0.0)
    assert d.ci_low == pytest.approx(0.5) and d.ci_high == pytest.approx(0.5)


def test_mean_ci_and_errors():
    m, s, h = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert m == 2.5 and s == pytest.approx(math.sqrt(5 / 3)) and h == pytest.approx(3.182446 * s / 2, abs=1e-6)
    with pytest.raises(NasError, match="reference level 'nope'"):
        paired_differences(ROWS, "readout", "val_acc", reference="nope")
    with pytest.raises(NasError, match="two rows"):
        summarize(ROWS + [{"readout": "head", "seed": 0, "val_acc": 0.1}], "readout", "val_acc")
    with pytest.raises(NasError, match="no factor key"):
        summarize([{"seed": 0, "val_acc": 1.0}], "readout", "val_acc")


# ---- intervals, floors and corrections against scipy / statsmodels -------------------------------------------------
SAMPLES = [[0.70, 0.74, 0.72], [0.912, 0.925, 0.905, 0.918, 0.921], [0.07, 0.87], [3.0, 1.0, 4.0, 1.0, 5.0, 9.0]]


@pytest.mark.parametrize("xs", SAMPLES)
@pytest.mark.parametrize("confidence", [0.95, 0.99, 0.9875])
def test_t_interval_matches_scipy_and_statsmodels(xs, confidence):
    import numpy as np
    from scipy import stats as sst
    from statsmodels.stats.weightstats import DescrStatsW

    iv = stats.t_interval(xs, confidence=confidence)
    lo, hi = sst.t.interval(confidence, len(xs) - 1, loc=np.mean(xs), scale=sst.sem(xs))
    assert (iv.low, iv.high) == (pytest.approx(lo, rel=1e-9), pytest.approx(hi, rel=1e-9))
    assert DescrStatsW(np.array(xs)).tconfint_mean(1 - confidence) == (pytest.approx(lo), pytest.approx(hi))
    assert iv.sd == pytest.approx(np.std(xs, ddof=1)) and iv.half_width == pytest.approx((hi - lo) / 2)


def test_level_interval_stays_inside_the_range_and_clipping_is_scipys_interval_cut():
    from scipy import stats as sst

    kind = stats.metric_kind("val_acc")
    iv = stats.level_interval([0.07, 0.87], kind)  # the README's old "47.1 %, CI [-59.6, 153.8]" kind of input
    assert (iv.low, iv.high) == (0.0, 1.0) and iv.mean == pytest.approx(0.47)
    xs = [0.97, 0.99, 0.995]
    lo, hi = sst.t.interval(0.95, 2, loc=sum(xs) / 3, scale=sst.sem(xs))
    iv = stats.level_interval(xs, kind)
    assert hi > 1 and iv.high == 1.0 and iv.low == pytest.approx(lo)
    loss = stats.level_interval([-1.0, 3.0], stats.metric_kind("val_loss"))  # unbounded: the plain interval
    assert loss.low == pytest.approx(1 - 12.706205 * 2 * math.sqrt(2) / math.sqrt(2), abs=1e-5) and loss.low < 0
    assert stats.level_interval([10.0, 1000.0], stats.metric_kind("throughput")).low == 0.0


@pytest.mark.parametrize("p,m", [(0.0, 512), (1.0, 512), (0.9, 100), (0.5, 16)])
def test_binomial_floor_is_the_binomial_sd_with_half_an_item_of_continuity(p, m):
    from scipy.stats import binom

    pt = (p * m + 0.5) / (m + 1)
    assert stats.binomial_floor_sd(p, m) == pytest.approx(binom(m, pt).std() / m, rel=1e-12)
    assert stats.binomial_floor_sd(p, m) > 0


@pytest.mark.parametrize("delta,m", [(0.02, 512), (-0.3, 100), (0.0, 512)])
def test_paired_floor_is_the_least_sd_two_classifiers_on_the_same_items_can_have(delta, m):
    import numpy as np
    from scipy.stats import multinomial

    d = (abs(delta) * m + 0.5) / (m + 1)  # continuity as in the function
    cov = multinomial(m, [d, 0.0, 1 - d]).cov()  # b = level right only, c = reference right only
    var_b_minus_c = cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]
    assert stats.paired_floor_sd(delta, m) == pytest.approx(math.sqrt(var_b_minus_c) / m, rel=1e-12)
    # any other split of the discordant items (c > 0, same Δ) has a larger SD of (b − c)/m
    for c in np.linspace(0.001, (1 - d) / 2, 7):
        cov = multinomial(m, [d + c, c, 1 - d - 2 * c]).cov()
        sd = math.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]) / m
        assert sd == pytest.approx(math.sqrt((d + 2 * c - d * d) / m)) and sd > stats.paired_floor_sd(delta, m)


@pytest.mark.parametrize("ps", [[0.01, 0.04, 0.03, 0.005], [0.2, 0.01, 0.5], [0.012, 0.012, 0.04],
                                [0.001, 0.002, 0.003], [0.9]])
def test_holm_matches_statsmodels_and_its_alphas_agree_with_the_verdicts(ps):
    from statsmodels.stats.multitest import multipletests

    assert stats.holm(ps, 0.05) == list(multipletests(ps, alpha=0.05, method="holm")[0])
    rejected, alphas = stats.holm(ps, 0.05), stats.holm_alphas(ps, 0.05)
    assert all(rej == (p <= a) for p, a, rej in zip(ps, alphas, rejected))
    assert min(alphas) == pytest.approx(0.05 / len(ps)) and max(alphas) <= 0.05  # the first step is Bonferroni's


@pytest.mark.parametrize("sd,n,alpha", [(1.0, 3, 0.05), (0.02, 5, 0.0125), (2.5, 10, 0.01), (0.5, 2, 0.05)])
def test_min_detectable_difference_matches_statsmodels_power(sd, n, alpha):
    from statsmodels.stats.power import TTestPower

    d = TTestPower().solve_power(effect_size=None, nobs=n, alpha=alpha, power=0.8, alternative="two-sided")
    assert stats.min_detectable_difference(sd, n, alpha) == pytest.approx(sd * d, rel=1e-4)
    assert stats.min_detectable_difference(0.0, 5, 0.05) == 0.0
    assert math.isnan(stats.min_detectable_difference(1.0, 1, 0.05))


LEVELS = {"ref": {0: 0.70, 1: 0.72, 2: 0.71, 3: 0.69},
          "up": {0: 0.75, 1: 0.78, 2: 0.76, 3: 0.74},  # +5 points on every seed
          "flat": {0: 0.71, 1: 0.70, 2: 0.73, 3: 0.68},
          "down": {0: 0.66, 1: 0.70, 2: 0.69, 3: 0.65},
          "failed": {0: None, 1: 0.70}}


def test_compare_levels_against_scipy_ttest_rel_and_statsmodels_holm():
    import numpy as np
    from scipy import stats as sst
    from statsmodels.stats.multitest import multipletests

    out = {d.level: d for d in stats.compare_levels(LEVELS, "ref", stats.metric_kind("val_acc"))}
    tested = ["up", "flat", "down"]
    ref = np.array([LEVELS["ref"][s] for s in range(4)])
    ps = [sst.ttest_rel([LEVELS[lv][s] for s in range(4)], ref).pvalue for lv in tested]
    assert [out[lv].p_value for lv in tested] == pytest.approx(ps, rel=1e-9)
    rejected = multipletests(ps, alpha=0.05, method="holm")[0]
    assert [out[lv].verdict != stats.NO_DIFFERENCE for lv in tested] == list(rejected)
    assert (out["up"].verdict, out["flat"].verdict, out["down"].verdict) == ("better", "no difference detected",
                                                                              "worse")
    for lv in tested:  # the corrected interval is scipy's paired interval at the Holm step's level, and agrees
        d = out[lv]
        diffs = np.array([LEVELS[lv][s] for s in range(4)]) - ref
        lo, hi = sst.t.interval(1 - d.alpha, 3, loc=diffs.mean(), scale=sst.sem(diffs))
        assert (d.adj_low, d.adj_high) == (pytest.approx(lo), pytest.approx(hi))
        assert (d.adj_low > 0 or d.adj_high < 0) == (d.verdict != stats.NO_DIFFERENCE)
        assert d.adj_high - d.adj_low >= d.ci_high - d.ci_low  # never narrower than the uncorrected one
    assert out["failed"].n_pairs == 1 and out["failed"].verdict == stats.TOO_FEW


def test_corrected_intervals_never_contradict_holm_on_random_studies():
    import numpy as np

    rng = np.random.default_rng(7)
    for _ in range(60):
        k, n = int(rng.integers(2, 6)), int(rng.integers(2, 7))
        vals = {f"l{i}": {s: float(np.clip(0.8 + rng.normal(0, 0.03) + (0.03 * rng.normal() if i else 0), 0, 1))
                          for s in range(n)} for i in range(k)}
        looks = int(rng.integers(1, 4))
        for d in stats.compare_levels(vals, "l0", stats.metric_kind("val_acc"), n_test=500, looks=looks):
            assert (d.adj_low > 0 or d.adj_high < 0) == (d.verdict != stats.NO_DIFFERENCE)
            assert -1 <= d.adj_low <= d.adj_high <= 1 and d.adj_low <= d.mean <= d.adj_high


def test_floor_keeps_tied_seeds_from_a_false_verdict_and_deterministic_metrics_decide():
    acc = {"ref": {0: 0.998, 1: 0.998, 2: 0.998}, "lv": {0: 1.0, 1: 1.0, 2: 1.0}}  # one image apart on 512
    (no_floor,) = stats.compare_levels(acc, "ref", stats.metric_kind("val_acc"))
    (floored,) = stats.compare_levels(acc, "ref", stats.metric_kind("val_acc"), n_test=512)
    assert no_floor.verdict == "better" and floored.verdict == "no difference detected"
    # paired floor: Δ̃ = (0.002·512 + 0.5)/513, sd = sqrt(Δ̃(1 − Δ̃)/512); t = 0.002/(sd/√3); two-sided p from t(2)
    d = (0.002 * 512 + 0.5) / 513
    t = 0.002 / (math.sqrt(d * (1 - d) / 512) / math.sqrt(3))
    from scipy.stats import t as student
    assert floored.p_value == pytest.approx(2 * student.sf(t, 2), rel=1e-6)
    params = {"a": {0: 1000.0, 1: 1000.0}, "b": {0: 1200.0, 1: 1200.0}}  # params: fewer is better, exact
    (b,) = stats.compare_levels(params, "a", stats.metric_kind("params"))
    assert b.verdict == "worse" and b.p_value == 0.0 and b.mde == 0.0
    (u,) = stats.compare_levels(params, "a", stats.metric_kind("no_such_metric"))
    assert u.verdict == "higher"


def test_looks_split_the_error_rate():
    kind = stats.metric_kind("val_acc")
    one = {d.level: d for d in stats.compare_levels(LEVELS, "ref", kind)}
    three = {d.level: d for d in stats.compare_levels(LEVELS, "ref", kind, looks=3)}
    assert three["up"].alpha == pytest.approx(one["up"].alpha / 3)
    assert three["up"].adj_high - three["up"].adj_low > one["up"].adj_high - one["up"].adj_low
    assert three["up"].mde > one["up"].mde
