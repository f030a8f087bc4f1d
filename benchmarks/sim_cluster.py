"""A simulated Ray cluster for Tune's controller: thousands of trials "running at once" on a 2-core machine.

Ray Tune runs every trial in an actor of its own, and every actor is a worker process: a 2-core machine cannot host
1,000 of them (each takes ~100 MB and a second or two of CPU to start). What limits a study at that scale is the
driver, where Tune's controller, our searcher (Optuna's ask/tell), our callback and the store all run in one thread;
so this module keeps the driver whole and replaces only what sits below Tune's controller: `SimActorManager` stands in
for Ray's `RayActorManager` (the one object through which `TuneController` starts actors and runs their tasks) and
hosts each trial's trainable as a plain object in this process. A task (`train`, `reset`, `stop`, ...) resolves on a
simulated clock: a `train` result comes `epoch_s` (±20 %) after Tune asked for it, as a worker training one epoch
would answer; the driver processes one event per `next()` call, as with Ray (so a slow driver delays every trial, as
a real one does: Tune asks a trainable for its next epoch only after handling its last).

What is real: `nas.driver` and `nas.execute.TuneRunner` (round, `tune.Tuner`, `TuneController` with its trial
bookkeeping, scheduler, `ConcurrencyLimiter`, experiment-state checkpoints), our `StudySearcher` with Optuna's
storage, our `StoreCallback` and the `Store` (SQLite or PostgreSQL). What is not: Ray's core (GCS, raylets, actor
placement, object transfer, worker start-up, network), the worker side of a trial (training, `tune.report` in a
function trainable's session, checkpoint upload to shared storage); a finished trial's model file
(`scale_run.MODEL_BYTES`) is written on the driver's disk and copied to the artifacts by the callback, as it is on a
cluster whose `storage.ray_results` is shared.

The interface replaced is Ray's internal one (`ray.air.execution._internal.RayActorManager`, Ray 2.60): `install()`
checks the methods `TuneController` calls and refuses to run on a Ray whose controller needs others.
"""

from __future__ import annotations

import heapq
import itertools
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from ray.air.execution._internal.tracked_actor import TrackedActor

RPC_S = 0.001  # a non-training task (reset, stop, save, get_auto_filled_metrics): one round trip to the worker


@dataclass(eq=False)
class _Event:
    due: float
    fire: Callable[[], None]
    actor: TrackedActor | None = None
    kind: str = ""  # start | train | task | stop
    cancelled: bool = False


class _Method:
    def __init__(self, instance: Any, name: str, clock: "SimActorManager") -> None:
        self.instance, self.name, self.clock = instance, name, clock

    def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.clock.worker_call(self.instance, self.name, args, kwargs)


class _Handle:
    """What Tune holds as a trial's `ray_actor`: `handle.method.remote(...)` runs the method in this process."""

    def __init__(self, instance: Any, clock: "SimActorManager") -> None:
        self._instance, self._clock = instance, clock

    def __getattr__(self, name: str) -> _Method:
        return _Method(self._instance, name, self._clock)


class _Futures:
    def resolve_future(self, future: Any) -> None:  # `TuneController._schedule_trial_export` only
        pass


