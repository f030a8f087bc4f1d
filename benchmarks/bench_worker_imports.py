"""Seconds a Ray worker spends importing before its first trial step, this tree against an earlier one, same run.

    python benchmarks/bench_worker_imports.py [--rev 971f535] [--runs 5] [--preset test_vim]

Each run is a fresh interpreter that does what a study's worker does before training: `import ray.tune` (Tune's actor
has it), import the module that defines the trainable (`nas.trainable`, or `nas.execute` in trees before session 14),
then the trial code, one backbone built from a spec and an AdamW over it. The earlier tree is unpacked from git
(`git archive REV`) into a temporary folder. Prints the median of `--runs` per tree, the ratio, and the heavy packages
each tree loaded. Session 14 (benchmarks/RESULTS.md) measured why this matters: ~19 s per worker on the GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import ray.tune
t1 = time.perf_counter()
import importlib, os
module = "nas.trainable" if os.path.exists("nas/trainable.py") else "nas.execute"
importlib.import_module(module)
t2 = time.perf_counter()
import torch, nas.trial, nas.data, blocks.model_file
from blocks import ArchSpec, build_backbone, get_preset
model = build_backbone(get_preset(sys.argv[1]))
torch.optim.AdamW(model.parameters())
t3 = time.perf_counter()
heavy = sorted(m for m in ("optuna", "sqlalchemy", "timm", "torchvision", "nas.driver", "nas.plan", "nas.store")
               if m in sys.modules)
print(json.dumps({"total": t3 - t0, "ray_tune": t1 - t0, "trainable": t2 - t1, "rest": t3 - t2, "module": module,
                  "heavy": heavy}))
"""


def measure(tree: Path, preset: str, runs: int) -> list[dict]:
    # the tree first, then whatever else the caller's path holds (the GPU machine's device bundle), minus this tree
    kept = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
            if p and Path(p).resolve() != ROOT]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), *kept])}
    out = []
    for _ in range(runs):
        res = subprocess.run([sys.executable, "-c", CHILD, preset], cwd=tree, env=env, capture_output=True, text=True,
                             timeout=300)
        if res.returncode != 0:
            raise SystemExit(f"the import run failed in {tree}:\n{res.stderr[-2000:]}")
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rev", default="971f535", help="the earlier tree (default: session 13's last commit)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--preset", default="test_vim")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp)
        archive = subprocess.run(["git", "archive", args.rev], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        rows = {}
        for label, tree in ((args.rev, old), ("this tree", ROOT)):  # interleaving would not help: each run is fresh
            rows[label] = measure(tree, args.preset, args.runs)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs; median of {args.runs} fresh interpreters; "
          f"preset {args.preset}")
    print("| tree | trainable's module | total s | ray.tune s | trainable's module s | trial code, model, AdamW s "
          "| heavy packages loaded |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for label, runs in rows.items():
        m = {k: statistics.median(r[k] for r in runs) for k in ("total", "ray_tune", "trainable", "rest")}
        med[label] = m["total"]
        print(f"| {label} | {runs[0]['module']} | {m['total']:.2f} | {m['ray_tune']:.2f} | {m['trainable']:.2f} | "
              f"{m['rest']:.2f} | {', '.join(runs[0]['heavy']) or '-'} |")
    print(f"\n{args.rev} / this tree (total): {med[args.rev] / med['this tree']:.2f}x")


if __name__ == "__main__":
    main()
