"""Ctrl-C and SIGTERM stop a run the same way, and leave nothing running.

SIGTERM is how a batch scheduler's time limit, `timeout` or `kill` stop a driver. Python's default for it ends the
process at once: no `finally` runs, so Ray, the kernel warm-up process and the MPS daemon could outlive the driver
(session 17's GPU study ran 30 s after `timeout` had killed one, and both its trees took longer). Ctrl-C during a
round was taken by Ray Tune's own handler, which stops the trials and returns as if the round had finished: the run
was stored as "finished". Here both signals do one thing: during a Tune round, the first asks Tune to stop
(SIGUSR1, Tune's own stop request: its trials end and the round returns) and the round counts as interrupted; outside
a round, or on a second signal, KeyboardInterrupt, which the driver turns into an interrupted run and a clean
shutdown.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopRequests:
    """The signal handler of a run (`installed()`), and what it was asked (`count`)."""

    def __init__(self) -> None:
        self.count = 0
        self.in_round = False
        self.holding = False

    def __call__(self, signum: int, frame: Any) -> None:
        self.count += 1
        tune_listens = callable(signal.getsignal(signal.SIGUSR1))  # Tune's handler, set when a round starts
        if self.in_round and self.count == 1 and tune_listens:
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        raise KeyboardInterrupt

    @contextmanager
    def installed(self) -> Iterator[StopRequests]:
        """Handle SIGINT and SIGTERM while inside (main thread only; elsewhere signals cannot be caught); an outer
        `installed()` of the same object stays in charge."""
        if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is self:
            yield self
            return
        self.count = 0
        previous = {s: signal.signal(s, self) for s in SIGNALS}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold SIGINT and SIGTERM while inside, then handle one that came meanwhile on the way out. For `ray.init`:
        it sets its own Python SIGTERM handler (`sys.exit(15)`, before Ray is marked started) and its core worker a C
        one (prints a stack and ends the process), either of which left Ray's processes running. Inside, this thread
        blocks both signals, so do the threads it starts (they inherit the mask and keep it), handlers others try to
        set for them are ignored, and ours are set again on the way out. Only while installed, on the main thread.
        Processes started inside do not keep the block, and get a process group of their own (`release_child`)."""
        if (threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is not self
                or self.holding):
            yield  # not ours to hold, or an outer `held()` already does
            return
        self.holding = True
        real = signal.signal

        def keep_ours(sig: int, handler: Any) -> Any:
            return signal.getsignal(sig) if sig in SIGNALS else real(sig, handler)

        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        signal.signal = keep_ours  # type: ignore[assignment]
        try:
            yield
        finally:
            signal.signal = real
            for s in SIGNALS:
                real(s, self)
            self.holding = False
            signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)

    @contextmanager
    def round(self) -> Iterator[None]:
        """A Tune round runs inside: the first stop request goes to Tune."""
        self.in_round = True
        try:
            yield
        finally:
            self.in_round = False


STOPS = StopRequests()  # the process's one handler: `nas run` installs it before Ray starts, run_study otherwise


def release_child() -> None:
    """In a child process forked while `held()` holds (Ray's processes, the kernel warm-up, the MPS daemon), before
    it runs its program: undo the block, which a child inherits through fork and exec (Ray's GCS, raylet and every
    worker then ignored SIGTERM for their whole life: `ray.shutdown` waited 1 s on each before SIGKILL, ~5 s a run),
    and put the child in a process group of its own. A signal sent to the driver's whole group (Ctrl-C in a
    terminal, `timeout`, `kill -- -PGID`) then reaches the driver alone, which stops the trials and then Ray in
    order (with the block undone but the driver's group kept, `timeout` killed the GCS at once, and the driver's stop
    waited 60 s on it and aborted). A signal sent to every process (systemd's control-group kill, Slurm's scancel)
    still reaches Ray's processes directly: the run then ends as a crash does, and resumes. Runs after every fork
    (`os.register_at_fork`; `subprocess` runs those hooks when a `preexec_fn` is given, as Ray gives one to each
    process it starts); pass it as `preexec_fn` to a Popen."""
    if STOPS.holding:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        os.setpgid(0, 0)


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=release_child)


def stop_requested() -> bool:
    return STOPS.count > 0


__all__ = ["STOPS", "StopRequests", "release_child", "stop_requested"]
