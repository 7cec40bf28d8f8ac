"""The greenlets that call handle_job: a piece per turn, suspects alone, no Python of ours per job.

Each worker takes the next piece from the slave's holdings, runs its jobs, and reports the
piece done with the jobs that raised. For jobs that take microseconds the loop around the
user's callback is most of what a slave does, so it is only that loop: when a job raises, the
list iterator itself says which one it was.
"""

from __future__ import annotations

import logging
import operator
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from .config import STEAL_AFTER_S
from .digest import FailureDigest
from .holdings import Failures, HeldBatch, Holdings, Piece
from .messages import JobError
from .pacing import Pacing
from .state import safe_repr

log = logging.getLogger(__name__)


class JobTimeoutError(Exception):
    """handle_job ran past --job-timeout."""


class Isolation:
    """Lets a suspect job (one whose slave died before) run with nothing else beside it."""

    def __init__(self) -> None:
        self.shared = 0
        self.exclusive = False
        self.waiting = 0  # suspects waiting: new ordinary pieces wait behind them
        self._changed = gevent.event.Event()

    def enter(self, alone: bool) -> None:
        if alone:
            self.waiting += 1
        while self.exclusive or (alone and self.shared) or (not alone and self.waiting):
            self._changed.clear()
            self._changed.wait()
        if alone:
            self.waiting -= 1
            self.exclusive = True
        else:
            self.shared += 1

    def leave(self, alone: bool) -> None:
        if alone:
            self.exclusive = False
        else:
            self.shared -= 1
        self._changed.set()


PieceDone = Callable[[Piece, Failures], None]


def _loop_iteration() -> int | None:
    """How many times gevent's loop has run (None where the loop does not say: then every
    piece is taken as one that never let it run, as all were before)."""
    iteration: int | None = getattr(gevent.get_hub().loop, "iteration", None)
    return iteration


