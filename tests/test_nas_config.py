"""Study files → cells, without Ray: profiles and --set merge, grid expansion with idempotent keys, named variants,
list-index overrides, search distributions, and the ablation summary's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nas.config import load_study, parse_set
from nas.errors import StudyConfigError
from nas.plan import Plan
from nas.records import TrialView
from nas.space import (apply_overrides, expand_grid, grid_arms, grid_distributions, load_search_space, search_cell,
                       search_distributions)
from nas.summary import ablation_summary

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "studies" / "cls_token_position.yaml"


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "studies" / "s.yaml"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)
    return p


def test_profile_then_sets_then_db_override(monkeypatch):
    monkeypatch.chdir(ROOT)
    sf = load_study(DEFAULT, profile="h200", sets=["train.epochs=2", "seeds=[3, 4]"], db_url="sqlite:////tmp/x.db")
    st = sf.study
    assert st.train.epochs == 2 and st.train.device == "cuda" and st.seeds == [3, 4]
    assert st.execution.gpus_per_trial == 0.0625 and st.storage.url == "sqlite:////tmp/x.db"
    assert st.fixed["dims"] == [128] and st.fixed["route"] == "bi" and sf.profile == "h200"


def test_parse_set_values_are_yaml():
    assert parse_set("train.lr=1e-3") == ("train.lr", 1e-3)
    assert parse_set("seeds=[0,1]") == ("seeds", [0, 1])
    assert parse_set("fixed.route=bi") == ("fixed.route", "bi")
    with pytest.raises(StudyConfigError, match="key=value"):
        parse_set("train.epochs")


def test_grid_cells_have_stable_distinct_keys(monkeypatch):
    monkeypatch.chdir(ROOT)
    st = load_study(DEFAULT).study
    space = load_search_space(st.search_space)
    cells = expand_grid(st, space, img_size=32, num_classes=10)
    n = len(st.level_names("readout")) * len(st.seeds)
    assert n >= 8 and len(cells) == n and len({c.key for c in cells}) == n
    assert [c.key for c in cells] == [c.key for c in expand_grid(st, space, img_size=32, num_classes=10)]
    plan = Plan(load_study(DEFAULT), space, 10, grid_arms(st, space, img_size=32, num_classes=10))
    assert [c.key for c in plan.cells] == [c.key for c in cells]
    for c in cells:
        assert c.spec.readout == c.levels["readout"] and c.spec.route is not None
        again = plan.grid_cell(c.params)  # what the driver does with a trial's Optuna parameters: a look-up
        assert again.key == c.key and again.spec is plan.grid_cell(c.params).spec


def test_variant_factor_and_same_model_levels_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    base = ("name: v\nsearch_space: tiny_plain\nfactors:\n  design:\n    levels:\n      uni: {route: uni, readout: "
            "tail}\n      bi: {route: bi, readout: middle}\n")
    st = load_study(_write(tmp_path, base)).study
    cells = expand_grid(st, load_search_space("tiny_plain"), img_size=32, num_classes=10)
    assert {(c.levels["design"], c.spec.readout) for c in cells} == {("uni", "tail"), ("bi", "middle")}
    # attention is fully visible: the route cannot change the model, so two route levels are the same model
    same = ("name: v\nsearch_space: tiny_plain\nfixed: {mixer: {name: attention, params: {head_dim: 16}}}\n"
            "factors:\n  route: [uni, bi]\n")
    st = load_study(_write(tmp_path, same)).study
    with pytest.raises(StudyConfigError, match="build the same model"):
        expand_grid(st, load_search_space("tiny_plain"), img_size=32, num_classes=10)


def test_factor_level_outside_the_search_space_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    st = load_study(_write(tmp_path, "name: v\nsearch_space: tiny_plain\nfactors: {dims: [[32], [4096]]}\n")).study
    with pytest.raises(StudyConfigError, match="outside") as e:
        expand_grid(st, load_search_space("tiny_plain"), img_size=32, num_classes=10)
    assert e.value.key == "factors.dims"


def test_apply_overrides_lists_and_component_rename():
    base = {"dims": [8, 16], "mixer": {"name": "ssm", "params": {"d_state": 4}}}
    out = apply_overrides(base, {"dims.1": 32, "mixer.name": "attention"})
    assert out == {"dims": [8, 32], "mixer": {"name": "attention", "params": {}}}
    assert base["dims"] == [8, 16]  # not mutated


def test_search_distributions_and_back(tmp_path, monkeypatch):
    import optuna

    monkeypatch.chdir(ROOT)
    text = ("name: s\nsearch_space: tiny_plain\nsearch:\n  sampler: nsga2\n  n_trials: 3\n  space:\n"
            "    readout: [head, mean]\n    dims: {low: 16, high: 48, step: 16}\n"
            "objectives: [{metric: val_acc}, {metric: throughput}]\n")
    st = load_study(_write(tmp_path, text)).study
    d = search_distributions(st)
    assert isinstance(d["dims"], optuna.distributions.IntDistribution) and d["readout"].choices == ("head", "mean")
    cell = search_cell(st, load_search_space("tiny_plain"), {"readout": "mean", "dims": 48}, img_size=32,
                       num_classes=10)
    assert cell.spec.dims == (48,) and cell.spec.readout == "mean" and cell.seed == st.seeds[0]
    assert st.directions == ["maximize", "maximize"]


def _tv(i: int, level: str, seed: int, acc: float | None, state: str = "complete") -> TrialView:
    return TrialView(id=i, number=i, key=f"s/{level}/s{seed}", levels={"readout": level}, seed=seed, state=state,
                     val_acc=acc, values={}, spec_id="", spec_json="", error=None, cost={}, num_params=1,
                     kernel_paths={}, node_id=None, wall_seconds=None, train_seconds=None, budget={}, started_at=None,
                     finished_at=None)


def test_ablation_summary_numbers():
    cfg = {"factors": {"readout": ["head", "middle"]}, "reference": {"readout": "head"},
           "paper": {"values": {"head": 75.2, "middle": 76.1}}}
    trials = [_tv(0, "head", 0, 0.50), _tv(1, "head", 1, 0.60), _tv(2, "middle", 0, 0.70), _tv(3, "middle", 1, 0.90),
              _tv(4, "middle", 2, None, "failed")]
    s = ablation_summary(cfg, trials)
    head, middle = s.rows
    assert head.is_reference and head.n == 2 and math.isclose(head.mean, 0.55)
    assert middle.n == 2 and middle.n_failed == 1 and math.isclose(middle.mean, 0.80)
    assert math.isclose(middle.diff, 0.25)  # (0.2 + 0.3) / 2 on matched seeds
    # paired: differences 0.2 and 0.3 → half width t(1) · std / sqrt(2) = 12.706205 · 0.0707107 / 1.4142136
    assert math.isclose(middle.diff_high - middle.diff, 12.706205 * math.sqrt(0.005) / math.sqrt(2), rel_tol=1e-5)
    assert math.isclose(middle.paper_diff, 0.9, abs_tol=1e-9)


def test_dead_cluster_and_oversized_digits_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from nas.cli import app

    monkeypatch.chdir(ROOT)
    db = tmp_path / "db" / "nas.db"
    out = CliRunner().invoke(app, ["run", str(DEFAULT), "--db", f"sqlite:///{db}", "--address", "127.0.0.1:1"])
    assert out.exit_code == 2 and "no Ray cluster answers" in out.output and "execution.address" in out.output
    out = CliRunner().invoke(app, ["run", str(DEFAULT), "--db", f"sqlite:///{db}", "--set", "data.n_train=1700"])
    assert out.exit_code == 2 and "key 'data'" in out.output, out.output
    assert not db.exists()


def _grid_store(tmp_path: Path, sets: list[str]):  # noqa: ANN202
    from nas.store import Store

    sf = load_study(DEFAULT, sets=sets)
    space = load_search_space(sf.study.search_space)
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    store.upsert_study(name=sf.study.name, question="", kind="grid", study_yaml="", config={}, search_space_yaml="",
                       n_cells=2)
    return sf.study, expand_grid(sf.study, space, img_size=32, num_classes=10), store


def _start(link, cell, number: int):  # noqa: ANN001, ANN202
    from nas.records import TrialStart

    return TrialStart(number=number, optuna_trial_id=link.trial_id(number), key=cell.key, levels=cell.levels,
                      params=cell.params, spec_id=cell.spec.id, spec_json="", seed=cell.seed)


def test_resume_keeps_a_trial_optuna_saw_finish_while_our_row_said_running(tmp_path, monkeypatch):
    """The driver died after Tune told Optuna "complete" but before our callback wrote the row: the cell is done."""
    import optuna

    from nas.queue import KEY_ATTR, enqueue_cells, open_optuna, take_over

    monkeypatch.chdir(ROOT)
    study, cells, store = _grid_store(tmp_path, ["seeds=[0]", "factors.readout=[head, middle]"])
    link = open_optuna(store, study)
    head, middle = cells
    link.study.enqueue_trial(head.params, user_attrs={KEY_ATTR: head.key})
    trial = link.study.ask(fixed_distributions=grid_distributions(study))
    row = store.trial_started(study.name, None, _start(link, head, trial.number))
    link.study.tell(trial, 0.75)  # Optuna knows it finished; our row still says running
    took = take_over(store, link, study, None)
    queued = enqueue_cells(store, link, study, cells, retry_failed=False)
    assert (took.stale, took.kept, queued.to_run, queued.skipped) == (0, 1, 1, 1)  # only `middle` is queued
    (t,) = [t for t in store.trials(study.name) if t.id == row]
    assert t.state == "complete" and t.val_acc == 0.75
    waiting = link.study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [w.user_attrs[KEY_ATTR] for w in waiting] == [middle.key]


def test_take_over_fails_what_a_dead_driver_left_running(tmp_path, monkeypatch):
    """Two Optuna trials left RUNNING: one with our row (→ stale), one the driver died before writing (→ a stale row
    is written now). Both are failed in Optuna through its public `tell`; both cells are queued again."""
    import optuna

    from nas.queue import KEY_ATTR, enqueue_cells, open_optuna, take_over
    from nas.store import STALE_ERROR

    monkeypatch.chdir(ROOT)
    study, cells, store = _grid_store(tmp_path, ["seeds=[0]", "factors.readout=[head, middle]"])
    link = open_optuna(store, study)
    for c in cells:
        link.study.enqueue_trial(c.params, user_attrs={KEY_ATTR: c.key})
    first = link.study.ask(fixed_distributions=grid_distributions(study))
    link.study.ask(fixed_distributions=grid_distributions(study))  # asked, but no row was ever written
    store.trial_started(study.name, None, _start(link, cells[0], first.number))
    took = take_over(store, link, study, None)
    assert (took.stale, took.kept) == (2, 0)
    ot = {t.number: t.state for t in link.study.get_trials()}
    assert list(ot.values()) == [optuna.trial.TrialState.FAIL] * 2
    rows = store.trials(study.name)
    assert sorted(t.number for t in rows) == [0, 1] and {t.state for t in rows} == {"stale"}
    assert all(t.error == STALE_ERROR for t in rows) and {t.key for t in rows} == {c.key for c in cells}
    assert enqueue_cells(store, link, study, cells, retry_failed=False).to_run == 2
    assert take_over(store, link, study, None).stale == 0  # idempotent
