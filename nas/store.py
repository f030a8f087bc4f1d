"""The study database: Optuna's RDB storage plus our own tables beside it, one URL for both.

Optuna holds studies and trials (parameters, values, states) so `optuna.load_study` opens our database unchanged.
Our tables (all named `nas_*`) hold what Optuna does not: the study file and search space text, every run of the
driver with its code version and hardware, one row per trial attempt with its spec, seed, error, node, costs and
kernel paths, per-epoch curves, and artifacts (model files). Only the driver writes.

SQLite is put in WAL mode with a busy timeout, so a reader (dashboard, `nas show`) never blocks the writer.
This is the only module that talks SQL.
"""

from __future__ import annotations

import json
import os
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event, func, select)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.pool import StaticPool

from .errors import StoreError

SQLITE_TIMEOUT_S = 60
STALE_ERROR = "stale: the driver stopped while this trial was running (killed or crashed); re-queued"


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class StudyRow(Base):
    __tablename__ = "nas_studies"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    question: Mapped[str] = mapped_column(Text, default="")
    kind: Mapped[str] = mapped_column(String(16))  # grid | search
    study_yaml: Mapped[str] = mapped_column(Text)
    config: Mapped[dict] = mapped_column(JSON)  # the validated study (profile and --set applied)
    search_space_yaml: Mapped[str] = mapped_column(Text, default="")
    status: Mapped[str] = mapped_column(String(16), default="created")  # running | finished | interrupted
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    n_cells: Mapped[int] = mapped_column(Integer, default=0)


class RunRow(Base):
    """One invocation of `nas run` (a study resumed three times has three)."""
    __tablename__ = "nas_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(ForeignKey("nas_studies.name"), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    driver: Mapped[str] = mapped_column(String(256), default="")  # host:pid
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    code_version: Mapped[str] = mapped_column(String(128), default="")
    hardware: Mapped[dict] = mapped_column(JSON, default=dict)
    command: Mapped[str] = mapped_column(Text, default="")
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class TrialRow(Base):
    """One attempt of one cell: a stale or failed attempt stays as history, its re-run is a new row."""
    __tablename__ = "nas_trials"
    __table_args__ = (UniqueConstraint("study_name", "optuna_trial_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(ForeignKey("nas_studies.name"), index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("nas_runs.id"), nullable=True)
    optuna_trial_id: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)  # Optuna's trial number within the study
    key: Mapped[str] = mapped_column(String(200), index=True)
    levels: Mapped[dict] = mapped_column(JSON, default=dict)
    params: Mapped[dict] = mapped_column(JSON, default=dict)
    spec_id: Mapped[str] = mapped_column(String(32), default="")
    spec_json: Mapped[str] = mapped_column(Text, default="")
    seed: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="running")  # running|complete|failed|stale|stopped
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    node_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=_now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    val_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    num_params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # 64-bit: > 2**31 on PostgreSQL
    values: Mapped[dict] = mapped_column(JSON, default=dict)  # final objective values
    cost: Mapped[dict] = mapped_column(JSON, default=dict)
    budget: Mapped[dict] = mapped_column(JSON, default=dict)
    kernel_paths: Mapped[dict] = mapped_column(JSON, default=dict)
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    train_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class EpochRow(Base):
    __tablename__ = "nas_epochs"
    __table_args__ = (UniqueConstraint("trial_id", "epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    val_acc: Mapped[float | None] = mapped_column(Float, nullable=True)
    lr: Mapped[float | None] = mapped_column(Float, nullable=True)
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class ArtifactRow(Base):
    __tablename__ = "nas_artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="model")
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # model files over 2 GiB
    created_at: Mapped[datetime] = mapped_column(DateTime, default=_now)


# ------------------------------------------------------------------------------------------------- engine
def sqlite_path(url: str) -> Path | None:
    """The file behind a `sqlite:///` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    p = url[len("sqlite:///"):]
    return None if p in ("", ":memory:") else Path(p)


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for `url`; SQLite files get WAL mode and a busy timeout (readers never block the driver)."""
    path = sqlite_path(url)
    try:
        if url.startswith("sqlite"):
            if path is not None and not read_only:
                path.parent.mkdir(parents=True, exist_ok=True)
            if read_only and path is not None:
                if not path.exists():
                    raise StoreError(f"no study database at {url} (run `nas run STUDY` first, or pass --db URL)")
                target = f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"
                engine = create_engine(target, connect_args={"timeout": SQLITE_TIMEOUT_S, "uri": True},
                                       json_serializer=_json_dumps)
            elif path is None:  # in-memory: one connection shared by every thread, or each would see its own db
                engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S, "check_same_thread": False},
                                       poolclass=StaticPool, json_serializer=_json_dumps)
            else:
                engine = create_engine(url, connect_args={"timeout": SQLITE_TIMEOUT_S}, json_serializer=_json_dumps)

            @event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
                cur = dbapi_conn.cursor()
                if not read_only and path is not None:
                    cur.execute("PRAGMA journal_mode=WAL")
                cur.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
                cur.close()
        else:
            engine = create_engine(url, pool_pre_ping=True, json_serializer=_json_dumps)
        with engine.connect():
            pass
    except StoreError:
        raise
    except (SQLAlchemyError, ModuleNotFoundError, OSError, ValueError) as e:
        raise StoreError(f"cannot open the study database {url!r}: {str(e).splitlines()[0]}. Check the URL "
                         "(sqlite:///path/to/file.db or postgresql+psycopg://user:pass@host/db) and that the server "
                         "is running.") from None
    return engine


