"""A study database for the dashboard tests, written row by row through `nas.store.Store` and Optuna (no Ray, no
training): a grid ablation with seeds, curves, costs across resolutions, a failed trial and model files; a small
search; and a study whose name is markup. `build_study_db` is imported by the other dashboard tests; the test here
checks that the fixture reads back the way the dashboard expects."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest

from blocks import build_backbone, get_preset
from blocks.model_file import save_backbone
from nas.records import TrialOutcome, TrialStart, TrialState
from nas.store import Store

GRID = "cls_demo"
SEARCH = "search_demo"
XSS = "<script>alert(1)</script>"
LEVELS = ["head", "middle", "tail"]
SEEDS = [0, 1, 2]
# val_acc per (level, seed): middle beats head by 4–6 points on every seed, tail is noisy
ACC = {("head", 0): 0.70, ("head", 1): 0.72, ("head", 2): 0.71,
       ("middle", 0): 0.75, ("middle", 1): 0.78, ("middle", 2): 0.76,
       ("tail", 0): 0.66, ("tail", 1): 0.74, ("tail", 2): None}  # tail seed 2 failed
PAPER = {"head": 75.2, "middle": 76.1, "tail": 74.0}
FAILED_ERROR = "RuntimeError: injected failure (NAS_INJECT_FAULT=readout=tail) after epoch 1"


@dataclass
class Fixture:
    url: str
    root: Path
    grid_numbers: dict[tuple[str, int], int]  # (level, seed) → trial number
    failed_number: int


def _config(name: str, *, grid: bool) -> dict:
    cfg = {"name": name, "question": "Where should the class token go?" if grid else "Which mixer and width?",
           "search_space": "tiny_plain", "seeds": SEEDS if grid else [0], "data": {"name": "digits", "img_size": 32},
           "objectives": [{"metric": "val_acc"}], "fixed": {"route": "bi"}}
    if grid:
        cfg.update(factors={"readout": LEVELS}, reference={"readout": "head"},
                   paper={"source": "Vim (Zhu et al., 2024), Table 5", "metric": "ImageNet-1K top-1 (%)",
                          "values": PAPER})
    else:
        cfg["search"] = {"n_trials": 6, "sampler": "tpe", "space": {"mixer": ["ssm", "attention"],
                                                                    "dim": {"low": 16, "high": 64}}}
    return cfg


def _cost(acc_rank: float, dim: int = 32) -> dict:
    base = 2000.0 / (1 + acc_rank)
    return {"img_size": 32, "params": 25000 + dim * 100, "flops": 1_000_000 + dim * 5000, "macs": 500_000,
            "throughput": base, "peak_memory_bytes": None,
            "by_resolution": {"32": {"img_size": 32, "throughput": base, "flops": 1_000_000, "peak_memory_bytes": None},
                              "64": {"img_size": 64, "throughput": base / 3.5, "flops": 4_000_000,
                                     "peak_memory_bytes": None},
                              "128": {"img_size": 128, "throughput": base / 14, "flops": 16_000_000,
                                      "peak_memory_bytes": None}}}


def _add_grid(store: Store, root: Path) -> tuple[dict[tuple[str, int], int], int]:
    store.upsert_study(name=GRID, question=_config(GRID, grid=True)["question"], kind="grid", study_yaml="name: x\n",
                       config=_config(GRID, grid=True), search_space_yaml="", n_cells=len(LEVELS) * len(SEEDS))
    run = store.start_run(GRID, "nas run studies/cls_demo.yaml")
    ot = optuna.create_study(storage=store.optuna_storage(), study_name=GRID, direction="maximize")
    dists = {"readout": optuna.distributions.CategoricalDistribution(LEVELS),
             "seed": optuna.distributions.CategoricalDistribution(SEEDS)}
    base = get_preset("test_vim")
    numbers, failed = {}, -1
    for level in LEVELS:
        spec = base.with_overrides({"readout": level})
        model_path = root / "artifacts" / f"{level}.safetensors"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        save_backbone(build_backbone(spec), spec, model_path)
        for seed in SEEDS:
            acc = ACC[(level, seed)]
            params = {"readout": level, "seed": seed}
            state = optuna.trial.TrialState.COMPLETE if acc is not None else optuna.trial.TrialState.FAIL
            ot.add_trial(optuna.trial.create_trial(params=params, distributions=dists, state=state,
                                                   values=[acc] if acc is not None else None))
            frozen = ot.get_trials(deepcopy=False)[-1]
            row = store.trial_started(GRID, run, TrialStart(
                number=frozen.number, optuna_trial_id=frozen._trial_id, key=f"{GRID}/{spec.id}/s{seed}",
                levels={"readout": level}, params=params, spec_id=spec.id, spec_json=spec.to_json(), seed=seed))
            numbers[(level, seed)] = frozen.number
            for epoch in (1, 2, 3):
                frac = epoch / 3
                store.record_epoch(row, epoch, {"train_loss": 2.3 - frac, "val_loss": 2.2 - frac,
                                                "val_acc": (acc or 0.3) * (0.6 + 0.4 * frac), "lr": 1e-3,
                                                "seconds": 1.0, "node_id": "node-a", "device": "cpu"})
                if acc is None:
                    break
            if acc is None:
                store.trial_finished(row, TrialState.FAILED, error=FAILED_ERROR + "\n\nTraceback (most recent "
                                     "call last): ...")
                failed = frozen.number
                continue
            store.trial_finished(row, TrialState.COMPLETE, TrialOutcome(
                val_acc=acc, val_loss=1.2, num_params=25354, values={"val_acc": acc}, cost=_cost(LEVELS.index(level)),
                kernel_paths={"selective_scan_paths": "reference"}, wall_seconds=3.0, train_seconds=2.5,
                node_id="node-a", device="cpu"))
            store.add_artifact(row, model_path)
    store.finish_run(run, "finished", 42.0)
    return numbers, failed


def _add_search(store: Store) -> None:
    store.upsert_study(name=SEARCH, question="Which mixer and width?", kind="search", study_yaml="name: y\n",
                       config=_config(SEARCH, grid=False), search_space_yaml="", n_cells=6)
    run = store.start_run(SEARCH, "nas run studies/search_demo.yaml")
    ot = optuna.create_study(storage=store.optuna_storage(), study_name=SEARCH, direction="maximize")
    dists = {"mixer": optuna.distributions.CategoricalDistribution(["ssm", "attention"]),
             "dim": optuna.distributions.IntDistribution(16, 64)}
    points = [("ssm", 16, 0.61), ("attention", 32, 0.58), ("ssm", 48, 0.70), ("attention", 64, 0.66),
              ("ssm", 64, 0.73), ("ssm", 32, 0.65)]
    for mixer, dim, acc in points:
        params = {"mixer": mixer, "dim": dim}
        ot.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[acc]))
        frozen = ot.get_trials(deepcopy=False)[-1]
        spec = get_preset("test_vim" if mixer == "ssm" else "test_deit").with_overrides({"dims": [dim]})
        row = store.trial_started(SEARCH, run, TrialStart(
            number=frozen.number, optuna_trial_id=frozen._trial_id, key=f"{SEARCH}/{frozen.number}",
            levels={k: str(v) for k, v in params.items()}, params=params, spec_id=spec.id, spec_json=spec.to_json(),
            seed=0))
        store.record_epoch(row, 1, {"val_acc": acc, "train_loss": 1.0, "val_loss": 1.1})
        store.trial_finished(row, TrialState.COMPLETE, TrialOutcome(
            val_acc=acc, num_params=20000 + 300 * dim, values={"val_acc": acc}, cost=_cost(acc, dim)))
    store.finish_run(run, "finished", 10.0)


def _add_markup_named(store: Store) -> None:
    store.upsert_study(name=XSS, question="<img src=x onerror=alert(2)> & friends", kind="grid",
                       study_yaml="", config=_config(XSS, grid=True), search_space_yaml="", n_cells=0)


def build_study_db(root: Path) -> Fixture:
    """Write the fixture database under `root` (about 2 s on a laptop CPU) and return its URL and trial numbers."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    root.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{root / 'studies.db'}"
    store = Store(url)
    numbers, failed = _add_grid(store, root)
    _add_search(store)
    _add_markup_named(store)
    store.engine.dispose()
    return Fixture(url, root, numbers, failed)


