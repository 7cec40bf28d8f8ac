"""get_jobs, pulled in an OS thread of its own and handed to the master in chunks.

A generator may block anywhere: in a database driver, in ``sqlite3``, in a C-level sleep, in a
wait for the next due time. Pulled on the gevent hub it would stall everything the master does
meanwhile (serving slaves, their liveness, signals, checkpoints), so it is called and pulled
here, in a real thread, and the master only takes what the thread has pulled.

The hand-off is bounded: the master says how much room its buffer has (`allow`), and the thread
never pulls beyond it. The thread pulls in C-level steps (``list.extend(islice(...))``), with
no Python of ours per job, doubling from one job to `FEED_STEP_MAX_JOBS` through a turn, and
hands over the list a turn gathered every `FEED_TURN_S`: a fast stream goes over in chunks of
thousands, with no copy. A step may block inside the stream with jobs already pulled (a burst,
then a wait for the next due time): so when a turn lasts longer than that, the master copies
out what the turn's list holds so far (the thread only ever appends to it, and both hold the
GIL for each append and each copy), and a slow stream's jobs go out as they are yielded.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import gevent.event
from gevent import monkey

from .config import FEED_POLL_MAX_S, FEED_STEP_MAX_JOBS, FEED_TURN_S
from .errors import InternalError, TaskmasterError
from .settings import MasterConfig
from .state import Checkpoint
from .stream import NO_JOB, open_stream, opener, recorded_jobs, resume, takes_last, user_error

log = logging.getLogger(__name__)

_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_start_thread = monkey.get_original("_thread", "start_new_thread")
_PICKLE = pickle.HIGHEST_PROTOCOL



@dataclass(slots=True)
class Chunk:
    """Jobs in stream order; ``ended`` with the last chunk, ``error`` if the stream raised."""

    jobs: list[Any]
    origins: list[int] | None = None
    ended: bool = False
    error: TaskmasterError | None = None


class Feeder:
    """Opens a stream with ``open()`` and pulls it, in a thread of its own. ``skip`` jobs are
    dropped first (they are settled already); ``expect`` is the job the stream should begin
    with (the ``last`` it was given), warned about when it does not; ``pairs``: the stream
    yields (origin, job) pairs. ``first`` is the sequence number of the first job the stream
    yields; ``total`` the run's length once the stream is open, if it tells (see
    `taskmaster.sized`)."""

    def __init__(self, open: Callable[[], Iterable[Any]], *, first: int = 0, skip: int = 0,
                 expect: Any = NO_JOB, pairs: bool = False) -> None:
        self._open = open
        self._iterator: Iterator[Any] = iter(())
        self.first = first
        self.total: int | None = None
        self.job_bytes = 0.0
        """The pickled size of a job, from one job a turn (0 until the first is pulled)."""
        self._skip = skip
        self._expect = expect
        self._pairs = pairs
        # Shared with the thread, under _mutex.
        self._mutex = _allocate_lock()
        self._granted = 0  # jobs the thread may pull in all
        self._taken = 0  # jobs the master has taken in all
        self._ready: deque[_Turn] = deque()  # turns over, not taken yet
        self._turn: _Turn | None = None  # the turn in progress, if any
        self._closed = False
        self._sleeping = False
        self._pulled = 0  # the thread's own: jobs it has pulled in all
        self._pending: list[Any] = []  # the thread's own: the first jobs read ahead
        self._wake = _allocate_lock()
        self._wake.acquire()  # held: released to wake the thread when it sleeps
        self._arrived = gevent.event.Event()
        self._async = gevent.get_hub().loop.async_()
        self._async.start(self._arrived.set)
        self._started = False

    def start(self) -> None:
        """Start pulling (in the thread); nothing is pulled before."""
        if not self._started:
            self._started = True
            _start_thread(self._run, ())

    def allow(self, room: int) -> None:
        """The buffer has room for ``room`` jobs beyond those taken so far."""
        with self._mutex:
            granted = self._taken + room
            if granted <= self._granted:
                return
            self._granted = granted
            self._wake_thread()

    def take(self) -> list[Chunk]:
        """The jobs pulled since the last call, in chunks; waits (this greenlet only) for
        some. A turn of the thread that has lasted over `FEED_TURN_S` is taken from as it
        goes; otherwise the master waits for the thread to hand a turn over."""
        poll_s = FEED_TURN_S
        while True:
            self._arrived.clear()
            with self._mutex:
                chunks = [self._chunk(turn.rest(over=True), turn.ended, turn.error)
                          for turn in self._ready]
                self._ready.clear()
                turn = self._turn
                if not chunks and turn is not None and turn.overdue():
                    jobs = turn.rest(over=False)
                    if jobs:
                        chunks = [self._chunk(jobs, False, None)]
                self._taken += sum(len(c.jobs) for c in chunks)
                # Unless the thread waits for room (and so pulls nothing), look again soon:
                # a turn it starts meanwhile may block with jobs in it, and say nothing.
                polling = not self._sleeping
            if chunks:
                return chunks
            # Looking costs the hub a wake-up: a stream that stays blocked is looked at less
            # and less often, up to FEED_POLL_MAX_S (what its next job may wait for).
            self._arrived.wait(poll_s if polling else None)
            poll_s = min(2 * poll_s, FEED_POLL_MAX_S)

    def close(self) -> None:
        """Stop pulling. A thread blocked inside the stream stays so until it returns, then
        leaves without pulling more."""
        with self._mutex:
            self._closed = True
            self._wake_thread()
        self._async.stop()
        self._async.close()

    def _chunk(self, jobs: list[Any], ended: bool, error: TaskmasterError | None) -> Chunk:
        if not self._pairs:
            return Chunk(jobs, None, ended, error)
        return Chunk([job for _seq, job in jobs], [seq for seq, _job in jobs], ended, error)

    def _wake_thread(self) -> None:
        # Under _mutex.
        if self._sleeping:
            self._sleeping = False
            self._wake.release()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            error = self._begin()
            while error is None and (room := self._wait_for_room()) is not None:
                if self._expect is not NO_JOB or self._skip:  # once the master made room
                    self._pending, error = resume(self._iterator, expect=self._expect,
                                                  skip=self._skip, pairs=self._pairs,
                                                  closed=lambda: self._closed)
                    self._expect, self._skip = NO_JOB, 0
                    continue
                if not self._pull(room):
                    return
            if error is not None:
                self._hand_over(_Turn(), ended=True, error=error)
        except BaseException as e:  # a thread of ours must say why it died, whatever it was
            log.critical("internal error in the feeder thread", exc_info=True)
            self._hand_over(_Turn(), ended=True, error=InternalError(f"feeder thread: {e!r}"))

    def _begin(self) -> TaskmasterError | None:
        """Open the stream; the error that ends the run at once, if any."""
        opened = open_stream(self._open)
        if isinstance(opened, TaskmasterError):
            return opened
        self._iterator, hint = opened
        self.total = self.first + hint if hint is not None else None
        return None

    def _wait_for_room(self) -> int | None:
        while True:
            with self._mutex:
                if self._closed:
                    return None
                room = self._granted - self._pulled
                if room > 0:
                    return room
                self._sleeping = True
            self._wake.acquire()

    def _pull(self, room: int) -> bool:
        """One turn: up to ``room`` jobs, for about `FEED_TURN_S`; False once the stream ended
        (or the feeder was closed)."""
        turn = _Turn()
        if self._pending:
            self._sample(self._pending[0])
            turn.jobs.extend(self._pending)
            self._pending = []
        pulled = len(turn.jobs)
        with self._mutex:
            self._turn = turn
        deadline = turn.began + FEED_TURN_S
        ended, error = False, None
        step = 1  # doubling through the turn: a stream that blocks at once costs no big step
        while pulled < room and not self._closed:
            want = min(step, room - pulled)
            step = min(2 * step, FEED_STEP_MAX_JOBS)
            before = len(turn.jobs)
            try:
                # Appended one by one, in C: the master may copy them out while a step waits
                # inside the stream. (And nothing is lost if the stream raises midway.)
                turn.jobs.extend(itertools.islice(self._iterator, want))
            except TaskmasterError as e:
                ended, error = True, e
            except (Exception, SystemExit) as e:  # noqa: BLE001 - the user's, reported in full
                ended, error = True, user_error(e)
            got = len(turn.jobs) - before
            pulled += got
            if before == 0 and turn.jobs:  # a turn's first job: sized, as a sample
                self._sample(turn.jobs[0])
            if ended or got < want:
                ended = True
                break
            if time.perf_counter() >= deadline:
                break
        self._pulled += pulled
        return self._hand_over(turn, ended=ended, error=error) and not ended

    def _sample(self, job: Any) -> None:
        """Learn the size of a job: the master bounds its buffer in bytes by it."""
        try:
            size = len(pickle.dumps(job[1] if self._pairs else job, _PICKLE))
        except Exception:  # noqa: BLE001 - a job that does not pickle: the master says so
            return
        self.job_bytes = size if not self.job_bytes else 0.8 * self.job_bytes + 0.2 * size

    def _hand_over(self, turn: _Turn, *, ended: bool,
                   error: TaskmasterError | None = None) -> bool:
        with self._mutex:
            self._turn = None
            if self._closed:
                return False
            turn.ended, turn.error = ended or error is not None, error
            if turn.jobs or turn.ended:
                self._ready.append(turn)
                # Under the mutex: once close() has it, no send reaches a closed watcher.
                self._async.send()
        return True


class _Turn:
    """What the thread pulls in one turn: jobs appended as they come, taken by the master
    once the turn is over, or as it goes when it lasts too long."""

    __slots__ = ("began", "ended", "error", "jobs", "taken")

    def __init__(self) -> None:
        self.jobs: list[Any] = []
        self.began = time.perf_counter()
        self.taken = 0  # how many of `jobs` the master has taken (under the feeder's mutex)
        self.ended = False
        self.error: TaskmasterError | None = None

    def overdue(self) -> bool:
        return time.perf_counter() - self.began >= FEED_TURN_S

    def rest(self, *, over: bool) -> list[Any]:
        """The jobs not taken yet, now taken: the list itself when the turn is ``over`` and
        none was (the common case, and no copy); else a copy, for the thread appends on."""
        taken, self.taken = self.taken, len(self.jobs)
        return self.jobs if over and not taken else self.jobs[taken:self.taken]


def feeder_for(get_jobs: Callable[..., Any], cfg: MasterConfig, cp: Checkpoint | None,
               retry_source: Path | None = None) -> Feeder:
    """The feeder of a run that starts from ``cp`` (None: from scratch); a retry runs the
    records of ``retry_source``."""
    resume = cp.resume_seq if cp is not None and cp.has_last else 0
    retry_source = retry_source or cfg.retry_failures  # the first round's: the file itself
    if retry_source is not None:
        path = retry_source
        log.info("retrying the jobs recorded in %s%s", path,
                 f", from record #{resume}" if resume else "")
        # A file of records is resumed by position: the records before it are settled.
        return Feeder(lambda: recorded_jobs(path), skip=resume, pairs=True)
    if cp is not None and cp.has_last and takes_last(get_jobs):
        return Feeder(opener(get_jobs, cfg.kwargs, last=cp.last_job), first=cp.last_seq,
                      skip=resume - cp.last_seq, expect=cp.last_job)
    if resume:
        log.info("get_jobs takes no `last`: resuming by position, skipping the %d jobs "
                 "before job #%d", resume, resume)
    return Feeder(opener(get_jobs, cfg.kwargs), skip=resume)
