"""Is a study's task at a useful difficulty before its seeds are spent? One trial of the reference level per candidate
task, on a pilot seed outside the study's own seeds, all candidates at once (one process each, e.g. on one GPU).

    python benchmarks/pilot_difficulty.py STUDY --profile h200 \\
        --candidate "scale0.5:data.knobs.object_scale=0.5" --candidate "scale0.7:data.knobs.object_scale=0.7"

Why: the session-5 GPU run of cls_token_position and vim_bidirectional put every level at 99.2-99.9 %, where no
1-point effect can show. Choosing the task by the *reference level's* accuracy on a seed the study never uses keeps
the choice blind to the effect under study (the other levels are not run), so it cannot steer the verdict. The rule
the caller states before the run (studies/RESULTS.md): the hardest candidate whose pilot accuracy lies in [LOW, HIGH],
else the candidate nearest that range.
Prints one JSON line per candidate and, last, the chosen one (`--low`, `--high`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PILOT_SEED = 1000  # outside every study's seed list


def _sets(spec: str) -> tuple[str, list[str]]:
    label, _, body = spec.partition(":")
    return label, [s for s in body.split(",") if s]


def one(study: str, profile: str | None, sets: list[str], seed: int) -> dict:
    """Train the reference level's spec for one seed as the study's workers would; its final val_acc and wall."""
    from nas.config import load_study
    from nas.data import make_dataset
    from nas.plan import plan_study
    from nas.trial import run_trial
    from nas.worker import choose_device

    sf = load_study(study, profile=profile, sets=sets)
    if seed in set(sf.study.initial_seeds) | set(getattr(sf.study, "max_seeds", ()) or ()):
        raise SystemExit(f"pilot seed {seed} is one of the study's own seeds: choose another (--seed)")
    plan = plan_study(sf)
    ref = plan.study.reference_levels
    arm = next(a for a in plan.arms if a.levels == ref)
    st = plan.study
    dev = choose_device(st.train, st.execution)
    d, tr = st.data, st.train
    t = time.perf_counter()
    data = make_dataset(d.name, seed=seed, n_train=d.n_train, n_test=d.n_test, img_size=d.img_size, device=dev,
                        **d.knobs)
    res = run_trial(arm.spec, data, epochs=tr.epochs, batch_size=tr.batch_size, lr=tr.lr,
                    weight_decay=tr.weight_decay, warmup_epochs=tr.warmup_epochs, seed=seed, device=dev,
                    amp=tr.amp, kernel_backend=tr.kernel_backend, measure={"skip": True})
    return {"reference": ref, "val_acc": 100 * res.metrics[-1]["val_acc"],
            "curve": [round(100 * m["val_acc"], 1) for m in res.metrics], "seconds": time.perf_counter() - t,
            "knobs": d.knobs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--candidate", action="append", required=True,
                    help="LABEL:key=value[,key=value...] (--set overrides), hardest first")
    ap.add_argument("--seed", type=int, default=PILOT_SEED)
    ap.add_argument("--low", type=float, default=70.0)
    ap.add_argument("--high", type=float, default=95.0)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one candidate here
    a = ap.parse_args()
    if a.one is not None:
        print(json.dumps(one(a.study, a.profile, _sets(a.one)[1], a.seed)), flush=True)
        return
    procs = {}
    for cand in a.candidate:
        cmd = [sys.executable, __file__, a.study, "--seed", str(a.seed), "--one", cand, "--candidate", cand]
        if a.profile:
            cmd += ["--profile", a.profile]
        procs[_sets(cand)[0]] = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    results = {}
    for label, p in procs.items():
        out, err = p.communicate()
        if p.returncode != 0:
            print(json.dumps({"study": a.study, "candidate": label, "error": err.strip()[-800:]}), flush=True)
            continue
        results[label] = json.loads(out.strip().splitlines()[-1])
        print(json.dumps({"study": a.study, "candidate": label, **results[label]}), flush=True)
    order = [lb for lb in (_sets(c)[0] for c in a.candidate) if lb in results]
    fits = [lb for lb in order if a.low <= results[lb]["val_acc"] <= a.high]
    off = lambda lb: max(a.low - results[lb]["val_acc"], results[lb]["val_acc"] - a.high)  # noqa: E731
    chosen = fits[0] if fits else min(order, key=off, default=None)  # none inside: the nearest to the range
    print(json.dumps({"study": a.study, "chosen": chosen, "inside_range": bool(fits), "rule":
                      f"hardest candidate with the reference level's pilot accuracy in [{a.low}, {a.high}] %, "
                      "else the one nearest that range"}))


if __name__ == "__main__":
    main()
