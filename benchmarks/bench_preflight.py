"""The pre-flight `nas run` waits on before its driver starts: the timed pre-flight (`--dry-run`'s CPU estimate, and
what `nas run` ran before session 11) against the untimed check `nas run` runs now, same specs, same run.

    python benchmarks/bench_preflight.py      # the GPU study bench's 5 specs (Vim width 192, depth 12, 64²)
"""

from __future__ import annotations

import pathlib
import platform
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETS = ["factors={readout: [head, middle, tail, double, mean]}",
        "fixed={route: bi, dims: [192], depths: [12], mixer.params.d_state: 16, tokenizer.params.patch_size: 8}",
        "seeds=[0,1]", "data={name: shapes, n_train: 8192, n_test: 5000, img_size: 64, knobs: {clutter: 0.3}}",
        "train={epochs: 3, batch_size: 256, lr: 1.0e-3, weight_decay: 0.05, warmup_epochs: 0.5, device: cuda}",
        "execution={cpus_per_trial: 2, gpus_per_trial: 0.25, gpu_memory_gb: 16, retries: 1}"]


def main() -> None:
    import os

    import torch

    from nas.config import load_study
    from nas.plan import plan_study

    os.chdir(ROOT)
    sf = load_study("cls_token_position", sets=SETS)
    plan_study(sf, timed=False)  # warm-up: imports, first allocations
    rows = []
    for label, timed in (("timed pre-flight (before; --dry-run)", True), ("untimed check (nas run now)", False)):
        t = time.perf_counter()
        plan = plan_study(sf, timed=timed)
        rows.append((label, len(plan.preflight), time.perf_counter() - t))
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| pre-flight | specs | seconds | speed-up over the timed pre-flight |")
    print("|---|---|---|---|")
    base = rows[0][2]
    for label, n, s in rows:
        print(f"| {label} | {n} | {s:.1f} | {base / s:.2f}× |")


if __name__ == "__main__":
    main()
