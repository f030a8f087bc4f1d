"""Simulations behind the statistics' design (docs: README "Reading the ablation table", "Adaptive seeds").

    python benchmarks/sim_stats.py coverage --studies 20000   # level intervals: coverage and width
    python benchmarks/sim_stats.py fwer --studies 4000         # adaptive seeding under the null

coverage: per-seed accuracies drawn on the logit scale (mu + sigma·N(0, 1)), each scored on 512 test images
(binomial); how often the interval holds the true mean accuracy, and its mean width in points, for the interval
`nas.stats.level_interval` computes (t, clipped to the range, binomial floor) and for a logit-scale t interval.
fwer: four equal levels, `nas.adaptive` runs its looks; how often any level gets a verdict (a false positive), with the
error split over the looks (as shipped) and without it (naive optional stopping).
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import stats as sst
from scipy.special import expit, logit

import nas.adaptive as A
import nas.stats as S

M = 512  # test images


def coverage(studies: int) -> None:
    kind = S.metric_kind("val_acc")
    print("| true acc | sigma | seeds | clipped t: coverage / width | logit t: coverage / width | mean outside logit |")
    for mu, sigma in [(0.4, 0.3), (0.4, 1.5), (3.0, 0.3), (3.0, 1.0), (4.6, 0.5), (4.6, 1.5), (6.0, 1.0)]:
        rng = np.random.default_rng(0)
        true = float(expit(mu + sigma * rng.standard_normal(400_000)).mean())
        for n in (2, 3, 5, 10):
            x = rng.binomial(M, expit(mu + sigma * rng.standard_normal((studies, n)))) / M
            ivs = [S.level_interval(list(row), kind, n_test=M) for row in x]
            lo, hi = np.array([i.low for i in ivs]), np.array([i.high for i in ivs])
            z = logit((x * M + 0.5) / (M + 1))
            half = sst.t.ppf(0.975, n - 1) * z.std(1, ddof=1) / math.sqrt(n)
            llo, lhi = expit(z.mean(1) - half), expit(z.mean(1) + half)
            mean = x.mean(1)
            print(f"| {100 * true:.1f} | {sigma} | {n} | {np.mean((lo <= true) & (true <= hi)):.3f} / "
                  f"{100 * np.mean(hi - lo):.1f} | {np.mean((llo <= true) & (true <= lhi)):.3f} / "
                  f"{100 * np.mean(lhi - llo):.1f} | {np.mean((mean < llo) | (mean > lhi)):.3f} |")


def fwer(studies: int) -> None:
    levels, settings = ["ref", "a", "b", "c"], {"min": 3, "max": 10, "target_halfwidth": 0.5, "confidence": 0.95}
    compare = A.compare_levels

    def one(study: int, spend: bool) -> bool:
        A.compare_levels = compare if spend else (lambda *a, **k: compare(*a, **{**k, "looks": 1}))
        rng = np.random.default_rng(study)
        shared, own = rng.normal(0, 0.02, 10), rng.normal(0, 0.01, (4, 10))
        res: dict[str, dict[int, float]] = {}
        while cells := A.next_cells(res, "ref", settings, levels=levels, n_test=2000):
            for lv, s in cells:
                res.setdefault(lv, {})[s] = float(np.clip(0.8 + shared[s] + own[levels.index(lv), s], 0, 1))
        looks = len(A.look_sizes(settings)) if spend else 1
        return any(c.verdict != S.NO_DIFFERENCE for c in compare(res, "ref", S.metric_kind("val_acc"),
                                                                  n_test=2000, looks=looks))

    S.min_detectable_difference = lambda *a, **k: math.nan  # not needed for verdicts, and slow
    for spend in (True, False):
        fp = float(np.mean([one(i, spend) for i in range(studies)]))
        print(f"error split over looks: {spend}: false-positive families {fp:.3f} ± "
              f"{1.96 * math.sqrt(fp * (1 - fp) / studies):.3f} over {studies} null studies")
    A.compare_levels = compare


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["coverage", "fwer"])
    p.add_argument("--studies", type=int, default=2000)
    args = p.parse_args()
    (coverage if args.what == "coverage" else fwer)(args.studies)