class SimActorManager:
    """`RayActorManager`'s interface over a simulated cluster of `slots` trial slots (see the module docstring)."""

    def __init__(self, resource_manager: Any = None, *, slots: int, epoch_s: float = 1.0, start_s: float = 0.5,
                 seed: int = 0) -> None:
        self.slots, self.epoch_s, self.start_s = slots, epoch_s, start_s
        self.rng = random.Random(seed)
        self._live_actors_to_ray_actors_resources: dict[TrackedActor, tuple[_Handle, Any]] = {}
        self._instances: dict[TrackedActor, Any] = {}
        self._pending: dict[TrackedActor, tuple[Any, dict[str, Any], Any]] = {}  # waiting for a slot
        self._starting: dict[TrackedActor, _Event] = {}
        self._queued_tasks: dict[TrackedActor, list[tuple]] = {}  # tasks asked of an actor before it started
        self._tasks: dict[TrackedActor, set[_Event]] = {}
        self._n_tasks = 0
        self._failed_actor_ids: set[int] = set()
        self._actor_task_events = _Futures()
        self._heap: list[tuple[float, int, _Event]] = []
        self._seq = itertools.count()
        self.worker_s = 0.0  # time spent in the simulated workers' code (trainables), not the driver's
        self.lags: list[float] = []  # per train result: seconds between "the worker sent it" and "the driver took it"
        self.results = 0

    # ---- what the simulated workers do, timed apart from the driver ------------------------------------------
    def worker_call(self, instance: Any, name: str, args: tuple, kwargs: dict) -> Any:
        t = time.process_time()
        try:
            return getattr(instance, name)(*args, **kwargs)
        finally:
            self.worker_s += time.process_time() - t

    def _push(self, delay: float, fire: Callable[[], None], actor: TrackedActor | None, kind: str) -> _Event:
        ev = _Event(time.monotonic() + delay, fire, actor, kind)
        heapq.heappush(self._heap, (ev.due, next(self._seq), ev))
        return ev

    # ---- actors --------------------------------------------------------------------------------------------
    def add_actor(self, cls: Any, kwargs: dict[str, Any], resource_request: Any, *, on_start: Callable | None = None,
                  on_stop: Callable | None = None, on_error: Callable | None = None) -> TrackedActor:
        actor = TrackedActor(uuid.uuid4().int, on_start=on_start, on_stop=on_stop, on_error=on_error)
        self._pending[actor] = (cls, kwargs, resource_request)
        return actor

    def _start_pending(self) -> None:
        while self._pending and len(self._live_actors_to_ray_actors_resources) + len(self._starting) < self.slots:
            actor, (cls, kwargs, request) = next(iter(self._pending.items()))
            del self._pending[actor]
            t = time.process_time()
            instance = cls.__ray_metadata__.modified_class(**kwargs)  # the trainable, as its worker would build it
            self.worker_s += time.process_time() - t

            def started(actor: TrackedActor = actor, instance: Any = instance, request: Any = request) -> None:
                del self._starting[actor]
                self._instances[actor] = instance
                self._live_actors_to_ray_actors_resources[actor] = (_Handle(instance, self), request)
                if actor._on_start:
                    actor._on_start(actor)
                for args in self._queued_tasks.pop(actor, []):
                    self._schedule(*args)

            self._starting[actor] = self._push(self.start_s, started, actor, "start")

    def remove_actor(self, tracked_actor: TrackedActor, kill: bool = False, stop_future: Any = None) -> bool:
        if tracked_actor.actor_id in self._failed_actor_ids:
            return False
        if tracked_actor in self._live_actors_to_ray_actors_resources:
            if stop_future is not None:  # the trainable's `stop` task: its end is the actor's end
                stop_future.fire = lambda: self._stopped(tracked_actor)
            else:
                self._push(0.0 if kill else RPC_S, lambda: self._stopped(tracked_actor), tracked_actor, "stop")
            return True
        if tracked_actor in self._starting:
            self._starting.pop(tracked_actor).cancelled = True
            return False
        if tracked_actor in self._pending:
            del self._pending[tracked_actor]
            return False
        raise ValueError(f"Unknown tracked actor: {tracked_actor}")

    def _stopped(self, actor: TrackedActor) -> None:
        if self._live_actors_to_ray_actors_resources.pop(actor, None) is None:
            return
        self._instances.pop(actor, None)
        self.clear_actor_task_futures(actor)
        if actor._on_stop:
            actor._on_stop(actor)

    def is_actor_started(self, tracked_actor: TrackedActor) -> bool:
        return tracked_actor in self._live_actors_to_ray_actors_resources

    def is_actor_failed(self, tracked_actor: TrackedActor) -> bool:
        return tracked_actor.actor_id in self._failed_actor_ids

    def get_actor_resources(self, tracked_actor: TrackedActor) -> Any:
        live = self._live_actors_to_ray_actors_resources.get(tracked_actor)
        return live[1] if live else None

    # ---- tasks ---------------------------------------------------------------------------------------------
    def schedule_actor_task(self, tracked_actor: TrackedActor, method_name: str, args: tuple | None = None,
                            kwargs: dict | None = None, on_result: Callable | None = None,
                            on_error: Callable | None = None, _return_future: bool = False) -> Any:
        task = (tracked_actor, method_name, args or (), kwargs or {}, on_result, on_error)
        if tracked_actor.actor_id in self._failed_actor_ids:
            return None
        if tracked_actor not in self._live_actors_to_ray_actors_resources:
            if tracked_actor not in self._pending and tracked_actor not in self._starting:
                raise ValueError(f"Tracked actor is not managed by this event manager: {tracked_actor}")
            self._queued_tasks.setdefault(tracked_actor, []).append(task)
            return None
        ev = self._schedule(*task)
        return ev if _return_future else None

    def _schedule(self, actor: TrackedActor, method: str, args: tuple, kwargs: dict, on_result: Callable | None,
                  on_error: Callable | None) -> _Event:
        training = method in ("train", "train_buffered")
        delay = self.epoch_s * self.rng.uniform(0.8, 1.2) if training else RPC_S

        def run() -> None:
            tasks = self._tasks.get(actor, set())
            if ev in tasks:
                tasks.discard(ev)
                self._n_tasks -= 1
            instance = self._instances[actor]
            try:
                result = self.worker_call(instance, method, args, kwargs)
            except Exception as e:  # noqa: BLE001 - a task that raised, as Ray hands it back
                if on_error:
                    on_error(actor, e)
                return
            if training:
                self.results += 1
            if on_result:
                on_result(actor, result)

        ev = self._push(delay, run, actor, "train" if training else "task")
        self._tasks.setdefault(actor, set()).add(ev)
        self._n_tasks += 1
        return ev

    def clear_actor_task_futures(self, tracked_actor: TrackedActor) -> None:
        for ev in self._tasks.pop(tracked_actor, set()):
            ev.cancelled = True
            self._n_tasks -= 1

    @property
    def num_actor_tasks(self) -> int:
        return self._n_tasks  # O(1), as Ray's manager counts its futures

    # ---- the event loop ------------------------------------------------------------------------------------
    def next(self, timeout: float | None = None) -> bool:
        """Handle one event (the earliest due), waiting for it at most `timeout` seconds; False when none came."""
        self._start_pending()
        while self._heap and self._heap[0][2].cancelled:
            heapq.heappop(self._heap)
        now = time.monotonic()
        wait = 0.1 if timeout is None else timeout
        if not self._heap or self._heap[0][0] > now + wait:
            time.sleep(max(0.0, min(wait, (self._heap[0][0] - now) if self._heap else wait)))
            return False
        ev = heapq.heappop(self._heap)[2]
        if ev.due > now:
            time.sleep(ev.due - now)
        if ev.kind == "train":
            self.lags.append(max(0.0, now - ev.due))
        ev.fire()
        return True

    # ---- counts Tune reads ---------------------------------------------------------------------------------
    @property
    def live_actors(self) -> list[TrackedActor]:
        return list(self._live_actors_to_ray_actors_resources)

    @property
    def pending_actors(self) -> list[TrackedActor]:
        return list(self._pending) + list(self._starting)

    @property
    def all_actors(self) -> list[TrackedActor]:
        return self.live_actors + self.pending_actors

    @property
    def num_live_actors(self) -> int:
        return len(self._live_actors_to_ray_actors_resources)

    @property
    def num_pending_actors(self) -> int:
        return len(self._pending) + len(self._starting)

    @property
    def num_total_actors(self) -> int:
        return self.num_live_actors + self.num_pending_actors

    def get_live_actors_resources(self) -> dict[str, float]:
        counter: Counter = Counter()
        for _, request in self._live_actors_to_ray_actors_resources.values():
            for bundle in request.bundles:
                counter.update(bundle)
        return dict(counter)

    def cleanup(self) -> None:
        for actor in list(self._live_actors_to_ray_actors_resources):
            self._live_actors_to_ray_actors_resources.pop(actor)
        self._instances.clear()
        self._pending.clear()
        self._starting.clear()
        self._heap.clear()
        self._tasks.clear()
        self._n_tasks = 0


