"""Adaptive seeding end to end: a tiny CPU study with `seeds: {min, max, target_halfwidth}` through the real `nas run`
(local Ray, Optuna, the store), its driver SIGKILLed once while a later round runs, then the same command again.
The resumed study must finish with no (spec, seed) run twice, nothing left RUNNING in Optuna, more than the first
round's seeds, and exactly the cells the policy asks for given the final results (replaying it asks for nothing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nas.adaptive import plan_seeds

ROOT = Path(__file__).resolve().parents[1]
NAME = "adaptive_drill"
SETTINGS = {"min": 2, "max": 6, "target_halfwidth": 0.01}  # a target no interval reaches: later rounds must run
STUDY = f"""
name: {NAME}
search_space: tiny_plain
fixed: {{dims: [16], depths: [1], readout: mean}}
factors:
  route: [uni, bi]
reference: {{route: uni}}
seeds: {{min: {SETTINGS['min']}, max: {SETTINGS['max']}, target_halfwidth: {SETTINGS['target_halfwidth']}}}
data: {{name: digits, n_train: 128, n_test: 64, img_size: 16}}
train: {{epochs: 1, batch_size: 32, lr: 3.0e-3}}
execution: {{cpus_per_trial: 1, retries: 0, num_cpus: 2}}
measure: {{skip: true}}
"""

pytestmark = pytest.mark.slow


def _complete(url: str) -> list:  # noqa: ANN401
    from nas.records import TrialState
    from nas.store import Store

    try:
        return [t for t in Store(url, read_only=True).trials(NAME) if t.state == TrialState.COMPLETE]
    except Exception:  # noqa: BLE001 - no database or tables yet
        return []


def test_adaptive_study_survives_a_kill_and_resumes_without_repeats(tmp_path):
    import optuna
    from optuna.trial import TrialState as OT

    study = tmp_path / "studies" / f"{NAME}.yaml"
    study.parent.mkdir(parents=True)
    study.write_text(STUDY)
    url = f"sqlite:///{tmp_path / 'nas.db'}"
    cmd = [sys.executable, "-m", "nas.cli", "run", str(study), "--db", url, "--set",
           f"storage.artifacts={tmp_path / 'artifacts'}", "--set", f"storage.ray_results={tmp_path / 'ray'}"]
    env = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    first_round = 2 * SETTINGS["min"]
    with open(tmp_path / "run1.out", "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    t0 = time.monotonic()
    while proc.poll() is None and len(_complete(url)) <= first_round and time.monotonic() - t0 < 240:
        time.sleep(0.2)
    assert proc.poll() is None, "the driver ended before a later round ran:\n" + (tmp_path / "run1.out").read_text()
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
    proc.wait(timeout=60)
    at_kill = {t.key: t.val_acc for t in _complete(url)}
    assert len(at_kill) > first_round

    final = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=400)
    assert final.returncode == 0, final.stdout + final.stderr
    done = _complete(url)
    cells = [(t.levels["route"], t.seed) for t in done]
    assert len(cells) == len(set(cells)), cells  # no (spec, seed) twice
    assert {t.key: t.val_acc for t in done if t.key in at_kill} == at_kill  # nothing finished was lost or re-run
    assert len(cells) > first_round and all(seed < SETTINGS["max"] for _, seed in cells)
    results = {lv: {s: t.val_acc for t in done for r, s in [(t.levels["route"], t.seed)] if r == lv}
               for lv in ("uni", "bi")}
    assert plan_seeds(results, "uni", SETTINGS, n_test=64).cells == []  # exactly what the policy asks for
    ot = optuna.load_study(study_name=NAME, storage=url)
    assert not [t for t in ot.get_trials(deepcopy=False) if t.state == OT.RUNNING]