def code_version() -> str:
    """Package version plus the git commit of the working tree (if any)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        v = version("visionseq-nas")
    except PackageNotFoundError:  # run from a source tree that is not pip-installed
        v = "source"
    try:
        import subprocess

        root = Path(__file__).resolve().parents[1]
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if sha:
            v += f"+g{sha}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return v


def hardware() -> dict[str, Any]:
    import platform

    import torch

    hw: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python":
                          platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw


# -------------------------------------------------------------------------------------------------- store
@dataclass
class TrialView:
    """A finished or running trial as readers see it (plain data, no session attached)."""
    id: int
    number: int
    key: str
    levels: dict[str, str]
    seed: int
    state: str
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

    def row(self) -> dict[str, Any]:
        """Flat dict for nas.stats: factor levels, seed and metrics side by side."""
        return {**self.levels, "seed": self.seed, "val_acc": self.val_acc, **self.values,
                "throughput": self.cost.get("throughput"), "params": self.num_params, "flops": self.cost.get("flops")}


class Store:
    """Our tables at `url` (Optuna's live in the same database; `optuna_storage()` opens them)."""

    def __init__(self, url: str, *, read_only: bool = False) -> None:
        self.url, self.read_only = url, read_only
        self.engine = make_engine(url, read_only=read_only)
        if not read_only:
            Base.metadata.create_all(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)
        if read_only:
            event.listen(self._session, "before_flush", _refuse_writes)

    def __getstate__(self) -> dict[str, Any]:
        return {"url": self.url, "read_only": self.read_only}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["url"], read_only=state["read_only"])

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._session() as s:
            try:
                yield s
                if not self.read_only:
                    s.commit()
                else:
                    s.flush()  # pending changes reach _refuse_writes instead of vanishing silently
            except BaseException:
                s.rollback()
                raise

    def optuna_storage(self):  # noqa: ANN201 - optuna.storages.RDBStorage
        import optuna

        kwargs: dict[str, Any] = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if self.url.startswith("sqlite") \
            else {"pool_pre_ping": True}
        try:
            return optuna.storages.RDBStorage(self.url, engine_kwargs=kwargs)
        except Exception as e:  # optuna wraps driver errors in several types
            raise StoreError(f"Optuna cannot open {self.url!r}: {str(e).splitlines()[0]}") from None

    # ---- studies and runs ---------------------------------------------------------------------------------
    def upsert_study(self, *, name: str, question: str, kind: str, study_yaml: str, config: dict[str, Any],
                     search_space_yaml: str, n_cells: int) -> None:
        with self.session() as s:
            row = s.get(StudyRow, name)
            if row is None:
                row = StudyRow(name=name, created_at=_now())
                s.add(row)
            row.question, row.kind, row.study_yaml, row.config = question, kind, study_yaml, config
            row.search_space_yaml, row.n_cells, row.status, row.updated_at = search_space_yaml, n_cells, "running", \
                _now()

    def start_run(self, study_name: str, command: str) -> int:
        with self.session() as s:
            run = RunRow(study_name=study_name, driver=f"{socket.gethostname()}:{os.getpid()}",
                         code_version=code_version(), hardware=hardware(), command=command)
            s.add(run)
            s.flush()
            return run.id

    def finish_run(self, run_id: int, status: str, wall_seconds: float) -> None:
        with self.session() as s:
            run = s.get(RunRow, run_id)
            run.status, run.finished_at, run.wall_seconds = status, _now(), wall_seconds
            st = s.get(StudyRow, run.study_name)
            st.status, st.updated_at = status, _now()

    def heartbeat(self, run_id: int) -> None:
        with self.session() as s:
            s.get(RunRow, run_id).heartbeat_at = _now()

    def active_driver(self, study_name: str, stale_after_s: float = 120.0) -> str | None:
        """`host:pid` of a driver still running this study, if any: on this host its pid must be alive; elsewhere
        its heartbeat must be younger than `stale_after_s`. Two drivers on one study would fail each other's
        trials as stale, so `nas run` refuses to start a second one."""
        with self.session() as s:
            rows = s.scalars(select(RunRow).where(RunRow.study_name == study_name, RunRow.status == "running")).all()
            for r in rows:
                host, _, pid = r.driver.rpartition(":")
                if host == socket.gethostname():
                    if pid.isdigit() and int(pid) != os.getpid() and _pid_alive(int(pid)):
                        return r.driver
                elif (_now() - r.heartbeat_at).total_seconds() < stale_after_s:
                    return r.driver
            return None

    def mark_interrupted_runs(self, study_name: str) -> int:
        """Runs left 'running' by a driver that died are marked interrupted (their stale trials are handled by
        `fail_stale_trials`)."""
        with self.session() as s:
            rows = s.scalars(select(RunRow).where(RunRow.study_name == study_name, RunRow.status == "running")).all()
            for r in rows:
                r.status, r.finished_at = "interrupted", r.finished_at or _now()
            return len(rows)

    # ---- trials -------------------------------------------------------------------------------------------
    def trial_started(self, *, study_name: str, run_id: int | None, optuna_trial_id: int, number: int, key: str,
                      levels: dict[str, str], params: dict[str, Any], spec_id: str, spec_json: str, seed: int,
                      budget: dict[str, Any]) -> int:
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.study_name == study_name,
                                                  TrialRow.optuna_trial_id == optuna_trial_id))
            if row is None:
                row = TrialRow(study_name=study_name, optuna_trial_id=optuna_trial_id, number=number)
                s.add(row)
            else:  # the same Optuna trial restarted by Ray (a retry after a worker error)
                row.attempts += 1
            row.run_id, row.key, row.levels, row.params = run_id, key, levels, params
            row.spec_id, row.spec_json, row.seed, row.budget = spec_id, spec_json, seed, budget
            row.state, row.error, row.started_at, row.finished_at = "running", None, _now(), None
            s.flush()
            return row.id

    def record_epoch(self, trial_id: int, epoch: int, metrics: dict[str, Any]) -> None:
        with self.session() as s:
            row = s.scalar(select(EpochRow).where(EpochRow.trial_id == trial_id, EpochRow.epoch == epoch))
            if row is None:
                row = EpochRow(trial_id=trial_id, epoch=epoch)
                s.add(row)
            for k in ("train_loss", "val_loss", "val_acc", "lr", "seconds"):
                if k in metrics:
                    setattr(row, k, _finite(metrics[k]))
            t = s.get(TrialRow, trial_id)
            t.node_id = metrics.get("node_id", t.node_id)
            t.device = metrics.get("device", t.device)

    def trial_finished(self, trial_id: int, *, state: str, result: dict[str, Any] | None = None,
                       error: str | None = None, values: dict[str, Any] | None = None) -> None:
        r = result or {}
        with self.session() as s:
            t = s.get(TrialRow, trial_id)
            t.state, t.error, t.finished_at = state, error, _now()
            if r:
                t.val_acc, t.val_loss = _finite(r.get("val_acc")), _finite(r.get("val_loss"))
                t.num_params = r.get("num_params", t.num_params)
                t.cost = r.get("cost", t.cost) or {}
                t.kernel_paths = r.get("kernel_paths", t.kernel_paths) or {}
                t.wall_seconds, t.train_seconds = r.get("wall_seconds"), r.get("train_seconds")
                t.node_id = r.get("node_id", t.node_id)
                t.device = r.get("device", t.device)
            if values is not None:
                t.values = {k: _finite(v) for k, v in values.items()}

    def add_artifact(self, trial_id: int, path: Path, kind: str = "model") -> None:
        with self.session() as s:
            s.add(ArtifactRow(trial_id=trial_id, kind=kind, path=str(path), bytes=path.stat().st_size))

    def running_trials(self, study_name: str) -> dict[int, int]:
        """{Optuna trial id: our row id} of the rows a study has in state 'running'."""
        with self.session() as s:
            return {oid: rid for rid, oid in s.execute(select(TrialRow.id, TrialRow.optuna_trial_id).where(
                TrialRow.study_name == study_name, TrialRow.state == "running")).all()}

    def fail_stale_trials(self, study_name: str) -> list[int]:
        """Our 'running' rows of a study whose driver is gone → 'stale' (returns their Optuna trial ids)."""
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_name == study_name,
                                                    TrialRow.state == "running")).all()
            for r in rows:
                r.state, r.error, r.finished_at = "stale", STALE_ERROR, _now()
            return [r.optuna_trial_id for r in rows]

    # ---- reads --------------------------------------------------------------------------------------------
    def studies(self) -> list[dict[str, Any]]:
        with self.session() as s:
            counts = dict.fromkeys(("complete", "running", "failed", "stale", "stopped"), 0)
            out = []
            for st in s.scalars(select(StudyRow).order_by(StudyRow.updated_at.desc())).all():
                c = dict(counts)
                for state, n in s.execute(select(TrialRow.state, func.count()).where(
                        TrialRow.study_name == st.name).group_by(TrialRow.state)).all():
                    c[state] = n
                best = s.scalar(select(func.max(TrialRow.val_acc)).where(TrialRow.study_name == st.name,
                                                                         TrialRow.state == "complete"))
                out.append({"name": st.name, "question": st.question, "kind": st.kind, "status": st.status,
                            "cells": st.n_cells, "best_val_acc": best, "updated_at": st.updated_at, **c})
            return out

    def study(self, name: str) -> dict[str, Any]:
        with self.session() as s:
            st = s.get(StudyRow, name)
            if st is None:
                known = [r for r in s.scalars(select(StudyRow.name)).all()]
                raise StoreError(f"no study named {name!r} in {self.url}" +
                                 (f"; studies there: {', '.join(known)}" if known else " (the database is empty)"))
            runs = s.scalars(select(RunRow).where(RunRow.study_name == name).order_by(RunRow.id)).all()
            return {"name": st.name, "question": st.question, "kind": st.kind, "status": st.status,
                    "study_yaml": st.study_yaml, "config": st.config, "search_space_yaml": st.search_space_yaml,
                    "cells": st.n_cells, "created_at": st.created_at, "updated_at": st.updated_at,
                    "runs": [{"id": r.id, "status": r.status, "started_at": r.started_at, "finished_at":
                              r.finished_at, "code_version": r.code_version, "hardware": r.hardware,
                              "driver": r.driver, "wall_seconds": r.wall_seconds} for r in runs]}

    def trials(self, study_name: str, states: tuple[str, ...] | None = None) -> list[TrialView]:
        with self.session() as s:
            # the view's columns only, as plain rows: no ORM objects, and `params` (JSON nobody reads here) is not
            # decoded; 2-3× faster on a 10,000-trial study (benchmarks/bench_large_study.py)
            q = select(*(getattr(TrialRow, f) for f in TrialView.__dataclass_fields__)).where(
                TrialRow.study_name == study_name)
            if states:
                q = q.where(TrialRow.state.in_(states))
            return [_view(t) for t in s.execute(q.order_by(TrialRow.number, TrialRow.id)).all()]

    def trial(self, study_name: str, number: int) -> TrialView:
        with self.session() as s:
            t = s.scalar(select(TrialRow).where(TrialRow.study_name == study_name, TrialRow.number == number)
                         .order_by(TrialRow.id.desc()))
            if t is None:
                raise StoreError(f"study {study_name!r} has no trial number {number}")
            return _view(t)

    def epochs(self, trial_id: int) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(EpochRow).where(EpochRow.trial_id == trial_id).order_by(EpochRow.epoch)).all()
            return [{"epoch": r.epoch, "train_loss": r.train_loss, "val_loss": r.val_loss, "val_acc": r.val_acc,
                     "lr": r.lr, "seconds": r.seconds} for r in rows]

    def artifacts(self, trial_id: int) -> list[dict[str, Any]]:
        with self.session() as s:
            rows = s.scalars(select(ArtifactRow).where(ArtifactRow.trial_id == trial_id)
                             .order_by(ArtifactRow.id)).all()
            return [{"kind": r.kind, "path": r.path, "bytes": r.bytes, "created_at": r.created_at} for r in rows]

    def completed_keys(self, study_name: str) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(TrialRow.key).where(TrialRow.study_name == study_name,
                                                            TrialRow.state.in_(("complete", "stopped")))).all())


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _refuse_writes(session: Session, _context: Any, _instances: Any) -> None:
    raise StoreError(f"this store is read-only ({session.bind.url.render_as_string(hide_password=True)}): readers "
                     "(nas show, nas list, the dashboard) never write; only the driver (nas run) does")


