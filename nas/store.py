"""The study database: Optuna's RDB storage plus our own tables beside it, one URL for both.

Optuna holds studies and trials (parameters, values, states) so `optuna.load_study` opens our database unchanged.
Our tables (`nas.database`) hold what Optuna does not: the study file and search space text, every run of the driver
with its code version and hardware, one row per trial attempt with its spec, seed, error, node, costs and kernel
paths, per-epoch curves, and artifacts (model files). Only the driver writes; readers open the store read-only
(`Store(url, read_only=True)`, whose `optuna_storage()` is read-only too). Typed records (`nas.records`) go in and
come out.
"""

from __future__ import annotations

import os
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping, Sequence

from sqlalchemy import event, func, insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from .database import (EPOCH_METRICS, SQLITE_TIMEOUT_S, ArtifactRow, Base, EpochRow, RunRow, StudyRow,  # noqa: F401
                       TrialRow, make_engine, now, optuna_storage, sqlite_path)
from .errors import StoreError
from .records import (ArtifactRecord, EpochReport, RunRecord, StudyRecord, StudySummary, TrialOutcome, TrialStart,
                      TrialState, TrialView, finite)

if TYPE_CHECKING:
    from optuna.storages import RDBStorage

STALE_ERROR = "stale: the driver stopped while this trial was running (killed or crashed); re-queued"


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
    """Where the driver runs: host, platform, Python and PyTorch versions, CPUs and GPUs."""
    import platform

    import torch

    hw: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "python":
                          platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count()}
    if torch.cuda.is_available():
        hw["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return hw


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
            event.listen(self._session, "do_orm_execute", _refuse_bulk_writes)

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

    def optuna_storage(self) -> RDBStorage:
        """Optuna's storage in this database, opened the same way as ours (read-only when this store is)."""
        return optuna_storage(self.url, read_only=self.read_only)

    # ---- studies and runs ---------------------------------------------------------------------------------
    def upsert_study(self, *, name: str, question: str, kind: str, study_yaml: str, config: dict[str, Any],
                     search_space_yaml: str, n_cells: int) -> None:
        with self.session() as s:
            row = s.get(StudyRow, name)
            if row is None:
                row = StudyRow(name=name, created_at=now())
                s.add(row)
            row.question, row.kind, row.study_yaml, row.config = question, kind, study_yaml, config
            row.search_space_yaml, row.n_cells, row.status, row.updated_at = search_space_yaml, n_cells, "running", \
                now()

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
            run.status, run.finished_at, run.wall_seconds = status, now(), wall_seconds
            st = s.get(StudyRow, run.study_name)
            st.status, st.updated_at = status, now()

    def heartbeat(self, run_id: int) -> None:
        with self.session() as s:
            s.get(RunRow, run_id).heartbeat_at = now()

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
                elif (now() - r.heartbeat_at).total_seconds() < stale_after_s:
                    return r.driver
            return None

    def mark_interrupted_runs(self, study_name: str) -> int:
        """Runs left 'running' by a driver that died are marked interrupted (their stale trials are handled by
        `fail_stale_trials`)."""
        with self.session() as s:
            rows = s.scalars(select(RunRow).where(RunRow.study_name == study_name, RunRow.status == "running")).all()
            for r in rows:
                r.status, r.finished_at = "interrupted", r.finished_at or now()
            return len(rows)

    # ---- trials -------------------------------------------------------------------------------------------
    def trial_started(self, study_name: str, run_id: int | None, start: TrialStart) -> int:
        """The row of this attempt (created; or, when Ray restarts the same Optuna trial, counted once more)."""
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.study_name == study_name,
                                                  TrialRow.number == start.number))
            if row is None:
                row = TrialRow(study_name=study_name, optuna_trial_id=start.optuna_trial_id, number=start.number)
                s.add(row)
            else:  # the same Optuna trial restarted by Ray (a retry after a worker error)
                row.attempts += 1
            _set_start(row, run_id, start)
            row.state, row.error, row.started_at, row.finished_at = TrialState.RUNNING.value, None, now(), None
            s.flush()
            return row.id

    def record_stale(self, study_name: str, run_id: int | None, start: TrialStart) -> int:
        """An Optuna trial a dead driver left RUNNING before it wrote our row: recorded as a stale attempt (once:
        a second call for the same trial returns the same row)."""
        with self.session() as s:
            row = s.scalar(select(TrialRow).where(TrialRow.study_name == study_name,
                                                  TrialRow.number == start.number))
            if row is not None:
                return row.id
            row = TrialRow(study_name=study_name, optuna_trial_id=start.optuna_trial_id, number=start.number)
            _set_start(row, run_id, start)
            row.state, row.error, row.finished_at = TrialState.STALE.value, STALE_ERROR, now()
            s.add(row)
            s.flush()
            return row.id

    def record_epoch(self, trial_id: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        """One epoch's metrics (re-reporting an epoch updates it); `node_id` and `device` go to the trial."""
        self.record_epochs([EpochReport(trial_id, epoch, metrics)])

    def record_epochs(self, reports: Sequence[EpochReport]) -> None:
        """Many epochs in one transaction, as `record_epoch` would write them one by one (later reports of the same
        epoch update it): one read of the rows that exist, then inserts and updates in bulk. The callback batches
        what the workers report, so a thousand trials reporting every second cost a few statements a second, not
        a transaction each (benchmarks/bench_scale.py)."""
        cols: dict[tuple[int, int], dict[str, Any]] = {}
        where: dict[int, dict[str, Any]] = {}  # trial row → its node_id and device, where reported
        for r in reports:
            cols.setdefault((r.trial_id, r.epoch), {}).update(
                {k: finite(r.metrics[k]) for k in EPOCH_METRICS if k in r.metrics})
            where.setdefault(r.trial_id, {}).update({k: r.metrics[k] for k in ("node_id", "device")
                                                     if k in r.metrics})
        if not cols:
            return
        with self.session() as s:
            existing: dict[tuple[int, int], int] = {}
            for ids in _chunks(sorted({t for t, _ in cols})):
                existing.update({(t, e): i for i, t, e in s.execute(select(EpochRow.id, EpochRow.trial_id,
                                                                           EpochRow.epoch).where(
                    EpochRow.trial_id.in_(ids)))})
            new = [{"trial_id": t, "epoch": e, **dict.fromkeys(EPOCH_METRICS), **c} for (t, e), c in cols.items()
                   if (t, e) not in existing]
            changed = [{"id": existing[k], **c} for k, c in cols.items() if k in existing and c]
            if new:
                s.execute(insert(EpochRow), new)
            if changed:
                s.execute(update(EpochRow), changed)
            where = {t: w for t, w in where.items() if w}
            moved = []
            for ids in _chunks(sorted(where)):
                for i, node_id, device in s.execute(select(TrialRow.id, TrialRow.node_id, TrialRow.device).where(
                        TrialRow.id.in_(ids))):
                    now_at = {"node_id": node_id, "device": device, **where[i]}
                    if (now_at["node_id"], now_at["device"]) != (node_id, device):
                        moved.append({"id": i, **now_at})
            if moved:
                s.execute(update(TrialRow), moved)

    def trial_finished(self, trial_id: int, state: TrialState, outcome: TrialOutcome | None = None, *,
                       error: str | None = None) -> None:
        with self.session() as s:
            t = s.get(TrialRow, trial_id)
            t.state, t.error, t.finished_at = TrialState(state).value, error, now()
            if outcome is not None:
                t.val_acc, t.val_loss = finite(outcome.val_acc), finite(outcome.val_loss)
                t.num_params = outcome.num_params if outcome.num_params is not None else t.num_params
                t.cost = outcome.cost or t.cost or {}
                t.kernel_paths = outcome.kernel_paths or t.kernel_paths or {}
                t.wall_seconds, t.train_seconds = outcome.wall_seconds, outcome.train_seconds
                t.node_id, t.device = outcome.node_id or t.node_id, outcome.device or t.device
                t.values = {k: finite(v) for k, v in outcome.values.items()}

    def add_artifact(self, trial_id: int, path: Path, kind: str = "model") -> None:
        with self.session() as s:
            s.add(ArtifactRow(trial_id=trial_id, kind=kind, path=str(path), bytes=path.stat().st_size))

    def running_trials(self, study_name: str) -> dict[int, int]:
        """{Optuna trial number: our row id} of the rows a study has in state running."""
        with self.session() as s:
            return {n: rid for rid, n in s.execute(select(TrialRow.id, TrialRow.number).where(
                TrialRow.study_name == study_name, TrialRow.state == TrialState.RUNNING.value)).all()}

    def fail_stale_trials(self, study_name: str) -> list[int]:
        """Our running rows of a study whose driver is gone → stale (returns their Optuna trial numbers)."""
        with self.session() as s:
            rows = s.scalars(select(TrialRow).where(TrialRow.study_name == study_name,
                                                    TrialRow.state == TrialState.RUNNING.value)).all()
            for r in rows:
                r.state, r.error, r.finished_at = TrialState.STALE.value, STALE_ERROR, now()
            return [r.number for r in rows]

    # ---- reads --------------------------------------------------------------------------------------------
    def studies(self) -> list[StudySummary]:
        """Every study, most recently updated first."""
        with self.session() as s:
            out = []
            for st in s.scalars(select(StudyRow).order_by(StudyRow.updated_at.desc())).all():
                counts = dict.fromkeys(TrialState, 0)
                for state, n in s.execute(select(TrialRow.state, func.count()).where(
                        TrialRow.study_name == st.name).group_by(TrialRow.state)).all():
                    counts[TrialState(state)] = n
                best = s.scalar(select(func.max(TrialRow.val_acc)).where(
                    TrialRow.study_name == st.name, TrialRow.state == TrialState.COMPLETE.value))
                out.append(StudySummary(st.name, st.question, st.kind, st.status, st.n_cells, best, st.updated_at,
                                        counts))
            return out

    def study(self, name: str) -> StudyRecord:
        with self.session() as s:
            st = s.get(StudyRow, name)
            if st is None:
                known = list(s.scalars(select(StudyRow.name)).all())
                raise StoreError(f"no study named {name!r} in {self.url}" +
                                 (f"; studies there: {', '.join(known)}" if known else " (the database is empty)"))
            runs = s.scalars(select(RunRow).where(RunRow.study_name == name).order_by(RunRow.id)).all()
            return StudyRecord(st.name, st.question, st.kind, st.status, st.study_yaml, dict(st.config or {}),
                               st.search_space_yaml, st.n_cells, st.created_at, st.updated_at,
                               [RunRecord(r.id, r.status, r.started_at, r.finished_at, r.code_version,
                                          dict(r.hardware or {}), r.driver, r.wall_seconds) for r in runs])

    def trials(self, study_name: str, states: tuple[TrialState, ...] | None = None) -> list[TrialView]:
        """Every attempt of a study (or those in `states`), in Optuna's trial order."""
        with self.session() as s:
            # the view's columns only, as plain rows: no ORM objects, and `params` (JSON nobody reads here) is not
            # decoded; 2-3× faster on a 10,000-trial study (benchmarks/bench_large_study.py)
            q = select(*(getattr(TrialRow, f) for f in TrialView.__dataclass_fields__)).where(
                TrialRow.study_name == study_name)
            if states:
                q = q.where(TrialRow.state.in_([TrialState(x).value for x in states]))
            return [_view(t) for t in s.execute(q.order_by(TrialRow.number, TrialRow.id)).all()]

    def trial(self, study_name: str, number: int) -> TrialView:
        with self.session() as s:
            t = s.scalar(select(TrialRow).where(TrialRow.study_name == study_name, TrialRow.number == number)
                         .order_by(TrialRow.id.desc()))
            if t is None:
                raise StoreError(f"study {study_name!r} has no trial number {number}")
            return _view(t)

    def epochs(self, trial_id: int) -> list[dict[str, Any]]:
        """Per-epoch metrics, one mapping per epoch: {"epoch", "train_loss", "val_loss", "val_acc", "lr", "seconds"}."""
        with self.session() as s:
            rows = s.scalars(select(EpochRow).where(EpochRow.trial_id == trial_id).order_by(EpochRow.epoch)).all()
            return [{"epoch": r.epoch, **{k: getattr(r, k) for k in EPOCH_METRICS}} for r in rows]

    def artifacts(self, trial_id: int) -> list[ArtifactRecord]:
        with self.session() as s:
            rows = s.scalars(select(ArtifactRow).where(ArtifactRow.trial_id == trial_id)
                             .order_by(ArtifactRow.id)).all()
            return [ArtifactRecord(r.kind, r.path, r.bytes, r.created_at) for r in rows]

    def completed_keys(self, study_name: str) -> set[str]:
        """Keys of the cells that have a result (complete or stopped): a resumed study never runs them again."""
        with self.session() as s:
            return set(s.scalars(select(TrialRow.key).where(
                TrialRow.study_name == study_name,
                TrialRow.state.in_([x.value for x in TrialState.DONE]))).all())


def _chunks(ids: list[int], size: int = 1000) -> Iterator[list[int]]:
    """`ids` in slices small enough for one IN (...) on every database."""
    for i in range(0, len(ids), size):
        yield ids[i:i + size]


def _set_start(row: TrialRow, run_id: int | None, start: TrialStart) -> None:
    row.run_id, row.key, row.levels, row.params = run_id, start.key, start.levels, start.params
    row.spec_id, row.spec_json, row.seed, row.budget = start.spec_id, start.spec_json, start.seed, start.budget


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


def _refuse_bulk_writes(state: Any) -> None:  # statements that skip the flush (bulk inserts and updates)
    if state.is_insert or state.is_update or state.is_delete:
        _refuse_writes(state.session, None, None)


def _view(t: Any) -> TrialView:  # a TrialRow or a row of its columns
    return TrialView(id=t.id, number=t.number, key=t.key, levels=dict(t.levels or {}), seed=t.seed,
                     state=TrialState(t.state), val_acc=t.val_acc, values=dict(t.values or {}), spec_id=t.spec_id,
                     spec_json=t.spec_json, error=t.error, cost=dict(t.cost or {}), num_params=t.num_params,
                     kernel_paths=dict(t.kernel_paths or {}), node_id=t.node_id, wall_seconds=t.wall_seconds,
                     train_seconds=t.train_seconds, budget=dict(t.budget or {}), started_at=t.started_at,
                     finished_at=t.finished_at, device=t.device,
                     attempts=t.attempts or 1)


__all__ = ["STALE_ERROR", "ArtifactRecord", "EpochReport", "RunRecord", "Store", "StudyRecord", "StudySummary",
           "TrialOutcome", "TrialStart", "TrialState", "TrialView", "code_version", "hardware", "make_engine",
           "optuna_storage", "sqlite_path"]
