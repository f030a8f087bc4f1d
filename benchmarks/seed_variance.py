"""Seed-to-seed spread and paired verdicts of a grid study, without Ray: the tool behind studies/RESULTS.md.

Two sources of trials:
  * in-process: every grid cell of the study (its profile and `--set`s applied) trained with `nas.trial.run_trial`
    on the CPU, one torch thread (as a worker with cpus_per_trial 1), each trial's CPU seconds printed;
  * `--db URL`: the finished trials of the study in a database written by `nas run`.

Printed per level: n, mean and seed SD (points of accuracy), the paired difference against the reference on matched
seeds with its 95% t interval, the paired t-test's p, Holm's adjusted p over the non-reference levels, and the
verdict at alpha 0.05 (better / worse / no difference detected). Usage:

    python benchmarks/seed_variance.py studies/cls_token_position.yaml --seeds 0 1 2 3
    python benchmarks/seed_variance.py studies/cls_token_position.yaml --db sqlite:///runs/a.db
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

ALPHA = 0.05


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = np.argsort(pvalues)
    m, adjusted, running = len(pvalues), [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def verdict_table(acc: dict[str, dict[int, float]], reference: str) -> list[dict]:
    """acc: level → seed → accuracy in %; one row per level (the reference first)."""
    ref = acc[reference]
    rows, tests = [], []
    for level, by_seed in acc.items():
        vals = np.array(list(by_seed.values()))
        row = {"level": level, "n": len(vals), "mean": vals.mean(), "sd": vals.std(ddof=1) if len(vals) > 1 else
               float("nan"), "ref": level == reference}
        if level != reference:
            seeds = sorted(set(by_seed) & set(ref))
            d = np.array([by_seed[s] - ref[s] for s in seeds])
            row["n_pairs"] = len(d)
            row["diff"] = d.mean()
            if len(d) > 1 and d.std(ddof=1) > 0:
                half = stats.t.ppf(1 - ALPHA / 2, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d))
                row["diff_ci"] = (d.mean() - half, d.mean() + half)
                row["p"] = float(stats.ttest_rel([by_seed[s] for s in seeds], [ref[s] for s in seeds]).pvalue)
            else:
                row["diff_ci"], row["p"] = (float("nan"), float("nan")), 1.0
            tests.append(row)
        rows.append(row)
    for row, p_adj in zip(tests, holm([r["p"] for r in tests])):
        row["p_holm"] = p_adj
        row["verdict"] = ("better" if row["diff"] > 0 else "worse") if p_adj < ALPHA else "no difference detected"
    return rows


def print_table(rows: list[dict], reference: str) -> None:
    print(f"{'level':<24}{'n':>3}{'mean %':>9}{'SD':>6}{'Δ vs ' + reference:>14}{'95% CI of Δ':>18}"
          f"{'p':>9}{'p Holm':>9}  verdict")
    for r in rows:
        if r["ref"]:
            print(f"{r['level']:<24}{r['n']:>3}{r['mean']:>9.1f}{r['sd']:>6.1f}{'(reference)':>14}")
            continue
        lo, hi = r["diff_ci"]
        print(f"{r['level']:<24}{r['n']:>3}{r['mean']:>9.1f}{r['sd']:>6.1f}{r['diff']:>+14.1f}"
              f"{f'[{lo:+.1f}, {hi:+.1f}]':>18}{r['p']:>9.4f}{r['p_holm']:>9.4f}  {r['verdict']}")


def from_db(study_path: str, url: str, profile: str | None) -> tuple[dict, str]:
    from nas.config import load_study
    from nas.store import Store

    study = load_study(study_path, profile=profile).study
    (factor,) = study.factors
    acc: dict[str, dict[int, float]] = {lv: {} for lv in study.level_names(factor)}
    for t in Store(url, read_only=True).trials(study.name, states=("complete",)):
        acc[t.levels[factor]][t.seed] = 100 * t.val_acc
    return {k: v for k, v in acc.items() if v}, study.reference_levels[factor]


def in_process(study_path: str, seeds: list[int], profile: str | None, sets: list[str]) -> tuple[dict, str]:
    import torch

    from nas.config import load_study
    from nas.data import make_dataset
    from nas.execute import plan_study
    from nas.trial import run_trial

    torch.set_num_threads(1)
    plan = plan_study(load_study(study_path, profile=profile, sets=[*sets, f"seeds={seeds}"]))
    st = plan.study
    (factor,) = st.factors
    acc: dict[str, dict[int, float]] = {lv: {} for lv in st.level_names(factor)}
    cpu_total = 0.0
    for cell in sorted(plan.cells, key=lambda c: c.seed):
        d = st.data
        data = make_dataset(d.name, seed=cell.seed, n_train=d.n_train, n_test=d.n_test, img_size=d.img_size,
                            **d.knobs)
        t_cpu, t_wall = time.process_time(), time.perf_counter()
        r = run_trial(cell.spec, data, epochs=st.train.epochs, batch_size=st.train.batch_size, lr=st.train.lr,
                      weight_decay=st.train.weight_decay, warmup_epochs=st.train.warmup_epochs, seed=cell.seed,
                      measure={"skip": True})
        cpu = time.process_time() - t_cpu
        cpu_total += cpu
        level = cell.levels[factor]
        acc[level][cell.seed] = 100 * r.val_acc
        curve = " ".join(f"{100 * m['val_acc']:.0f}" for m in r.metrics)
        print(f"  {level:<22} seed {cell.seed:>3}: {100 * r.val_acc:5.1f}%  cpu {cpu:5.1f} s  wall "
              f"{time.perf_counter() - t_wall:5.1f} s  load {os.getloadavg()[0]:.1f}  curve {curve}", flush=True)
    print(f"  {len(plan.cells)} trials, {cpu_total:.0f} CPU-seconds ({cpu_total / len(plan.cells):.1f} per trial)")
    return acc, st.reference_levels[factor]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--seeds", type=int, nargs="+", help="train these seeds in-process (default: the study's)")
    ap.add_argument("--db", help="read finished trials from this database instead of training")
    ap.add_argument("--profile")
    ap.add_argument("--set", action="append", default=[], dest="sets")
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if args.db:
        acc, ref = from_db(args.study, args.db, args.profile)
    else:
        from nas.config import load_study

        seeds = args.seeds or list(load_study(args.study, profile=args.profile, sets=args.sets).study.seeds)
        acc, ref = in_process(args.study, seeds, args.profile, args.sets)
    print_table(verdict_table(acc, ref), ref)


if __name__ == "__main__":
    main()