def _json_finite(x: Any) -> Any:
    if isinstance(x, float):
        return _finite(x)
    if isinstance(x, dict):
        return {k: _json_finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_finite(v) for v in x]
    return x


def _json_dumps(x: Any) -> str:
    """JSON columns: NaN and ±inf become null, as in our float columns (PostgreSQL rejects NaN in JSON; SQLite would
    store text that is not JSON)."""
    return json.dumps(_json_finite(x))


def _finite(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if f == f and abs(f) != float("inf") else None


def _view(t: Any) -> TrialView:  # a TrialRow or a row of its columns
    return TrialView(id=t.id, number=t.number, key=t.key, levels=dict(t.levels or {}), seed=t.seed, state=t.state,
                     val_acc=t.val_acc, values=dict(t.values or {}), spec_id=t.spec_id, spec_json=t.spec_json,
                     error=t.error, cost=dict(t.cost or {}), num_params=t.num_params,
                     kernel_paths=dict(t.kernel_paths or {}), node_id=t.node_id, wall_seconds=t.wall_seconds,
                     train_seconds=t.train_seconds, budget=dict(t.budget or {}), started_at=t.started_at,
                     finished_at=t.finished_at)


__all__ = ["STALE_ERROR", "Store", "TrialView", "code_version", "hardware", "make_engine", "sqlite_path"]
