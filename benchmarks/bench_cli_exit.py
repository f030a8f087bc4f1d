"""How long `nas run` takes to give the shell back after its last line, this tree against an earlier one, same run.

    python benchmarks/bench_cli_exit.py [--rev 134c088] [--runs 3]

Each run is a fresh `python -m nas.cli run` of a tiny CPU study (the cls_token study cut to two readouts, one seed,
64 training images, one epoch; its own database and Ray folder in a temporary directory). The command's output is
read line by line as it comes; "after the last line" is the time from the last line (the summary table's last) to
the process's exit, "wall" the whole command. The earlier tree is unpacked from git (`git archive REV`). Prints the
median of `--runs` per tree and the ratios. Session 19 (benchmarks/RESULTS.md) found ~1.7 s there on the GPU machine,
spent in Python's teardown of torch, Ray and Optuna (nas/fast_exit.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ["factors={readout: [head, mean]}", "seeds=[0]", "data.n_train=64", "data.n_test=32", "train.epochs=1"]


def one_run(tree: Path, work: Path) -> tuple[float, float]:
    """(wall s, seconds from the last output line to the exit) of one `nas run` in `tree`."""
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and Path(p).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *kept]), "PYTHONUNBUFFERED": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "COLUMNS": "160"}
    sets = [*SETS, f"storage.ray_results={work / 'ray'}"]
    cmd = [sys.executable, "-m", "nas.cli", "run", "cls_token_position", "--db", f"sqlite:///{work / 'nas.db'}"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    last, lines = t0, []
    assert proc.stdout is not None
    for line in proc.stdout:
        last = time.perf_counter()
        lines.append(line)
    code = proc.wait()
    end = time.perf_counter()
    if code != 0:
        raise SystemExit(f"`nas run` failed in {tree} (exit {code}):\n{''.join(lines[-30:])}")
    return end - t0, end - last


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="134c088", help="the earlier tree (default: session 18's last commit)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    rows: dict[str, list[tuple[float, float]]] = {args.rev: [], "this tree": []}
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "old"
        old.mkdir()
        archive = subprocess.run(["git", "archive", args.rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        for i in range(args.runs):  # alternate the trees: a slow spell of the machine hits both
            for label, tree in ((args.rev, old), ("this tree", ROOT)):
                work = Path(tmp) / f"{label.replace(' ', '_')}-{i}"
                work.mkdir()
                rows[label].append(one_run(tree, work))
                print(f"run {i + 1} {label}: wall {rows[label][-1][0]:.2f} s, after the last line "
                      f"{rows[label][-1][1]:.2f} s", file=sys.stderr, flush=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; median of {args.runs} runs per tree; "
          f"`nas run cls_token_position` with {' '.join(SETS)}")
    print("| tree | wall s | after the last line s |")
    print("|---|---|---|")
    med = {}
    for label, runs in rows.items():
        med[label] = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
        print(f"| {label} | {med[label][0]:.2f} | {med[label][1]:.2f} |")
    old_m, new_m = med[args.rev], med["this tree"]
    print(f"\n{args.rev} / this tree: wall {old_m[0] / new_m[0]:.2f}x, after the last line "
          f"{old_m[1] / max(new_m[1], 1e-3):.2f}x")


if __name__ == "__main__":
    main()
