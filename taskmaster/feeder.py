"""get_jobs, pulled in an OS thread of its own and handed to the master in chunks.

A generator may block anywhere: in a database driver, in ``sqlite3``, in a C-level sleep, in a
wait for the next due time. Pulled on the gevent hub it would stall everything the master does
meanwhile (serving slaves, their liveness, signals, checkpoints), so it is pulled here, in a
real thread, and the master only ever takes finished chunks.

The hand-off is bounded: the master says how much room its buffer has (`allow`), and the thread
never pulls beyond it. The thread pulls in C-level steps (``list.extend(islice(...))``), with no
Python of ours per job, and hands over what it has every `FEED_TURN_S`: a fast stream goes over
in chunks of thousands, a slow one job by job as each is yielded. A step grows while the stream
answers at once and shrinks to one job when it blocks, so that a job yielded before a long wait
is not held back for it.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import operator
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
from gevent import monkey

from . import sized
from .config import FEED_STEP_MAX_JOBS, FEED_TURN_S
from .errors import ConfigError, InternalError, TaskmasterError, UserCodeError
from .state import count_failures, read_failures, safe_repr

if TYPE_CHECKING:
    from .config import MasterConfig
    from .state import Checkpoint

log = logging.getLogger(__name__)

_allocate_lock = monkey.get_original("_thread", "allocate_lock")
_start_thread = monkey.get_original("_thread", "start_new_thread")
_NOTHING = object()


@dataclass(slots=True)
class Chunk:
    """Jobs in stream order; ``ended`` with the last chunk, ``error`` if the stream raised."""

    jobs: list[Any]
    origins: list[int] | None = None
    ended: bool = False
    error: TaskmasterError | None = None


def opener(get_jobs: Callable[..., Any], kwargs: dict[str, str], *,
           last: Any = _NOTHING) -> Callable[[], Iterable[Any]]:
    """How to open the job stream: ``get_jobs(**kwargs)``, with ``last`` when resuming. Its
    arguments are checked now (bad KEY=VALUE names are a ConfigError); the call itself is
    made in the feeder's thread, where the stream is pulled, since what it opens (a database
    connection, say) may only be used in the thread that opened it."""
    call_kwargs: dict[str, Any] = dict(kwargs)
    if last is not _NOTHING:
        call_kwargs["last"] = last
    try:
        # `last` is checked on a fresh run too: better now than at the first resume.
        inspect.signature(get_jobs).bind(**{"last": None, **call_kwargs})
    except TypeError as e:
        raise ConfigError(f"get_jobs cannot take these arguments: {e}; "
                          "check the KEY=VALUE pairs and get_jobs' parameters") from None
    except ValueError:
        pass  # no signature to check (a builtin); the call itself will tell
    return lambda: get_jobs(**call_kwargs)


def recorded_jobs(path: Path) -> sized:
    """The (sequence number, job) pairs of a failures file, streamed, with their count."""
    return sized(read_failures(path), total=count_failures(path))


def feeder_for(get_jobs: Callable[..., Any], cfg: MasterConfig, cp: Checkpoint | None) -> Feeder:
    """The feeder of a run that starts from ``cp`` (None: from scratch)."""
    resume = cp.resume_seq if cp is not None and cp.has_last else 0
    if cfg.retry_failures is not None:
        path = cfg.retry_failures
        log.info("retrying the jobs recorded in %s%s", path,
                 f", from record #{resume}" if resume else "")
        # A file of records is resumed by position: the records before it are settled.
        return Feeder(lambda: recorded_jobs(path), skip=resume, pairs=True)
    if cp is not None and cp.has_last:
        return Feeder(opener(get_jobs, cfg.kwargs, last=cp.last_job), first=cp.last_seq,
                      skip=resume - cp.last_seq, expect=cp.last_job)
    return Feeder(opener(get_jobs, cfg.kwargs))


class Feeder:
    """Opens a stream with ``open()`` and pulls it, in a thread of its own. ``skip`` jobs are
    dropped first (they are settled already); ``expect`` is the job the stream should begin
    with (the ``last`` it was given), warned about when it does not; ``pairs``: the stream
    yields (origin, job) pairs. ``first`` is the sequence number of the first job the stream
    yields; ``total`` the run's length once the stream is open, if it tells (see
    `taskmaster.sized`)."""

    def __init__(self, open: Callable[[], Iterable[Any]], *, first: int = 0, skip: int = 0,
                 expect: Any = _NOTHING, pairs: bool = False) -> None:
        self._open = open
        self._iterator: Iterator[Any] = iter(())
        self.first = first
        self.total: int | None = None
        self._skip = skip
        self._expect = expect
        self._pairs = pairs
        self._step = 1
        # Shared with the thread, under _mutex: what it may pull, and what it has handed over.
        self._mutex = _allocate_lock()
        self._granted = 0  # jobs the thread may have pulled in all
        self._taken = 0  # jobs the master has taken in all
        self._pulled = 0
        self._ready: deque[Chunk] = deque()
        self._closed = False
        self._sleeping = False
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
            if self._sleeping:
                self._sleeping = False
                self._wake.release()

    def take(self) -> list[Chunk]:
        """The chunks handed over since the last call; waits (this greenlet only) for one."""
        while True:
            self._arrived.clear()
            with self._mutex:
                chunks = list(self._ready)
                self._ready.clear()
                self._taken += sum(len(c.jobs) for c in chunks)
            if chunks:
                return chunks
            self._arrived.wait()

    def close(self) -> None:
        """Stop pulling. A thread blocked inside the stream stays so until it returns, then
        leaves without pulling more."""
        with self._mutex:
            self._closed = True
            if self._sleeping:
                self._sleeping = False
                self._wake.release()
        self._async.stop()
        self._async.close()

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            try:
                stream = self._open()
            except Exception as e:  # noqa: BLE001 - the user's exception, reported in full
                self._hand_over([], ended=True, error=_user_error(e))
                return
            try:
                self._iterator = iter(stream)
            except TypeError:
                self._hand_over([], ended=True, error=ConfigError(
                    f"get_jobs returned {safe_repr(stream, 60)}, which is not iterable; it "
                    "must yield jobs (or return a list or a generator)"))
                return
            hint = operator.length_hint(stream, -1)
            self.total = self.first + hint if hint >= 0 else None
            try:
                jobs = self._begin()
            except Exception as e:  # noqa: BLE001 - the user's exception, reported in full
                self._hand_over([], ended=True, error=_user_error(e))
                return
            while (room := self._wait_for_room()) is not None:
                jobs, ended, error = self._pull(room, jobs)
                if not self._hand_over(jobs, ended=ended, error=error) or ended:
                    return
                jobs = []
        except BaseException as e:  # a thread of ours must say why it died, whatever it was
            log.critical("internal error in the feeder thread", exc_info=True)
            self._hand_over([], ended=True, error=InternalError(f"feeder thread: {e!r}"))

    def _begin(self) -> list[Any]:
        """Check the first job against what it should be, and skip what is settled already;
        returns the first job when it is one to run."""
        if self._expect is _NOTHING and not self._skip:
            return []
        first = next(self._iterator, _NOTHING)
        if first is _NOTHING:
            return []
        if self._expect is not _NOTHING:
            job = first[1] if self._pairs else first
            try:
                same = bool(job == self._expect)
            except Exception:  # noqa: BLE001 - a job whose __eq__ fails cannot be compared
                same = True
            if not same:
                log.warning("get_jobs(last=%s) began with %s: it should yield from `last` on, "
                            "inclusive (for i in range(last, N)); otherwise jobs are skipped "
                            "or run again", safe_repr(self._expect, 80), safe_repr(job, 80))
        if not self._skip:
            return [first]
        left = self._skip - 1
        while left > 0 and not self._closed:
            step = min(left, 100_000)
            skipped = sum(1 for _ in itertools.islice(self._iterator, step))
            left -= skipped
            if skipped < step:
                break
        return []

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

    def _pull(self, room: int, jobs: list[Any]
              ) -> tuple[list[Any], bool, TaskmasterError | None]:
        """Up to ``room`` jobs, for at most about one turn: (jobs, ended, the stream's error)."""
        deadline = time.perf_counter() + FEED_TURN_S
        while len(jobs) < room:
            want = min(self._step, room - len(jobs))
            before = len(jobs)
            began = time.perf_counter()
            try:
                # extend() keeps what it appended before an exception: a failing stream loses
                # none of the jobs it did yield.
                jobs.extend(itertools.islice(self._iterator, want))
            except Exception as e:  # noqa: BLE001 - the user's exception, reported in full
                return jobs, True, _user_error(e)
            if len(jobs) - before < want:
                return jobs, True, None
            now = time.perf_counter()
            if now - began > FEED_TURN_S:
                self._step = 1  # the stream waits: pass each job on as it comes
            elif now - began < FEED_TURN_S / 8:
                self._step = min(2 * self._step, FEED_STEP_MAX_JOBS)
            if now >= deadline:
                break
        return jobs, False, None

    def _hand_over(self, jobs: list[Any], *, ended: bool,
                   error: TaskmasterError | None = None) -> bool:
        origins = None
        if self._pairs:
            origins = [seq for seq, _job in jobs]
            jobs = [job for _seq, job in jobs]
        with self._mutex:
            if self._closed:
                return False
            self._pulled += len(jobs)
            self._ready.append(Chunk(jobs, origins, ended or error is not None, error))
            # Under the mutex: once close() has it, no send reaches a closed watcher.
            self._async.send()
        return True


def _user_error(e: Exception) -> UserCodeError:
    return UserCodeError(f"get_jobs raised {type(e).__name__}: {e}", traceback.format_exc())
