"""Every shipped study file loads, validates and plans (CPU pre-flight, no training), with its h200 profile too.

Paths are resolved from the repository root (the platform looks search spaces up in ./search_spaces/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from nas.config import load_study
from nas.data import make_dataset
from nas.plan import plan_study
from nas.space import expand_grid, load_search_space

ROOT = Path(__file__).resolve().parent.parent
STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
SPACES = sorted((ROOT / "search_spaces").glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("at_repo_root", "one_torch_thread")


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def test_there_is_a_study_per_seed_question():
    names = {p.stem for p in STUDIES}
    assert {"cls_token_position", "vim_bidirectional", "mambaout_need_ssm", "globalmamba_band_order",
            "vmamba_scan_routes", "vil_classification_design", "search_accuracy_vs_throughput"} <= names


@pytest.mark.parametrize("path", SPACES, ids=lambda p: p.stem)
def test_search_space_loads(path):
    space = load_search_space(path.stem)
    assert space.name == path.stem and space.base


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_study_loads_and_plans(path):
    sf = load_study(_rel(path))
    assert sf.study.name == path.stem, "a study's name is its file name (nas run NAME finds it)"
    plan = plan_study(sf, timed=False)  # what `nas run` checks; the timed pre-flight has its own test below
    study = plan.study
    if study.kind == "grid":
        n_levels = 1
        for f in study.factors:
            n_levels *= len(study.level_names(f))
        assert len(plan.cells) == n_levels * len(study.initial_seeds)
        keys = [c.key for c in plan.cells]
        assert len(set(keys)) == len(keys), "two grid cells share a key: resume would skip one of them"
        assert len({c.spec.id for c in plan.cells}) == n_levels
        assert set(plan.preflight) == {c.spec.id for c in plan.cells}
        if study.budget is not None:
            for c in plan.cells:
                assert abs(c.budget["relative_error"]) <= study.budget.tolerance
    else:
        assert study.search is not None and len(plan.preflight) == 1
    assert all(p.params > 0 for p in plan.preflight.values())


def test_untimed_check_matches_timed_preflight_and_refuses_an_estimate():
    """`nas run` checks each spec untimed (batch of 2, one pass each); `--dry-run` times it for the CPU estimate.
    Both build the same specs; only the timed plan can estimate."""
    from blocks import NasError

    sets = ["factors={readout: [head, mean]}", "seeds=[0]"]
    timed = plan_study(load_study("studies/cls_token_position.yaml", sets=sets))
    untimed = plan_study(load_study("studies/cls_token_position.yaml", sets=sets), timed=False)
    assert {k: p.params for k, p in timed.preflight.items()} == {k: p.params for k, p in untimed.preflight.items()}
    for spec_id, pre in timed.preflight.items():
        assert pre.forward_ms > 0 and pre.step_ms > 0 and timed.estimate_seconds(spec_id) > 0
        assert untimed.preflight[spec_id].step_ms is None
        with pytest.raises(NasError, match="without timing"):
            untimed.estimate_seconds(spec_id)


# cls_token_position.yaml carries Vim Table 5's max-pool value (max: 73.4) but does not run readout `max`
@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_paper_values_name_levels(path):
    study = load_study(_rel(path)).study
    if study.paper is None or not study.paper.values:
        return
    assert study.kind == "grid", "published values sit beside the levels of a grid ablation"
    assert study.paper.source and "Table" in study.paper.source, "say which table the values come from"
    factors = list(study.factors)
    if len(factors) == 1:
        assert set(study.paper.values) <= set(study.level_names(factors[0]))
    else:  # the values belong to one factor (e.g. the mixer), the other crosses it
        assert any(set(study.paper.values) <= set(study.level_names(f)) for f in factors)
    assert all(0 < v <= 100 for v in study.paper.values.values())


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.stem)
def test_gpu_profile_validates(path):
    profiles = load_study(_rel(path)).study.profiles
    sf = load_study(_rel(path), profile="h200" if "h200" in profiles else "gpu")  # the seed studies: h200
    study = sf.study
    assert study.train.device == "cuda" and study.execution.gpus_per_trial > 0
    assert study.data.n_train >= 10_000, "the gpu profile scales the study up"
    if study.kind == "search":
        return
    # every cell's spec (and its parameter budget) validates on the meta device; no full-size CPU forward
    space = load_search_space(study.search_space, file=sf.path)
    d = study.data  # the class count does not depend on the image size: probe a few small images
    num_classes = make_dataset(d.name, seed=0, n_train=16, n_test=16, img_size=32, **d.knobs).num_classes
    cells = expand_grid(study, space, img_size=study.data.img_size, num_classes=num_classes, file=sf.path)
    keys = [c.key for c in cells]
    assert len(set(keys)) == len(keys)
    assert all(c.spec.img_size == study.data.img_size for c in cells)
    if study.budget is not None:
        assert all(abs(c.budget["relative_error"]) <= study.budget.tolerance for c in cells)
