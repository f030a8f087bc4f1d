"""nas.bytecode: the start-up hint for studies whose workers would compile their imports from source."""

from __future__ import annotations

import compileall
import sys

import pytest

from nas.bytecode import bytecode_hint, uncompiled_packages


def _package(tmp_path, monkeypatch, name: str = "nas_bytecode_probe"):
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return pkg


def test_a_package_without_bytecode_is_named_with_the_command(tmp_path, monkeypatch):
    pkg = _package(tmp_path, monkeypatch)
    assert uncompiled_packages(("nas_bytecode_probe", "no_such_package_xyz"), dont_write=True) == \
        {"nas_bytecode_probe": pkg}
    hint = bytecode_hint(("nas_bytecode_probe",), dont_write=True)
    assert hint is not None and "nas_bytecode_probe" in hint and f"python -m compileall -q {pkg}" in hint


def test_no_hint_once_compiled_or_when_python_writes_bytecode(tmp_path, monkeypatch):
    pkg = _package(tmp_path, monkeypatch)
    assert bytecode_hint(("nas_bytecode_probe",), dont_write=False) is None  # Python writes it on first import
    assert compileall.compile_dir(str(pkg), quiet=1)
    assert uncompiled_packages(("nas_bytecode_probe",), dont_write=True) == {}
    assert bytecode_hint(("nas_bytecode_probe",), dont_write=True) is None


def test_defaults_follow_the_interpreter_flag(tmp_path, monkeypatch):
    _package(tmp_path, monkeypatch)
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    assert "nas_bytecode_probe" in uncompiled_packages(("nas_bytecode_probe",))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    assert uncompiled_packages(("nas_bytecode_probe",)) == {}


@pytest.mark.parametrize("address, expected", [(None, True), ("auto", False)])
def test_the_runner_says_it_before_ray_starts_for_local_studies_only(tmp_path, monkeypatch, run_events, address,
                                                                     expected):
    """A local study prints the hint as a setup line before Ray starts; a cluster's workers have their own
    environments, so a study joining one does not."""
    import nas.execute as execute
    from nas.config import load_study
    from nas.driver import Round
    from nas.plan import plan_study

    order = []
    monkeypatch.setattr(execute, "bytecode_hint", lambda: order.append("hint") or "HINT")
    monkeypatch.setattr(execute, "start_warmup", lambda study, specs: None)

    def no_ray(study):
        order.append("ray")
        raise KeyboardInterrupt  # stop the round here

    monkeypatch.setattr(execute, "init_ray", no_ray)
    sets = [f"storage.ray_results={tmp_path}"] + ([f"execution.address={address}"] if address else [])
    runner = execute.TuneRunner(plan_study(load_study("studies/cls_token_position.yaml", sets=sets), timed=False))
    with pytest.raises(KeyboardInterrupt):
        runner.run_round(run_events, Round(1, 1))
    runner.started = False
    runner.close()
    assert order == (["hint", "ray"] if expected else ["ray"])
    assert (("setup", {"text": "HINT"}) in run_events.events) == expected
