"""Plan a study before anything runs: the validated study → its cells, each with its resolved spec, key, CPU
pre-flight and estimated cost. No Ray here: `nas run --dry-run` stops after planning and never imports it.

A grid's arms (combinations of factor levels) are resolved once, here; a cell is an arm and a seed, so later rounds of
adaptive seeding reuse the same resolved specs. A search's sampled points are resolved by `Plan.resolve_point`, also
in the driver, as Optuna proposes them.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from blocks import ArchSpec, NasError

from .config import StudyFile
from .errors import StudyConfigError
from .schema import Study
from .space import SEED_PARAM, Arm, Cell, SearchSpace, grid_arms, load_search_space, search_cell, trial_spec

PREFLIGHT_BATCH = 8  # the timed pre-flight's batch (`nas run --dry-run`'s cost estimates)
CHECK_BATCH = 2  # the untimed check's: enough for batch statistics, a quarter of the work
PREFLIGHT_THREADS = 8  # untimed checks run at once at most


@dataclass(frozen=True)
class Preflight:
    """A spec's CPU pre-flight: its parameter count and, when timed, the time of one forward and one training step
    (batch of 8); None when only checked (`nas run` needs the check, not a CPU estimate)."""
    params: int
    forward_ms: float | None
    step_ms: float | None


@dataclass
class Plan:
    """Everything known about a study before anything runs."""
    file: StudyFile
    space: SearchSpace
    num_classes: int
    arms: list[Arm]  # a grid's combinations of levels with their specs; a search's base spec (fixed choices)
    preflight: dict[str, Preflight] = field(default_factory=dict)  # spec id → its pre-flight

    @property
    def study(self) -> Study:
        return self.file.study

    @property
    def is_grid(self) -> bool:
        return self.study.kind == "grid"

    @property
    def cells(self) -> list[Cell]:
        """The first round: every arm × the first seeds (a search's cells are sampled as it runs: none here)."""
        return self.cells_for({a.spec.id: self.study.initial_seeds for a in self.arms}) if self.is_grid else []

    @property
    def n_trials(self) -> int:
        """Trials of the first round (a grid) or of the whole search."""
        return len(self.cells) if self.is_grid else self.study.search.n_trials

    def cells_for(self, seeds_by_spec: Mapping[str, Sequence[int]]) -> list[Cell]:
        """The cells of the given arms (by spec id) and seeds, seed by seed (every arm's first seed, then every arm's
        second, ...): a study cut short (a deadline, a crash) has every level with about as many seeds, not whole
        levels missing."""
        lists = [(a, list(seeds_by_spec.get(a.spec.id, ()))) for a in self.arms]
        rank = max((len(seeds) for _, seeds in lists), default=0)
        return [a.cell(self.study.name, seeds[i]) for i in range(rank) for a, seeds in lists if i < len(seeds)]

    def grid_cell(self, params: Mapping[str, Any]) -> Cell:
        """The grid cell named by Optuna parameters (factor levels and seed): looked up, never resolved again."""
        levels = {f: str(params[f]) for f in self.study.factors}
        arm = next((a for a in self.arms if a.levels == levels), None)
        if arm is None:
            raise StudyConfigError(f"no grid cell has the levels {levels}", key="factors")
        return arm.cell(self.study.name, int(params[SEED_PARAM]))

    def resolve_point(self, params: Mapping[str, Any]) -> Cell:
        """A search's sampled point as a cell, its spec (and parameter budget) resolved here, in the driver;
        StudyConfigError when the point is not a valid model."""
        return search_cell(self.study, self.space, dict(params), img_size=self.study.data.img_size,
                           num_classes=self.num_classes)

    def estimate_seconds(self, spec_id: str) -> float:
        """Rough CPU time of one trial of this spec from its pre-flight (batch of 8, scaled linearly to the batch
        size): training steps plus one evaluation pass per epoch. A guide for planning, not a promise."""
        pre, st = self.preflight[spec_id], self.study
        if pre.step_ms is None or pre.forward_ms is None:
            raise NasError(f"spec {spec_id} was checked without timing: plan with plan_study(..., timed=True)")
        scale = st.train.batch_size / PREFLIGHT_BATCH
        steps = math.ceil(st.data.n_train / st.train.batch_size)
        evals = math.ceil(st.data.n_test / st.train.batch_size)
        return st.train.epochs * (steps * pre.step_ms + evals * pre.forward_ms) * scale / 1e3


def plan_study(sf: StudyFile, progress: Callable[[str], None] | None = None, *, timed: bool = True,
               beside: Callable[[list[Arm]], None] | None = None) -> Plan:
    """Check everything that can be checked on the CPU before a trial is scheduled: the search space, the objectives,
    the cluster address, the data, every distinct spec (built, a forward, a training step). StudyConfigError
    names the file and the key. `timed` also times each spec as a worker would run it (for `estimate_seconds`);
    `nas run` leaves it off: the check alone is several times cheaper (a GPU study's driver waited ~40 s on 5 timed
    CPU pre-flights of a 12-block model before its first trial). `beside(arms)`, when given, runs on this thread
    while the pre-flights run on another (`nas run` starts Ray and the kernel warm-up there: both wait on other
    processes, so the seconds overlap); a pre-flight's error is raised before one of `beside`'s."""
    study = sf.study
    space = load_search_space(study.search_space, file=sf.path)
    if "throughput" in [o.metric for o in study.objectives] and study.measure.skip:
        raise StudyConfigError("objective 'throughput' needs measure.skip: false", file=sf.path, key="objectives")
    address = study.execution.address
    if address and address != "auto" and not address.startswith("ray://"):
        check_reachable(address, file=sf.path)  # before anything is written, not when Ray starts
    num_classes = _probe_data(study, sf.path)
    if study.kind == "grid":
        arms = grid_arms(study, space, img_size=study.data.img_size, num_classes=num_classes, file=sf.path)
    else:
        base, budget = trial_spec(study, space, {}, img_size=study.data.img_size, num_classes=num_classes,
                                  file=sf.path)
        arms = [Arm({"(base)": "fixed choices"}, base, budget)]
    if beside is None:
        return Plan(sf, space, num_classes, arms, _preflight_all(study, arms, sf.path, progress, timed))
    with ThreadPoolExecutor(1, thread_name_prefix="preflight") as pool:
        checks = pool.submit(_preflight_all, study, arms, sf.path, progress, timed)
        try:
            beside(arms)
        except BaseException:
            checks.result()  # waits for the pre-flights: their error, if any, is the one to show
            raise
        return Plan(sf, space, num_classes, arms, checks.result())


def _preflight_all(study: Study, arms: list[Arm], file: str,
                   progress: Callable[[str], None] | None, timed: bool) -> dict[str, Preflight]:
    import torch

    def check(arm: Arm) -> Preflight:
        try:
            return preflight_spec(arm.spec, timed=timed)
        except Exception as e:  # noqa: BLE001 - any failure here is the spec's
            raise StudyConfigError(f"pre-flight failed for {arm.levels}: {type(e).__name__}: {e}", file=file,
                                   key="factors" if study.kind == "grid" else "fixed") from None

    if not timed:  # the checks side by side: PyTorch's CPU ops run outside the GIL (5 specs of a 12-block Vim:
        # 9.6 s one after the other on the GPU machine's driver, the critical path of a study's start)
        workers = max(1, min(len(arms), os.cpu_count() or 1, PREFLIGHT_THREADS))
        if progress:
            progress(f"pre-flight of {len(arms)} spec(s), {workers} at a time")
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads // workers))  # the cores shared out, not each check's ops on all of them
        try:
            with ThreadPoolExecutor(workers, thread_name_prefix="preflight-spec") as pool:
                futures = [pool.submit(check, arm) for arm in arms]
                return {arm.spec.id: f.result() for arm, f in zip(arms, futures)}  # the first failing arm's error
        finally:
            torch.set_num_threads(threads)
    out: dict[str, Preflight] = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(study.execution.cpus_per_trial)))  # time each as a worker would run it: alone
    try:
        for arm in arms:
            if progress:
                progress(f"pre-flight {arm.levels}")
            out[arm.spec.id] = check(arm)
    finally:
        torch.set_num_threads(threads)
    return out


