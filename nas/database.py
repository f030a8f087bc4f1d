"""The database behind a study: our tables (SQLAlchemy) and how every engine is opened, read-write or read-only.

One URL holds Optuna's tables and ours (all named `nas_*`). SQLite files get WAL mode and a busy timeout, so a reader
(dashboard, `nas show`) never blocks the driver; read-only opens a SQLite file with `mode=ro`, so a reader cannot write
even by mistake. `open_target` is the one place that knows how: our engine and Optuna's storage both go through it.
Only this module and `nas.store` talk SQL.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (JSON, BigInteger, DateTime, Float, ForeignKey, Integer, String, Text, UniqueConstraint,
                        create_engine, event)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool

from .errors import StoreError
from .records import finite

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

SQLITE_TIMEOUT_S = 60


def now() -> datetime:
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
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    n_cells: Mapped[int] = mapped_column(Integer, default=0)


class RunRow(Base):
    """One invocation of `nas run` (a study resumed three times has three)."""
    __tablename__ = "nas_runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_name: Mapped[str] = mapped_column(ForeignKey("nas_studies.name"), index=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="running")
    driver: Mapped[str] = mapped_column(String(256), default="")  # host:pid
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=now)
    code_version: Mapped[str] = mapped_column(String(128), default="")
    hardware: Mapped[dict] = mapped_column(JSON, default=dict)
    command: Mapped[str] = mapped_column(Text, default="")
    wall_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)


class TrialRow(Base):
    """One attempt of one cell: a stale or failed attempt stays as history, its re-run is a new row. An attempt is
    one Optuna trial: `number` is Optuna's trial number in the study (unique per study, as is `optuna_trial_id`)."""
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
    state: Mapped[str] = mapped_column(String(16), default="running")  # a TrialState value
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    node_id: Mapped[str | None] = mapped_column(String(128), nullable=True)
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=now)
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


EPOCH_METRICS = ("train_loss", "val_loss", "val_acc", "lr", "seconds")


class ArtifactRow(Base):
    __tablename__ = "nas_artifacts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    trial_id: Mapped[int] = mapped_column(ForeignKey("nas_trials.id"), index=True)
    kind: Mapped[str] = mapped_column(String(32), default="model")
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)  # model files over 2 GiB
    created_at: Mapped[datetime] = mapped_column(DateTime, default=now)


# ------------------------------------------------------------------------------------------------- engines
def sqlite_path(url: str) -> Path | None:
    """The file behind a `sqlite:///` URL (None for other databases and in-memory SQLite)."""
    if not url.startswith("sqlite:///"):
        return None
    p = url[len("sqlite:///"):]
    return None if p in ("", ":memory:") else Path(p)


def open_target(url: str, *, read_only: bool) -> tuple[str, dict[str, Any]]:
    """(URL to connect to, engine keyword arguments) for `url`: the one set-up our engine and Optuna's storage share.
    Read-only SQLite is the file opened with `mode=ro` (a missing file is a StoreError, never created)."""
    path = sqlite_path(url)
    if not url.startswith("sqlite"):
        return url, {"pool_pre_ping": True}
    if path is None:  # in memory: one connection shared by every thread, or each would see its own database
        return url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S, "check_same_thread": False},
                     "poolclass": StaticPool}
    if read_only:
        if not path.exists():
            raise StoreError(f"no study database at {url} (run `nas run STUDY` first, or pass --db URL)")
        return f"sqlite:///file:{path.resolve()}?mode=ro&uri=true", {"connect_args": {"timeout": SQLITE_TIMEOUT_S,
                                                                                    "uri": True}}
    path.parent.mkdir(parents=True, exist_ok=True)
    return url, {"connect_args": {"timeout": SQLITE_TIMEOUT_S}}


def _sqlite_pragmas(engine: Engine, *, wal: bool) -> None:
    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_conn, _record) -> None:  # noqa: ANN001
        cur = dbapi_conn.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_TIMEOUT_S * 1000}")
        cur.close()


def make_engine(url: str, *, read_only: bool = False) -> Engine:
    """An engine for `url` (see `open_target`); a StoreError with a hint when it cannot connect."""
    try:
        target, kwargs = open_target(url, read_only=read_only)
        engine = create_engine(target, json_serializer=_json_dumps, **kwargs)
        if url.startswith("sqlite"):
            _sqlite_pragmas(engine, wal=not read_only and sqlite_path(url) is not None)
        with engine.connect():
            pass
    except StoreError:
        raise
    except (SQLAlchemyError, ModuleNotFoundError, OSError, ValueError) as e:
        raise StoreError(f"cannot open the study database {url!r}: {str(e).splitlines()[0]}. Check the URL "
                         "(sqlite:///path/to/file.db or postgresql+psycopg://user:pass@host/db) and that the server "
                         "is running.") from None
    return engine


def optuna_storage(url: str, *, read_only: bool = False) -> RDBStorage:
    """Optuna's storage in the same database; read-only: no table creation, no migration check, SQLite `mode=ro`."""
    from .beside import wait_for_imports

    wait_for_imports()  # nas/beside.py: never import Optuna beside its head start
    import optuna

    target, kwargs = open_target(url, read_only=read_only)
    extra = {"skip_compatibility_check": True, "skip_table_creation": True} if read_only else {}
    try:
        return optuna.storages.RDBStorage(target, engine_kwargs=kwargs, **extra)
    except Exception as e:  # optuna wraps driver errors in several types
        raise StoreError(f"Optuna cannot open {url!r}: {str(e).splitlines()[0]}") from None


def _json_finite(x: Any) -> Any:
    if isinstance(x, float):
        return finite(x)
    if isinstance(x, dict):
        return {k: _json_finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_finite(v) for v in x]
    return x


def _json_dumps(x: Any) -> str:
    """JSON columns: NaN and ±inf become null, as in our float columns (PostgreSQL rejects NaN in JSON; SQLite would
    store text that is not JSON)."""
    return json.dumps(_json_finite(x))


__all__ = ["ArtifactRow", "Base", "EPOCH_METRICS", "EpochRow", "RunRow", "SQLITE_TIMEOUT_S", "StudyRow", "TrialRow",
           "make_engine", "now", "open_target", "optuna_storage", "sqlite_path"]