class WorkerPool:
    """``concurrency`` greenlets running ``handle_job`` on the holdings' pieces. After each
    piece, ``done(piece, failures)`` and then ``between()`` (the slave reads its socket)."""

    def __init__(self, handle_job: Callable[[Any], Any], concurrency: int, holdings: Holdings,
                 pacing: Pacing, *, done: PieceDone, between: Callable[[], None],
                 job_timeout_s: float | None = None, report_failures: bool = True) -> None:
        self.handle_job = handle_job
        self.concurrency = concurrency
        self.holdings = holdings
        self.pacing = pacing
        self.job_timeout_s = job_timeout_s
        self._done = done
        self._between = between
        self.running = 0
        self.timing: dict[int, tuple[float, HeldBatch, int]] = {}
        """With a --job-timeout: for each job running, since when, and which (its batch and
        index in it), by the id of the frame of `_run_timed` that runs it; read by the
        slave's watchdog, from its own thread (see `in_hand`)."""
        self.digest = FailureDigest(log) if report_failures else None
        """What this slave says of the failures it sees (none: its master says them)."""
        self.out_of_memory = False
        """A job raised MemoryError: this process should be replaced."""
        self._isolation = Isolation()
        self._pieces: set[Piece] = set()  # the pieces running now
        self._work = gevent.event.Event()
        self._greenlets: list[gevent.Greenlet] = []

    def start(self, crashed: Callable[[gevent.Greenlet], None]) -> None:
        for _ in range(self.concurrency):
            greenlet = gevent.spawn(self._worker)
            greenlet.link_exception(crashed)
            self._greenlets.append(greenlet)

    def wake(self) -> None:
        """Pieces were queued."""
        self._work.set()

    @property
    def busy(self) -> bool:
        return bool(self.running or self.holdings.queue)

    def stop(self) -> None:
        gevent.killall(self._greenlets, timeout=1)

    def _worker(self) -> None:
        while True:
            piece = self.holdings.next_piece() or self._steal()
            if piece is None:
                self._work.clear()
                # While pieces run (or wait to, behind a suspect), look again now and then for
                # one held up by a slow job.
                self._work.wait(STEAL_AFTER_S if self.running else None)
                continue
            self.running += 1
            iteration = _loop_iteration()
            self.pacing.started(self.running)
            self._isolation.enter(piece.alone)
            started = time.perf_counter()
            piece.since = time.monotonic()
            piece.remaining = iter(piece.jobs)
            self._pieces.add(piece)
            try:
                failures = self._run(piece)
            finally:
                self._pieces.discard(piece)
                self._isolation.leave(piece.alone)
                self.running -= 1
            self.pacing.finished(time.perf_counter() - started, len(piece.jobs))
            self._done(piece, failures)
            self._between()
            # The others' turn (the socket was read just now, in `_between`). After a piece
            # that waited, the loop has run meanwhile: sleep(0), since under hundreds of
            # waiting jobs the loop is seldom idle, and greenlets held in gevent.idle() left
            # a quarter of a 500-greenlet pool unused (10 ms jobs through tm-run: 52 k/s, 62
            # k/s with this). After one that never let it run (CPU-bound), idle(): gevent
            # looks at its timers only every 50 ready greenlets, and 50 pieces of 50 ms kept
            # the slave's own loop (its held-back acknowledgements, a stop signal) waiting
            # for 2.5 s.
            if iteration is not None and _loop_iteration() != iteration:
                gevent.sleep(0)
            else:
                gevent.idle()

    def _steal(self) -> Piece | None:
        """The jobs not yet reached of a piece that has run for `STEAL_AFTER_S` (a job in it
        is slow, and its greenlet waits in it), or None."""
        now = time.monotonic()
        for piece in self._pieces:
            if now - piece.since >= STEAL_AFTER_S and not piece.alone:
                rest = self.holdings.split(piece)
                if rest is not None:
                    return rest
        return None

    def _run(self, piece: Piece) -> Failures:
        if self.job_timeout_s is not None:
            return self._run_timed(piece, self.job_timeout_s)
        jobs = piece.jobs
        failures: Failures = []
        handle = self.handle_job
        remaining = piece.remaining
        assert remaining is not None
        while True:
            try:
                # Nothing of ours per job: a plain loop calling the user's function, which
                # Python 3.11 runs faster than map() does. (And in a loop's body, unlike in
                # map(), a StopIteration the user raises is an exception like any other.)
                for job in remaining:
                    handle(job)
                return failures
            except (Exception, SystemExit, gevent.Timeout) as e:  # noqa: BLE001 - user's
                # A list iterator knows exactly how many it has left: the job that raised is
                # the one just before those (`Holdings.split` keeps it so). (gevent.Timeout
                # is a BaseException: a job's own timeout firing is the job's failure, not
                # the worker's.)
                i = len(jobs) - operator.length_hint(remaining) - 1
                self._failed(piece, failures, i, JobError.of(e))

    def _run_timed(self, piece: Piece, limit: float) -> Failures:
        """Each job under its time limit, and watched: one that yields is stopped at the
        limit; one that will not stop is for the watchdog (see `timing`)."""
        failures: Failures = []
        key = id(sys._getframe())
        assert piece.remaining is not None
        for i, job in enumerate(piece.remaining):
            self.timing[key] = (time.monotonic(), piece.batch, piece.offset + i)
            try:
                with gevent.Timeout(limit, JobTimeoutError(
                        f"handle_job ran past --job-timeout {limit:g}s")):
                    self.handle_job(job)
            except (Exception, SystemExit, gevent.Timeout) as e:  # noqa: BLE001 - user's
                self._failed(piece, failures, i, JobError.of(e))
            finally:
                self.timing.pop(key, None)
        return failures

    def in_hand(self, thread_id: int, timing: dict[int, Any]) -> int | None:
        """The key in ``timing`` (a copy of `timing`) of the job that thread ``thread_id``
        (the one gevent's loop runs in) is executing now, if it is in one. Called from
        another thread, this names the job that holds the loop: when a job will not yield,
        every other job past its limit is only frozen behind it, in a sleep or a read."""
        frame = sys._current_frames().get(thread_id)
        while frame is not None:
            if id(frame) in timing:
                return id(frame)
            frame = frame.f_back
        return None

    def _failed(self, piece: Piece, failures: Failures, index: int, error: JobError) -> None:
        job = safe_repr(piece.jobs[index], 80)
        log.debug("handle_job(%s) raised %s: %s", job, error.type, error.message)
        if self.digest is not None:
            self.digest.failed(error, f"handle_job({job})")
        failures.append((piece.offset + index, error))
        if error.type == "MemoryError":
            self.out_of_memory = True
