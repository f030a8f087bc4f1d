"""Where a study's seconds went: each trial's start and end (from the store), its own wall and training seconds, and
how many trials overlapped, so the gap between the driver's count and the trials' GPU work has a name.

    python benchmarks/study_timeline.py runs/study.db [--study NAME]

Columns (seconds from the start of the run the trials belong to, `nas run`'s start): start, end, the trial's `wall_seconds` (build, data, training,
evaluation, cost measurement, as `nas.trial.run_trial` counts them), its `train_seconds` (the epochs: train + eval)
and the outside part (end − start − wall: Ray's actor start, imports, data generation, the model file, reporting).
The summary sets the span (first start → last end) beside the sum of training seconds divided by the trials that
ran at once, which is what the span would be if the only cost were training and the GPU were shared evenly.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def timeline(url: str, study: str | None = None) -> tuple[list[list[object]], dict[str, float]]:
    """(rows, summary) of the finished trials of `study` (the only study in the database when None)."""
    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from nas.database import EpochRow, RunRow, TrialRow, make_engine

    engine = make_engine(url, read_only=True)
    with Session(engine) as s:
        q = select(TrialRow).where(TrialRow.finished_at.is_not(None))
        if study:
            q = q.where(TrialRow.study_name == study)
        trials = sorted(s.scalars(q), key=lambda t: t.started_at)
        if not trials:
            raise SystemExit(f"no finished trials in {url}" + (f" for study {study!r}" if study else ""))
        runs = {r.id: r for r in s.scalars(select(RunRow).where(RunRow.id.in_({t.run_id for t in trials})))}
        epochs = {t.id: [e.seconds or 0.0 for e in s.scalars(select(EpochRow).where(EpochRow.trial_id == t.id)
                                                              .order_by(EpochRow.epoch))] for t in trials}
    t0 = min([r.started_at for r in runs.values()] or [trials[0].started_at])
    rows, spans = [], []
    for t in trials:
        start = (t.started_at - t0).total_seconds()
        end = (t.finished_at - t0).total_seconds()
        wall, train = t.wall_seconds or 0.0, t.train_seconds or 0.0
        spans.append((start, end))
        rows.append([t.number, t.key[:40], t.seed, round(start, 1), round(end, 1), round(wall, 1), round(train, 1),
                     " / ".join(f"{x:.2f}" for x in epochs[t.id]), round(end - start - wall, 1)])
    first, span = min(s for s, _ in spans), max(e for _, e in spans)
    busy = sum(e - s for s, e in spans)
    ends = [r.finished_at for r in runs.values() if r.finished_at]
    summary = {"trials": len(trials), "first_start_s": first, "span_s": span,
               "run_end_s": (max(ends) - t0).total_seconds() if ends else float("nan"),
               "mean_overlap": busy / (span - first) if span > first else 0.0,
               "sum_train_s": sum(t.train_seconds or 0.0 for t in trials),
               "sum_wall_s": sum(t.wall_seconds or 0.0 for t in trials),
               "sum_outside_s": sum(r[-1] for r in rows)}
    return rows, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("db", help="a study database: a path (SQLite) or a SQLAlchemy URL")
    ap.add_argument("--study", default=None)
    args = ap.parse_args()
    url = args.db if "://" in args.db else f"sqlite:///{pathlib.Path(args.db).resolve()}"
    rows, sm = timeline(url, args.study)
    print("| trial | cell | seed | start s | end s | trial wall s | epochs s | epoch s (train + eval) | outside s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")
    print(f"\n{sm['trials']} trials; the first started {sm['first_start_s']:.1f} s after the run (Ray, the workers' "
          f"start), the last ended at {sm['span_s']:.1f} s, the run at {sm['run_end_s']:.1f} s; on average {sm['mean_overlap']:.2f} trials at once; "
          f"Σ epochs {sm['sum_train_s']:.1f} s, Σ trial wall {sm['sum_wall_s']:.1f} s, Σ outside the trial "
          f"{sm['sum_outside_s']:.1f} s")


if __name__ == "__main__":
    main()
