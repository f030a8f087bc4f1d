"""The driver's loop without Ray: plan → queue → rounds, run by a stand-in runner that drives our real Tune searcher
(`StudySearcher`: Optuna's ask/tell, the cell resolved in the driver) and writes the store as the callback does, with
made-up accuracies instead of training. Checks rounds of adaptive seeding with a plugged-in policy, that a resumed
study repeats no (spec, seed), that a search's invalid points are failed without training, and that a dry run
never imports Ray."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from blocks import ArchSpec
from nas.config import load_study
from nas.driver import Round, RunContext, run_study
from nas.plan import plan_study
from nas.records import TrialOutcome, TrialStart, TrialState
from nas.rounds import arm_results, next_round
from nas.store import Store

ROOT = Path(__file__).resolve().parents[1]
ADAPTIVE = """
name: {name}
search_space: tiny_plain
fixed: {{dims: [8], depths: [1], readout: mean}}
factors:
  route: [uni, bi]
seeds: {{min: 2, max: 4, target_halfwidth: 1.0}}
data: {{name: digits, n_train: 32, n_test: 32, img_size: 16}}
train: {{epochs: 1, batch_size: 16}}
measure: {{skip: true}}
"""
SEARCH = """
name: {name}
search_space: tiny_plain
fixed: {{mixer: {{name: attention, params: {{head_dim: 8, causal: true}}}}, route: uni, dims: [16], depths: [1]}}
search: {{sampler: random, n_trials: 6, seed: 0, space: {{readout: [head, mean]}}}}
seeds: [0]
data: {{name: digits, n_train: 32, n_test: 32, img_size: 16}}
train: {{epochs: 1, batch_size: 16}}
measure: {{skip: true}}
"""

pytestmark = pytest.mark.usefixtures("at_repo_root", "one_torch_thread")


class FakeRunner:
    """Runs a round as Tune would, minus Ray and training: the searcher's configs in, the store written as our
    callback writes it, Optuna told through the searcher. Accuracy: 0.5 + 0.01 · seed (+0.1 for route bi)."""

    def __init__(self, accuracy=None) -> None:  # noqa: ANN001 - (levels, seed) → accuracy
        self.rounds: list[list[tuple[str, int]]] = []
        self.accuracy = accuracy or (lambda levels, seed: 0.5 + 0.01 * seed + 0.1 * (levels.get("route") == "bi"))

    def run_round(self, ctx: RunContext, rnd: Round) -> bool:
        from ray.tune.search import Searcher

        from nas.tune_adapter import TASK, StudySearcher
        from nas.worker import FINAL

        searcher, ran = StudySearcher(ctx, rnd), []
        while (config := searcher.suggest(f"t{len(ran)}")) != Searcher.FINISHED:
            start = TrialStart.from_config(config[TASK])
            assert ArchSpec.from_json(start.spec_json).id == start.spec_id  # resolved in the driver, travels as JSON
            assert start.spec_id in start.key
            assert all(config[k] == v for k, v in start.params.items())  # Optuna's parameters name the trial
            row = ctx.store.trial_started(ctx.plan.study.name, ctx.run_id, start)
            acc = self.accuracy(start.levels, start.seed)
            ctx.store.trial_finished(row, TrialState.COMPLETE, TrialOutcome(val_acc=acc, values={"val_acc": acc}))
            searcher.on_trial_complete(f"t{len(ran)}", {FINAL: True, "val_acc": acc})
            ctx.on_event("complete", {})
            ran.append((start.levels.get("route", ""), start.seed))
        self.rounds.append(ran)
        return True

    def close(self) -> None:
        pass


def _plan(tmp_path: Path, text: str, name: str):  # noqa: ANN202
    path = tmp_path / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.format(name=name))
    return plan_study(load_study(path, db_url=f"sqlite:///{tmp_path / 'nas.db'}"))


def _bi_to_four(study, results):  # noqa: ANN001, ANN202 - a stand-in policy: level bi needs 4 seeds, uni is settled
    return {r.spec_id: [0, 1, 2, 3] for r in results if r.levels["route"] == "bi"}


def test_adaptive_study_runs_min_seeds_then_the_rounds_a_policy_asks_for(tmp_path):
    plan = _plan(tmp_path, ADAPTIVE, "adaptive")
    assert plan.study.initial_seeds == [0, 1] and plan.study.max_seeds == [0, 1, 2, 3]
    assert [(c.levels["route"], c.seed) for c in plan.cells] == [("uni", 0), ("bi", 0), ("uni", 1), ("bi", 1)]
    store = Store(plan.study.storage.url)
    queued: list[tuple[int, int, int, int]] = []
    runner = FakeRunner()
    out = run_study(plan, store, runner, policy=_bi_to_four, on_queued=lambda *a: queued.append(a))
    assert runner.rounds == [[("uni", 0), ("bi", 0), ("uni", 1), ("bi", 1)], [("bi", 2), ("bi", 3)]]
    assert (out.rounds, out.queued, out.completed, out.failed) == (2, 6, 6, 0)  # then the policy asks for nothing new
    assert [q[:2] for q in queued] == [(1, 4), (2, 2)]
    keys = [t.key for t in store.trials("adaptive")]
    assert len(keys) == 6 and len(set(keys)) == 6
    results = {r.levels["route"]: r for r in arm_results(plan, store.trials("adaptive"))}
    assert results["bi"].values == pytest.approx({0: 0.60, 1: 0.61, 2: 0.62, 3: 0.63})  # as stored
    # resumed: nothing is run again, whatever the policy asks for
    again = FakeRunner()
    out = run_study(plan, store, again, policy=_bi_to_four)
    assert again.rounds == [] and out.queued == 0 and out.skipped_done == 4
    assert len(store.trials("adaptive")) == 6
    more = next_round(plan, store.trials("adaptive"), lambda study, results: {r.spec_id: range(99) for r in results})
    assert [(c.levels["route"], c.seed) for c in more] == [("uni", 2), ("uni", 3)]  # capped at seeds.max
    ot = optuna.load_study(study_name="adaptive", storage=plan.study.storage.url)
    assert sorted(t.state.name for t in ot.trials) == ["COMPLETE"] * 6


def test_the_default_policy_adds_seeds_where_the_interval_holds_zero_and_resumes_without_repeats(tmp_path):
    from nas.adaptive import plan_seeds

    text = ADAPTIVE.replace("max: 4", "max: 6").replace("n_test: 32", "n_test: 512")
    plan = _plan(tmp_path, text, "adaptive_default")
    # bi is 0.4 points better on average with a ±3-point seed-to-seed swing: undecided at 2 seeds
    swing = [3.0, -3.0, 2.0, -2.5, 1.0, -1.0]
    runner = FakeRunner(lambda levels, seed: 0.80 + (0.004 + swing[seed] / 100 if levels["route"] == "bi" else 0))
    store = Store(plan.study.storage.url)
    out = run_study(plan, store, runner)
    assert out.rounds >= 2 and len(runner.rounds[0]) == 4 and runner.rounds[1]  # min seeds, then more
    cells = [(t.levels["route"], t.seed) for t in store.trials("adaptive_default")]
    assert len(cells) == len(set(cells)) and all(seed < 6 for _, seed in cells)
    results = {lv: {s: 0.80 + (0.004 + swing[s] / 100 if lv == "bi" else 0) for r, s in cells if r == lv}
               for lv in ("uni", "bi")}
    assert plan_seeds(results, "uni", {"min": 2, "max": 6, "target_halfwidth": 1.0}, n_test=512).cells == []
    again = FakeRunner(runner.accuracy)  # resumed: the policy replays the same looks and asks for nothing new
    out = run_study(plan, store, again)
    assert again.rounds == [] and len(store.trials("adaptive_default")) == len(cells)


def test_a_study_whose_data_or_training_changed_is_not_resumed_into_the_old_trials(tmp_path):
    from nas.errors import StudyConfigError

    plan = _plan(tmp_path, ADAPTIVE, "changed")
    store = Store(plan.study.storage.url)
    run_study(plan, store, FakeRunner(), policy=None)
    changed = _plan(tmp_path, ADAPTIVE.replace("epochs: 1", "epochs: 2").replace("n_test: 32", "n_test: 16"),
                    "changed")
    again = FakeRunner()
    with pytest.raises(StudyConfigError, match=r"train.epochs: 1 -> 2.*--db") as err:
        run_study(changed, store, again, policy=None)
    assert "data.n_test: 32 -> 16" in str(err.value) and err.value.key in ("data.n_test", "train.epochs")
    assert again.rounds == [] and len(store.trials("changed")) == 4  # nothing run, nothing written
    assert store.study("changed").config["train"]["epochs"] == 1
    same = _plan(tmp_path, ADAPTIVE.replace("max: 4", "max: 3"), "changed")  # seeds may change: not in a result
    assert run_study(same, store, FakeRunner(), policy=None).queued == 0


PLAIN = ADAPTIVE.replace("{{min: 2, max: 4, target_halfwidth: 1.0}}", "[0, 1]")


def test_seeds_added_to_a_finished_study_run_only_the_new_seeds(tmp_path):
    plan = _plan(tmp_path, PLAIN, "more_seeds")
    store = Store(plan.study.storage.url)
    run_study(plan, store, FakeRunner(), policy=None)
    more = FakeRunner()
    out = run_study(_plan(tmp_path, PLAIN.replace("[0, 1]", "[0, 1, 2, 5]"), "more_seeds"), store, more, policy=None)
    assert sorted(more.rounds[0]) == [("bi", 2), ("bi", 5), ("uni", 2), ("uni", 5)] and out.skipped_done == 4
    ot = optuna.load_study(study_name="more_seeds", storage=plan.study.storage.url)
    assert sorted(t.params["seed"] for t in ot.trials) == [0, 0, 1, 1, 2, 2, 5, 5]


def test_a_new_level_or_seeds_beyond_an_old_categorical_list_are_refused_before_anything_runs(tmp_path, monkeypatch):
    from optuna.distributions import CategoricalDistribution

    from nas import driver, space, tune_adapter
    from nas.errors import StudyConfigError

    def categorical_seeds(study, existing=None):  # noqa: ANN001, ANN202 - how studies were first run before
        d = space.grid_distributions(study, existing)
        d["seed"] = CategoricalDistribution(study.max_seeds)
        return d

    plan = _plan(tmp_path, PLAIN, "old_db")
    store = Store(plan.study.storage.url)
    with monkeypatch.context() as m:
        m.setattr(tune_adapter, "grid_distributions", categorical_seeds)
        m.setattr(driver, "grid_distributions", categorical_seeds)
        run_study(plan, store, FakeRunner(), policy=None)
    runner = FakeRunner()
    with pytest.raises(StudyConfigError, match=r"fixed its seeds as \[0, 1\].*seeds \[2\] cannot be added"):
        run_study(_plan(tmp_path, PLAIN.replace("[0, 1]", "[0, 1, 2]"), "old_db"), store, runner, policy=None)
    with pytest.raises(StudyConfigError, match=r"factor 'route' has levels .*\['cross4'\]") as err:
        run_study(_plan(tmp_path, PLAIN.replace("[uni, bi]", "[uni, bi, cross4]"), "old_db"), store, runner,
                  policy=None)
    assert err.value.key == "factors.route" and runner.rounds == [] and len(store.trials("old_db")) == 4
    fewer = FakeRunner()  # a subset of the stored seeds and levels still runs (nothing left to do here)
    out = run_study(_plan(tmp_path, PLAIN.replace("[uni, bi]", "[uni]").replace("[0, 1]", "[1]"), "old_db"), store,
                    fewer, policy=None)
    assert fewer.rounds == [] and out.skipped_done == 1


def test_without_a_policy_an_adaptive_study_stops_after_its_min_seeds(tmp_path):
    plan = _plan(tmp_path, ADAPTIVE, "no_policy")
    runner = FakeRunner()
    out = run_study(plan, Store(plan.study.storage.url), runner, policy=None)
    assert [len(r) for r in runner.rounds] == [4] and out.rounds == 1


def test_a_plain_list_of_seeds_has_one_round(tmp_path):
    plan = _plan(tmp_path, ADAPTIVE.replace("{{min: 2, max: 4, target_halfwidth: 1.0}}", "[0, 1]"), "plain")
    runner = FakeRunner()
    out = run_study(plan, Store(plan.study.storage.url), runner, policy=_bi_to_four)
    assert [len(r) for r in runner.rounds] == [4] and out.rounds == 1
    assert next_round(plan, Store(plan.study.storage.url).trials("plain"), _bi_to_four) == []


def test_invalid_sampled_points_are_failed_without_training(tmp_path):
    plan = _plan(tmp_path, SEARCH, "search_invalid")
    store = Store(plan.study.storage.url)
    runner = FakeRunner()
    out = run_study(plan, store, runner)
    trials = store.trials("search_invalid")
    invalid = [t for t in trials if "/invalid/" in t.key]
    trained = [t for t in trials if t.state is TrialState.COMPLETE]
    assert len(trials) == 6 and invalid and trained, [(t.key, t.state) for t in trials]
    assert all(t.state is TrialState.FAILED and "only ever sees itself" in t.error for t in invalid)
    assert all(t.levels["readout"] == "head" for t in invalid) and {t.levels["readout"] for t in trained} == {"mean"}
    assert sum(len(r) for r in runner.rounds) == len(trained)  # the invalid ones never reached a worker
    assert (out.completed, out.failed) == (len(trained), len(invalid))
    ot = optuna.load_study(study_name="search_invalid", storage=plan.study.storage.url)
    assert sorted(t.state.name for t in ot.trials) == sorted(["FAIL"] * len(invalid) + ["COMPLETE"] * len(trained))


def test_dry_run_never_imports_ray_and_announces_adaptive_seeding(tmp_path):
    study = tmp_path / "studies" / "dry.yaml"
    study.parent.mkdir(parents=True)
    study.write_text(ADAPTIVE.format(name="dry"))
    db = tmp_path / "nas.db"
    code = ("import sys\nfrom typer.testing import CliRunner\nfrom nas.cli import app\n"
            f"r = CliRunner().invoke(app, ['run', {str(study)!r}, '--dry-run', '--db', 'sqlite:///{db}'])\n"
            "print(r.output)\nprint('exit', r.exit_code)\n"
            "print('ray imported:', sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.'))[:3])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"COLUMNS": "200", **dict(__import__("os").environ)})
    out = proc.stdout
    assert "exit 0" in out, out + proc.stderr
    assert "ray imported: []" in out, out
    assert "adaptive seeding: 2 seeds now, up to 4" in " ".join(out.split()), out
    assert not db.exists()
