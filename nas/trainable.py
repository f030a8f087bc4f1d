"""The Ray Tune trainable: what a worker process imports to run a trial, and nothing of the driver.

Tune pickles the trainable by reference, so each worker imports the module that defines it before its first trial.
Defined in `nas.execute` it pulled in the driver's modules (the plan, the store, the searcher, SQLAlchemy) on every
worker; on the GPU machine a worker spent ~19 s importing before its first trial (benchmarks/RESULTS.md, session 14).
Here it needs only Ray Tune (the worker has it already), the study's schema and `nas.worker`, whose trial code
imports torch and the block grammar when the trial starts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ray import tune

from .records import TrialStart
from .schema import Study
from .worker import run_task

TASK = "nas_task"  # the trial config's entry that carries its resolved cell (a TrialStart as data)


def train_cell(config: dict[str, Any], study_json: dict[str, Any]) -> None:
    """The Ray Tune trainable: the cell travels in `config` (resolved by the driver); `nas.worker` trains it and
    reports through Tune (the last report with the model file as a checkpoint)."""
    import ray

    def report(metrics: dict[str, Any], folder: Path | None) -> None:
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder) if folder else None)

    run_task(Study.model_validate(study_json), TrialStart.from_config(config[TASK]), report,
             node_id=ray.get_runtime_context().get_node_id())


__all__ = ["TASK", "train_cell"]
