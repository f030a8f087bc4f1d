"""Typed records that go into and come out of the study database (`nas.store`): plain data, no session attached.

`TrialState` names the states a trial attempt can be in; everything that asks "is it done?" asks the enum
(`TrialState.DONE`), so the set is written once.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar, Mapping


class TrialState(str, Enum):
    """One attempt of one cell. A `str` enum: it compares equal to its value and is stored as it."""
    RUNNING = "running"
    COMPLETE = "complete"  # trained to the end
    STOPPED = "stopped"  # stopped early by ASHA: its last epoch counts as its result
    FAILED = "failed"  # raised (its error is stored); not repeated unless asked (--retry-failed)
    STALE = "stale"  # the driver died while it ran; re-queued as a new attempt

    DONE: ClassVar[tuple["TrialState", ...]]
    FINISHED: ClassVar[tuple["TrialState", ...]]

    def __str__(self) -> str:
        return self.value


TrialState.DONE = (TrialState.COMPLETE, TrialState.STOPPED)  # its cell has a result: never run again
TrialState.FINISHED = (TrialState.COMPLETE, TrialState.STOPPED, TrialState.FAILED)  # counts towards a search's budget


def finite(v: Any) -> float | None:
    """A finite float, or None (NaN, ±inf and anything that is not a number)."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


@dataclass(frozen=True)
class RunRecord:
    """One invocation of `nas run`: its driver, code version and hardware."""
    id: int
    status: str  # running | finished | interrupted | failed
    started_at: datetime | None
    finished_at: datetime | None
    code_version: str
    hardware: dict[str, Any]
    driver: str
    wall_seconds: float | None


@dataclass(frozen=True)
class StudyRecord:
    """A study as stored: its file's text, the validated config as JSON (profile and --set applied) and its runs."""
    name: str
    question: str
    kind: str  # grid | search
    status: str
    study_yaml: str
    config: dict[str, Any]
    search_space_yaml: str
    cells: int
    created_at: datetime | None
    updated_at: datetime | None
    runs: list[RunRecord] = field(default_factory=list)

    def run_of(self, started_at: datetime | None) -> RunRecord | None:
        """The run a trial started in: the last run started before it (the latest run when unknown)."""
        runs = [r for r in self.runs if r.started_at is not None]
        if started_at is None:
            return runs[-1] if runs else None
        before = [r for r in runs if r.started_at <= started_at]
        return before[-1] if before else (runs[0] if runs else None)


@dataclass(frozen=True)
class StudySummary:
    """One line of the studies list: status, attempts per state, best accuracy of complete trials."""
    name: str
    question: str
    kind: str
    status: str
    cells: int
    best_val_acc: float | None
    updated_at: datetime | None
    counts: dict[TrialState, int]

    @property
    def done(self) -> int:
        return sum(self.counts.get(s, 0) for s in TrialState.DONE)

    @property
    def running(self) -> int:
        return self.counts.get(TrialState.RUNNING, 0)

    @property
    def failed(self) -> int:
        """Attempts that raised or diverged."""
        return self.counts.get(TrialState.FAILED, 0)

    @property
    def interrupted(self) -> int:
        """Attempts a stopped driver left behind (marked stale and re-queued when the study resumed)."""
        return self.counts.get(TrialState.STALE, 0)


@dataclass(frozen=True)
class TrialStart:
    """An attempt of a cell as the driver resolved it, once: what it trains (spec JSON, seed) and how it is named
    (Optuna's trial, the cell's key and levels). It travels with the trial to the worker and back into the store."""
    number: int  # Optuna's trial number within the study
    optuna_trial_id: int  # Optuna's id of that trial in its storage
    key: str
    levels: dict[str, str]
    params: dict[str, Any]
    spec_id: str
    spec_json: str
    seed: int
    budget: dict[str, Any] = field(default_factory=dict)

    def as_config(self) -> dict[str, Any]:
        """As JSON-able data: how the cell travels with its trial to the worker (in the trial's config)."""
        return asdict(self)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "TrialStart":
        return cls(**config)


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished attempt measured (the worker's last report); None where it did not get that far."""
    val_acc: float | None = None
    val_loss: float | None = None
    num_params: int | None = None
    values: dict[str, float | None] = field(default_factory=dict)  # the study's objectives
    cost: dict[str, Any] = field(default_factory=dict)
    kernel_paths: dict[str, str] = field(default_factory=dict)
    wall_seconds: float | None = None
    train_seconds: float | None = None
    node_id: str | None = None
    device: str | None = None

    @classmethod
    def from_report(cls, report: Mapping[str, Any], objectives: list[str]) -> "TrialOutcome":
        """From the worker's last report (a Tune result: a mapping with whatever keys the trial got to)."""
        return cls(val_acc=finite(report.get("val_acc")), val_loss=finite(report.get("val_loss")),
                   num_params=report.get("num_params"), values={m: report.get(m) for m in objectives},
                   cost=dict(report.get("cost") or {}), kernel_paths=dict(report.get("kernel_paths") or {}),
                   wall_seconds=report.get("wall_seconds"), train_seconds=report.get("train_seconds"),
                   node_id=report.get("node_id"), device=report.get("device"))


@dataclass(frozen=True)
class EpochReport:
    """One epoch as a worker reported it: the metrics of `nas.database.EPOCH_METRICS` it has, and the trial's
    `node_id` and `device` (they go to the trial's row)."""
    trial_id: int  # our row of the attempt
    epoch: int
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class ArtifactRecord:
    kind: str  # model | onnx | ...
    path: str
    bytes: int
    created_at: datetime | None


@dataclass
class TrialView:
    """A trial attempt as readers see it (plain data, no session attached)."""
    id: int
    number: int
    key: str
    levels: dict[str, str]
    seed: int
    state: TrialState
    val_acc: float | None
    values: dict[str, Any]
    spec_id: str
    spec_json: str
    error: str | None
    cost: dict[str, Any]
    num_params: int | None
    kernel_paths: dict[str, str]
    node_id: str | None
    wall_seconds: float | None
    train_seconds: float | None
    budget: dict[str, Any]
    started_at: datetime | None
    finished_at: datetime | None
    device: str | None = None  # where it trained: `cpu`, or `cuda:0 = GPU 1 (NVIDIA H200, GPU-...)` (host's GPU 1)
    attempts: int = 1  # runs of this cell so far: Tune's retries of a failed worker count here, not as new rows

    @property
    def is_done(self) -> bool:
        return self.state in TrialState.DONE

    def row(self) -> dict[str, Any]:
        """Flat dict for nas.stats: factor levels, seed and metrics side by side."""
        return {**self.levels, "seed": self.seed, "val_acc": self.val_acc, **self.values,
                "throughput": self.cost.get("throughput"), "params": self.num_params, "flops": self.cost.get("flops")}


TrialRecord = TrialView  # the same record under the name the store's other records follow

__all__ = ["ArtifactRecord", "EpochReport", "RunRecord", "StudyRecord", "StudySummary", "TrialOutcome", "TrialRecord",
           "TrialStart", "TrialState", "TrialView", "finite"]
