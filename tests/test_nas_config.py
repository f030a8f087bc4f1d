"""Study files → cells, without Ray: profiles and --set merge, grid expansion with idempotent keys, named variants,
list-index overrides, search distributions, and the ablation summary's numbers."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from nas.config import load_study, parse_set
from nas.errors import StudyConfigError
from nas.space import (apply_overrides, cell_from_params, expand_grid, grid_distributions, load_search_space,
                       search_distributions)
from nas.store import TrialView
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
    for c in cells:
        assert c.spec.readout == c.levels["readout"] and c.spec.route is not None
        again = cell_from_params(st, space, c.params, img_size=32, num_classes=10)
        assert again.key == c.key and again.spec == c.spec


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
    cell = cell_from_params(st, load_search_space("tiny_plain"), {"readout": "mean", "dims": 48}, img_size=32,
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


def test_resume_keeps_a_trial_optuna_saw_finish_while_our_row_said_running(tmp_path, monkeypatch):
    """The driver died after Tune told Optuna "complete" but before our callback wrote the row: the cell is done."""
    import optuna

    from nas.config import load_study
    from nas.execute import Plan, _optuna_study, requeue
    from nas.store import Store

    monkeypatch.chdir(ROOT)
    sf = load_study(DEFAULT, sets=["seeds=[0]", "factors.readout=[head, middle]"])
    space = load_search_space(sf.study.search_space)
    plan = Plan(sf, space, 10, expand_grid(sf.study, space, img_size=32, num_classes=10))
    store = Store(f"sqlite:///{tmp_path / 'nas.db'}")
    store.upsert_study(name=sf.study.name, question="", kind="grid", study_yaml="", config={}, search_space_yaml="",
                       n_cells=2)
    ot = _optuna_study(store, sf.study)
    head, middle = plan.cells
    ot.enqueue_trial(head.params, user_attrs={"nas:key": head.key})
    trial = ot.ask(fixed_distributions=grid_distributions(sf.study))
    row = store.trial_started(study_name=sf.study.name, run_id=None, optuna_trial_id=trial._trial_id,
                              number=trial.number, key=head.key, levels=head.levels, params=head.params,
                              spec_id=head.spec.id, spec_json="", seed=0, budget={})
    ot.tell(trial, 0.75)  # Optuna knows it finished; our row still says running
    queued, stale, skipped = requeue(store, plan, ot, retry_failed=False)
    assert (queued, stale, skipped) == (1, 0, 1)  # only `middle` is queued; `head` is kept, not re-run
    (t,) = [t for t in store.trials(sf.study.name) if t.id == row]
    assert t.state == "complete" and t.val_acc == 0.75
    waiting = ot.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [w.user_attrs["nas:key"] for w in waiting] == [middle.key]
