"""A slave's last resort, acting from its heartbeat thread when its own loop cannot.

A callback that never yields holds the gevent hub, and with it everything a slave does in
greenlets: its acknowledgements, its stop signals, its time limits. The heartbeat thread is a
real OS thread, so it runs regardless: each beat, the watchdog looks at what the hub should
have dealt with, and ends the process when it has not, telling the master first so that it
does not wait out the silence:

* a job past --job-timeout (and its grace) that would not stop: the master charges that job a
  failed attempt and sends the rest out again; the process is replaced by a fresh one;
* a stop signal its loop never acted on (the jobs it runs hold the loop): the batches it has
  not started go back, and the process leaves;
* a supervisor that is gone: the process leaves too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable

import gevent.monkey

from . import protocol as p
from .config import JOB_TIMEOUT_GRACE_S, SLAVE_HARD_STOP_S, SLAVE_STOP_WAIT_S
from .errors import EXIT_FAILED, EXIT_REPLACE, exit_code_for_signal
from .holdings import Holdings
from .pool import WorkerPool
from .signals import StopSignals

log = logging.getLogger("taskmaster.slave")

End = Callable[[], None]


def end_process(code: int, supervised: bool) -> None:
    """Leave now with ``code``; a slave of its own, asked to be replaced, execs itself anew
    (a supervised one leaves that to its supervisor)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if code == EXIT_REPLACE and not supervised:
        os.execv(sys.executable, sys.orig_argv)
    os._exit(code)


class Watchdog:
    """What the heartbeat thread does each beat (see `transport.start_heartbeat_thread`)."""

    def __init__(self, *, name: str, seal: p.Seal, heartbeat: Callable[[], p.Heartbeat | None],
                 holdings: Holdings, pool: WorkerPool, signals: StopSignals,
                 job_timeout_s: float | None, parent_pid: int | None, supervised: bool,
                 epoch: Callable[[], bytes]) -> None:
        self.name = name
        self.seal = seal
        self.heartbeat = heartbeat
        self.holdings = holdings
        self.pool = pool
        self.signals = signals
        self.job_timeout_s = job_timeout_s
        self.parent_pid = parent_pid
        self.supervised = supervised
        self.epoch = epoch
        # The OS thread's id (threading's own may be patched to name greenlets).
        self.loop_thread: int = gevent.monkey.get_original("_thread", "get_ident")()
        """The thread gevent's loop runs in: the watchdog is made there."""

    def __call__(self) -> tuple[list[list[bytes]], End | None]:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.error("its supervisor is gone; leaving")
            return [], lambda: end_process(EXIT_FAILED, self.supervised)
        overdue = self._overdue_job()
        if overdue is not None:
            return overdue
        signum, at = self.signals.requested, self.signals.at
        if signum is not None and time.monotonic() - at > SLAVE_STOP_WAIT_S + SLAVE_HARD_STOP_S:
            code = exit_code_for_signal(signum)
            log.error("jobs still hold this slave %.0fs after %s; leaving now, they will run "
                      "again", time.monotonic() - at, self.signals.name)
            gone = p.Gone(self.name, code, handed_back=tuple(self.holdings.unstarted()))
            return [self.seal(gone)], lambda: end_process(code, self.supervised)
        beat = self.heartbeat()
        return ([] if beat is None else [self.seal(beat)]), None

    def _overdue_job(self) -> tuple[list[list[bytes]], End | None] | None:
        limit = self.job_timeout_s
        if limit is None:
            return None
        now = time.monotonic()
        timing = dict(self.pool.timing)
        # The job the loop is in, if one holds it, is the one to blame; if none does, the loop
        # runs, and a job past its limit is one that caught its time-out and went on.
        in_hand = self.pool.in_hand(self.loop_thread, timing)
        for key, (started, batch, index) in timing.items():
            if (in_hand is not None and key != in_hand) or \
                    now - started <= limit + JOB_TIMEOUT_GRACE_S:
                continue
            log.error("a job has run %.0fs, past --job-timeout %gs, and will not stop; this "
                      "slave's process is being replaced", now - started, limit)
            error = p.JobError("JobTimeoutError", f"handle_job ran past --job-timeout {limit:g}s "
                               "and would not stop: its slave's process was replaced")
            # A batch of an earlier master's (its epoch is gone) is nobody's to charge.
            timed_out = (batch.bid, index, error) if batch.epoch == self.epoch() else None
            gone = p.Gone(self.name, None, timed_out, tuple(self.holdings.unstarted()))
            return [self.seal(gone)], lambda: end_process(EXIT_REPLACE, self.supervised)
        return None