USED = ("add_actor", "remove_actor", "schedule_actor_task", "clear_actor_task_futures", "next", "is_actor_started",
        "is_actor_failed", "num_actor_tasks", "num_live_actors", "num_pending_actors", "num_total_actors",
        "get_live_actors_resources", "cleanup", "_live_actors_to_ray_actors_resources", "_actor_task_events")


def install(**kwargs: Any) -> list[SimActorManager]:
    """Make every `TuneController` built from now on use a `SimActorManager(**kwargs)`; returns the list the managers
    are appended to (one per round). Refuses a Ray whose controller uses a part of the manager not simulated here."""
    import inspect
    import re

    from ray.tune.execution import tune_controller

    used = set(re.findall(r"_actor_manager\.(\w+)", inspect.getsource(tune_controller.TuneController)))
    missing = used - set(USED)
    if missing:
        raise RuntimeError(f"this Ray's TuneController uses {sorted(missing)} of its actor manager, which "
                           "benchmarks/sim_cluster.py does not simulate: update it for this Ray version")
    made: list[SimActorManager] = []

    def factory(resource_manager: Any = None) -> SimActorManager:
        made.append(SimActorManager(resource_manager, **kwargs))
        return made[-1]

    _REAL.setdefault("manager", tune_controller.RayActorManager)
    tune_controller.RayActorManager = factory
    return made


def uninstall() -> None:
    """Ray's own actor manager again (after `install`)."""
    from ray.tune.execution import tune_controller

    if "manager" in _REAL:
        tune_controller.RayActorManager = _REAL.pop("manager")


_REAL: dict[str, Any] = {}

__all__ = ["SimActorManager", "install", "uninstall"]