_SHARED: dict[str, Fixture] = {}


def shared_study_db(factory: pytest.TempPathFactory) -> Fixture:
    """One fixture database per test session for the dashboard modules (the browser's live test adds a study to
    it; nothing else writes)."""
    if "db" not in _SHARED:
        _SHARED["db"] = build_study_db(factory.mktemp("dash"))
    return _SHARED["db"]


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory: pytest.TempPathFactory) -> Fixture:
    return shared_study_db(tmp_path_factory)


def test_fixture_reads_back_read_only(fixture_db: Fixture) -> None:
    from dashboard import queries as Q

    store = Q.open_store(fixture_db.url)
    names = {r["name"]: r for r in Q.study_list(store)}
    assert {GRID, SEARCH, XSS} <= set(names)
    assert (names[GRID]["done"], names[GRID]["failed"], names[GRID]["running"]) == (8, 1, 0)
    assert names[GRID]["best_val_acc"] == pytest.approx(0.78)
    data = Q.load_study(store, GRID)
    assert data.is_grid and len(data.trials) == 9
    s = Q.search_data(fixture_db.url, Q.load_study(store, SEARCH))
    assert len(s.trials) == 6 and s.directions == ["maximize"]
    assert set(s.importances) == {"mixer", "dim"} and sum(s.importances.values()) == pytest.approx(1.0)
    # the dashboard's connection cannot write: SQLite itself refuses (the file is opened with mode=ro)
    from sqlalchemy.exc import OperationalError

    with pytest.raises(OperationalError, match="readonly"), store.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE nas_probe (x INTEGER)")
