"""Crash drill figures: the driver of a 12-trial study is SIGKILLed at 10 moments from a fixed-seed RNG (a delay
after start, after N trials finished in the run, while a trial runs with E epochs reported) and restarted each time;
a last run finishes the study. Prints each kill (when, trials complete and running then, orphan processes left by the
dead driver) and the totals: finished trials lost, repeated (ours and Optuna's), stale trials re-queued, trials left
RUNNING in Optuna, broken per-epoch curves. The drill itself is tests/test_crash_drills.py's `run_drill`. Usage:

    python benchmarks/drill_crash.py [--seed 20261123] [--kills 10] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from test_crash_drills import DRILL_SEED, N_CELLS, N_KILLS, drill_moments, run_drill  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=DRILL_SEED)
    ap.add_argument("--kills", type=int, default=N_KILLS)
    ap.add_argument("--keep", type=Path, default=None, help="run in this folder and keep the database")
    args = ap.parse_args()
    moments = drill_moments(args.seed, args.kills)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, python {platform.python_version()}; moments (seed "
          f"{args.seed}): " + "; ".join(map(str, moments)), flush=True)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = run_drill(args.keep, moments, log=lambda m: print(m, flush=True))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            result = run_drill(Path(tmp), moments, log=lambda m: print(m, flush=True))
    ok = (result.lost == result.repeated == result.repeated_in_optuna == result.left_running_in_optuna ==
          result.broken_curves == result.stale_rows_unmarked == 0 and result.complete == N_CELLS)
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
