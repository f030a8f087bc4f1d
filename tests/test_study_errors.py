"""Bad study files and bad flags: `nas run` exits with code 2 and one message that names the file and the key (or
the value and what is allowed), prints no traceback, leaves no Ray running and writes no database.

Each case runs the CLI in-process (typer's CliRunner) from the repository root, with `--db` pointing at a SQLite
file under tmp_path that must still not exist afterwards."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from typer.testing import CliRunner

import nas.data  # noqa: F401  (heavy imports are paid at collection, not by the first case's time limit)
import blocks.backbone  # noqa: F401  (timm's first import costs seconds; pay it at collection too)
import nas.execute  # noqa: F401
import sklearn.datasets  # noqa: F401  (the digits data set's first import costs ~2 s)
from nas.cli import app

ROOT = Path(__file__).resolve().parent.parent
BAD = "tests/bad_studies"
OK = f"{BAD}/base/tiny_ok.yaml"  # a valid tiny study, for the bad-flag cases

# fixture → words the message must contain (beside the file's path). Keys are named as dotted paths.
CASES: dict[str, tuple[str, ...]] = {
    "malformed_yaml": ("malformed YAML", "line 5"),
    "top_level_list": ("top level must be a mapping", "list"),
    "empty_file": ("top level must be a mapping",),
    "typo_top_level_key": ("key 'seeeds'", "did you mean 'seeds'"),
    "unknown_nested_key": ("key 'train.epoch'", "did you mean 'epochs'"),
    "group_is_a_value": ("key 'train'", "valid dictionary"),
    "bad_study_name": ("key 'name'", "my study!"),
    "unknown_mixer": ("unknown mixer 'mamba2'", "ssm"),
    "unknown_mixer_param": ("mixer 'ssm'", "d_sate", "d_state"),
    "unknown_route": ("key 'factors.route'", "'zigzag'", "cross4"),
    "unknown_readout": ("key 'fixed.readout'", "'cls_middle'", "bilateral_concat"),
    "unknown_tokenizer": ("key 'fixed.tokenizer.name'", "'vit_patch'", "dct_bands"),
    "unknown_dataset": ("key 'data'", "unknown data set 'cifar100'", "pathfinder"),
    "unknown_data_knob": ("key 'data'", "unknown knob 'colour'", "clutter"),
    "data_knob_out_of_range": ("key 'data'", "clutter=3.0", "0.0..1.0"),
    "epochs_zero": ("key 'train.epochs'", "greater than or equal to 1", "got 0"),
    "lr_negative": ("key 'train.lr'", "greater than 0", "-0.001"),
    "seeds_negative": ("key 'seeds'", "non-negative", "-1"),
    "seeds_duplicate": ("key 'seeds'", "distinct"),
    "seeds_adaptive_min_one": ("key 'seeds.min'", "at least 2 seeds", "got 1"),
    "seeds_adaptive_min_above_max": ("key 'seeds.max'", "at least seeds.min (5)", "got 3"),
    "seeds_adaptive_halfwidth_zero": ("key 'seeds.target_halfwidth'", "positive number", "got 0"),
    "seeds_adaptive_too_many": ("key 'seeds.max'", "at most 100 seeds", "got 500"),
    "profile_bad_value": ("key 'profiles.gpu.train.epochs'", "with profile 'gpu'", "greater than or equal to 1"),
    "kernel_backend_typo": ("key 'train.kernel_backend'", "'tritn'", "did you mean 'triton'", "reference"),
    "unknown_metric": ("key 'objectives.0.metric'", "unknown metric 'accuracy'", "val_acc"),
    "factors_and_search": ("exactly one of `factors`", "`search`"),
    "neither_factors_nor_search": ("exactly one of `factors`", "`search`"),
    "search_range_inverted": ("key 'search.space'", "depths", "low (4) must be below high (2)"),
    "reference_not_a_level": ("reference.readout", "'tail' is not a level", "middle"),
    "level_disallowed_by_space": ("key 'factors.readout'", "'head' is not allowed", "tiny_hierarchical"),
    "levels_build_same_model": ("key 'factors'", "build the same model"),
    "cls_token_on_hierarchical": ("key 'factors.route=uni'", "readout 'head'", "layout 'hierarchical'"),
    "head_token_causal_uni": ("key 'factors.readout=head'", "causal mixer 'attention'", "only ever sees itself"),
    "budget_unreachable": ("key 'budget'", "100,000,000,000", "solve='width'"),
    "image_folder_missing": ("key 'data'", "/nonexistent/nas-test-images", "does not exist"),
    "unknown_search_space": ("key 'search_space'", "'tiny_plian'", "did you mean 'tiny_plain'"),
    "asha_two_objectives": ("execution.asha", "single objective"),
    "throughput_unmeasured": ("key 'objectives'", "measure.skip: false"),
}

# bad flags on a valid study: extra arguments → words the message must contain
FLAG_CASES: dict[str, tuple[list[str], tuple[str, ...]]] = {
    "unknown_profile": (["--profile", "tpu"], (OK, "key 'profiles'", "unknown profile 'tpu'", "small")),
    "set_without_value": (["--set", "train.epochs"], ("key 'train.epochs'", "--set needs key=value")),
    "set_out_of_range": (["--set", "train.epochs=0"], (OK, "key 'train.epochs'", "greater than or equal to 1")),
    "set_unknown_key": (["--set", "train.epoch=3"], (OK, "key 'train.epoch'", "did you mean 'epochs'")),
    "set_into_a_value": (["--set", "data.name.x=1"], (OK, "key 'data.name.x'", "data.name is a value")),
    "set_bad_yaml": (["--set", "train.lr=[oops"], ("key 'train.lr'", "not valid YAML")),
    "set_not_a_dotted_name": (["--set", "train..lr=1"], ("'train..lr'", "not a dotted name")),
    "set_duplicate_seeds": (["--set", "seeds=[0, 0]"], (OK, "key 'seeds'", "distinct")),
    "set_unknown_readout": (["--set", "fixed.readout=centre"], (OK, "key 'fixed.readout'", "'centre'")),
    "missing_study_file": ([], ("no study file", "nope_not_a_study")),
    "profile_bad_with_another_profile": (["--profile", "small"], (f"{BAD}/profile_bad_value.yaml",
                                                                  "key 'profiles.gpu.train.epochs'")),
    "profile_bad_when_chosen": (["--profile", "gpu"], (f"{BAD}/profile_bad_value.yaml",
                                                       "key 'profiles.gpu.train.epochs'")),
}
FLAG_STUDY = {"missing_study_file": "studies/nope_not_a_study.yaml",
              "profile_bad_with_another_profile": f"{BAD}/profile_bad_value.yaml",
              "profile_bad_when_chosen": f"{BAD}/profile_bad_value.yaml"}
UNREACHABLE_DBS = ["postgresql+psycopg://nobody@127.0.0.1:1/x", "sqlite:////proc/nope/x.db"]


pytestmark = pytest.mark.usefixtures("at_repo_root", "one_torch_thread")


def _run(args: list[str], limit_s: float = 5.0) -> tuple[int, str, float]:
    t = time.perf_counter()
    res = CliRunner().invoke(app, ["run", *args], terminal_width=150)
    elapsed = time.perf_counter() - t
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    out = " ".join(res.output.split())  # rich wraps long lines
    assert "Traceback" not in out, out
    assert not ray.is_initialized(), "a refused study must leave no Ray running"
    assert elapsed < limit_s, f"refusing a bad study took {elapsed:.1f} s"
    return res.exit_code, out, elapsed


def _assert_refused(code: int, out: str, words: tuple[str, ...], db: Path) -> None:
    assert code == 2, out
    assert out.startswith("error:"), out
    for w in words:
        assert w in out, f"{w!r} not in: {out}"
    assert not db.exists(), "nothing may be written for a bad study"
    assert not any(db.parent.iterdir()), list(db.parent.iterdir())


def test_every_fixture_has_a_case():
    assert {p.stem for p in (ROOT / BAD).glob("*.yaml")} == set(CASES)
    assert len(CASES) + len(FLAG_CASES) + len(UNREACHABLE_DBS) >= 20


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_study_file(name, tmp_path):
    db = tmp_path / "nas.db"
    path = f"{BAD}/{name}.yaml"
    code, out, _ = _run([path, "--db", f"sqlite:///{db}"])
    _assert_refused(code, out, (f"file {path}", *CASES[name]), db)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_study_file_dry_run_too(name, tmp_path):
    db = tmp_path / "nas.db"
    code, out, _ = _run([f"{BAD}/{name}.yaml", "--dry-run", "--db", f"sqlite:///{db}"])
    _assert_refused(code, out, CASES[name], db)


@pytest.mark.parametrize("name", sorted(FLAG_CASES))
def test_bad_flag(name, tmp_path):
    db = tmp_path / "nas.db"
    extra, words = FLAG_CASES[name]
    study = FLAG_STUDY.get(name, OK)
    code, out, _ = _run([study, *extra, "--db", f"sqlite:///{db}"])
    _assert_refused(code, out, words, db)


@pytest.mark.parametrize("url", UNREACHABLE_DBS)
def test_unreachable_database(url, tmp_path):
    code, out, _ = _run([OK, "--db", url])
    assert code == 2, out
    assert f"error: cannot open the study database {url!r}" in out and "Check the URL" in out, out
    assert not Path("/proc/nope").exists()


def test_valid_base_plans(tmp_path):
    """The bad-flag cases fail on the flag, not on their base study: it plans (dry run) as it is."""
    db = tmp_path / "nas.db"
    code, out, _ = _run([OK, "--dry-run", "--db", f"sqlite:///{db}"])
    assert code == 0, out
    assert "2 trials" in out and not db.exists()


@pytest.mark.parametrize("dry_run", [False, True])
def test_run_checks_untimed_and_dry_run_times(dry_run, tmp_path, monkeypatch):
    """`nas run` needs the pre-flight's check, not its CPU timing (a GPU study waited ~40 s on timed pre-flights);
    `--dry-run` prints the estimate, so it times. The stub stops the run at the first spec. A run (not a dry run)
    starts Ray beside the pre-flight (tests/test_startup.py), so its refusal waits for Ray to start and stop."""
    import nas.plan

    seen: list[bool] = []

    def stub(spec, *, timed=True):
        seen.append(timed)
        raise RuntimeError("stop here")

    monkeypatch.setattr(nas.plan, "preflight_spec", stub)
    code, out, _ = _run([OK, "--db", f"sqlite:///{tmp_path / 'nas.db'}", *(["--dry-run"] if dry_run else [])],
                        limit_s=5.0 if dry_run else 30.0)
    assert code == 2 and "pre-flight failed" in out and "stop here" in out
    assert seen and set(seen) == {dry_run}  # a run's checks go side by side: each arm's stub may have run