def preflight_spec(spec: ArchSpec, *, timed: bool = True) -> Preflight:
    """Build on the CPU, run a forward pass of a small batch and a training step: catches what validation on the meta
    device cannot (numerics, shape errors deep in a mixer) before any trial is scheduled. Timed, each runs twice
    (batch of 8) and the second is timed; untimed, each runs once on a batch of 2."""
    import torch

    from blocks import build_backbone

    torch.manual_seed(0)
    model = build_backbone(spec, kernel_backend="reference").eval()
    batch, runs = (PREFLIGHT_BATCH, 2) if timed else (CHECK_BATCH, 1)
    x = torch.randn(batch, spec.in_chans, spec.img_size, spec.img_size)
    with torch.no_grad():
        for _ in range(runs):  # timed on the last: the first call pays one-off costs
            t = time.perf_counter()
            out = model(x)
    ms = (time.perf_counter() - t) * 1e3
    if out.shape != (batch, spec.num_classes) or not torch.isfinite(out).all():
        raise NasError(f"spec {spec.id}: forward gave shape {tuple(out.shape)} / non-finite values")
    model.train()
    for _ in range(runs):  # one training step (forward + backward), timed on the last
        t = time.perf_counter()
        model(x).float().square().mean().backward()
    step_ms = (time.perf_counter() - t) * 1e3
    params = sum(p.numel() for p in model.parameters())
    return Preflight(params, ms, step_ms) if timed else Preflight(params, None, None)


def _probe_data(study: Study, file: str) -> int:
    """Make the data on the CPU before anything runs: its class count, and any data error (a missing path, more
    images asked of a finite set than it has). Generated sets are probed with a small slice; digits in full (cheap)."""
    from .data import make_dataset

    d = study.data
    full = d.name == "digits"
    try:
        probe = make_dataset(d.name, seed=0, n_train=d.n_train if full else min(d.n_train, 32),
                             n_test=d.n_test if full else min(d.n_test, 32), img_size=d.img_size, **d.knobs)
    except NasError as e:
        raise StudyConfigError(str(e), file=file, key="data") from None
    return probe.num_classes


def check_reachable(address: str, timeout_s: float = 10.0, file: str | None = None) -> None:
    """Fail fast on a cluster that is not there (ray.init would wait a long time)."""
    import socket

    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or address, int(port) if port.isdigit() else 6379), timeout=timeout_s):
            pass
    except (OSError, ValueError) as e:
        raise StudyConfigError(f"no Ray cluster answers at {address!r} ({e}); start it with `ray start --head` or "
                               "check the address", file=file, key="execution.address") from None


__all__ = ["PREFLIGHT_BATCH", "Plan", "Preflight", "check_reachable", "plan_study", "preflight_spec"]
