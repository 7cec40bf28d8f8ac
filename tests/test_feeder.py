"""The feeder, in process: get_jobs opened and pulled in a thread of its own, handed to the hub.

Each test runs gevent's hub in the main thread (nothing is monkey-patched): the feeder is built
there, and the tests take its chunks as the master's feed greenlet does. Generators block with
real sleeps, in the feeder's thread. Every wait is bounded; a condition is polled with a
deadline. Where a test must know that the thread stopped, it asks the process (psutil) whether
the thread still exists, or looks at where the thread stands (``sys._current_frames``): parked
in `Feeder._wait_for_room`, waiting for room.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import gevent
import psutil
import pytest

from taskmaster import sized
from taskmaster.config import DEFAULT_BUFFER_SIZE, FEED_TURN_S
from taskmaster.errors import ConfigError, InternalError, StateError, UserCodeError
from taskmaster.feeder import Chunk, Feeder, feeder_for
from taskmaster.ledger import Failure
from taskmaster.messages import JobError
from taskmaster.records import FailureLog
from taskmaster.settings import MasterConfig
from taskmaster.state import Checkpoint
from taskmaster.stream import opener
from taskmaster.target import Target

MISSING: Any = object()
"""get_jobs' default for ``last``: tells a call without ``last`` from ``last=None``."""

FALSY_JOBS: list[Any] = [0, "", None, {}, [], (), False, 0.0, b"", "job", 1]


# -- helpers ----------------------------------------------------------------------------------


class Feeders:
    """Feeders of one test, closed at its end; gates released first, so no thread stays
    blocked in a generator after the test."""

    def __init__(self) -> None:
        self.made: list[Feeder] = []
        self.gates: list[threading.Event] = []

    def add(self, feeder: Feeder) -> Feeder:
        self.made.append(feeder)
        return feeder

    def new(self, open: Callable[[], Iterable[Any]], **kwargs: Any) -> Feeder:
        return self.add(Feeder(open, **kwargs))

    def gate(self) -> threading.Event:
        gate = threading.Event()
        self.gates.append(gate)
        return gate


@pytest.fixture
def feeders() -> Iterator[Feeders]:
    made = Feeders()
    yield made
    for gate in made.gates:
        gate.set()
    for feeder in made.made:
        feeder.close()


class Counting:
    """An endless stream 0, 1, 2, ...: counts how far it was pulled, and in which thread.
    Use an instance as the feeder's ``open``."""

    def __init__(self) -> None:
        self.pulled = 0
        self.opened = 0
        self.opened_in: int | None = None
        self.native_id: int | None = None

    def __call__(self) -> Iterator[int]:
        self.opened += 1
        self.opened_in = threading.get_ident()
        self.native_id = threading.get_native_id()
        return self._jobs()

    def _jobs(self) -> Iterator[int]:
        while True:
            n = self.pulled
            self.pulled = n + 1  # counted before it is yielded: the count of jobs pulled
            yield n


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``condition`` on the hub until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        gevent.sleep(0.002)


@contextlib.contextmanager
def within(seconds: float) -> Iterator[None]:
    """Run the block for at most ``seconds``: when time is up, it is left quietly."""
    timeout = gevent.Timeout(seconds)
    timeout.start()
    try:
        yield
    except gevent.Timeout as e:
        if e is not timeout:
            raise
    finally:
        timeout.cancel()


def take_within(feeder: Feeder, timeout: float) -> list[Chunk] | None:
    """What one take() returns, or None when nothing arrives within ``timeout``."""
    with within(timeout):
        return feeder.take()
    return None


def take_all(feeder: Feeder, *, room: int | None = None, timeout: float = 5.0) -> list[Chunk]:
    """Every chunk up to the ended one. With ``room``, room is granted again after each take,
    as the master does once the jobs it took left its buffer."""
    chunks: list[Chunk] = []
    with within(timeout):
        while not (chunks and chunks[-1].ended):
            chunks.extend(feeder.take())
            if room is not None:
                feeder.allow(room)
    assert chunks and chunks[-1].ended, f"the stream did not end within {timeout}s: {chunks!r}"
    assert sum(c.ended for c in chunks) == 1, "more than one chunk is marked ended"
    return chunks


def jobs_of(chunks: list[Chunk]) -> list[Any]:
    return [job for chunk in chunks for job in chunk.jobs]


def error_of(chunks: list[Chunk]) -> Any:
    return chunks[-1].error


def parked(ident: int | None) -> bool:
    """The thread ``ident`` waits for room (and pulls nothing meanwhile)."""
    frame = sys._current_frames().get(ident) if ident is not None else None
    return frame is not None and frame.f_code.co_name == "_wait_for_room"


def thread_alive(native_id: int | None) -> bool:
    assert native_id is not None, "the stream was never opened"
    return native_id in {t.id for t in psutil.Process().threads()}


def master_config(tmp_path: Path, **kwargs: Any) -> MasterConfig:
    return MasterConfig(target=Target.parse("jobs", "get_jobs"),
                        state_path=tmp_path / "s.tmstate", **kwargs)


# -- a finite stream ----------------------------------------------------------------------------


def test_all_jobs_arrive_in_order_falsy_ones_included(feeders: Feeders) -> None:
    def get_jobs() -> Iterator[Any]:
        yield from FALSY_JOBS

    feeder = feeders.new(get_jobs)
    feeder.allow(100)
    feeder.start()
    feeder.start()  # a second start starts no second thread (two would race on the stream)
    chunks = take_all(feeder)
    assert jobs_of(chunks) == FALSY_JOBS
    assert [type(j) for j in jobs_of(chunks)] == [type(j) for j in FALSY_JOBS]
    assert chunks[-1].error is None
    assert all(c.origins is None for c in chunks)
    assert feeder.total is None  # a generator does not tell its length


def test_a_small_room_granted_again_and_again_delivers_everything(feeders: Feeders) -> None:
    feeder = feeders.new(lambda: (i for i in range(1000)))
    feeder.allow(7)
    feeder.start()
    chunks: list[Chunk] = []
    with within(5):
        while not (chunks and chunks[-1].ended):
            taken = feeder.take()
            # Never more than the room beyond what was taken before.
            assert sum(len(c.jobs) for c in taken) <= 7
            chunks.extend(taken)
            feeder.allow(7)
    assert chunks and chunks[-1].ended, "the stream did not end within 5s"
    assert sum(c.ended for c in chunks) == 1
    assert jobs_of(chunks) == list(range(1000))


def _no_jobs() -> Iterator[int]:
    yield from ()


@pytest.mark.parametrize("stream", [list, lambda: iter(()), _no_jobs],
                         ids=["empty list", "empty iterator", "empty generator"])
def test_an_empty_stream_ends_at_once(feeders: Feeders, stream: Callable[[], Any]) -> None:
    feeder = feeders.new(stream)
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder, timeout=1.0)
    assert [(c.jobs, c.ended, c.error) for c in chunks] == [([], True, None)]


@pytest.mark.parametrize(("stream", "first", "total"), [
    (lambda: sized((i for i in range(10)), total=10), 0, 10),
    (lambda: sized((i for i in range(10)), total=10), 5, 15),
    (lambda: list(range(4)), 3, 7),
    (lambda: (i for i in range(4)), 3, None),
], ids=["sized", "sized plus first", "list plus first", "generator"])
def test_total_is_first_plus_the_length_the_stream_tells(
        feeders: Feeders, stream: Callable[[], Any], first: int, total: int | None) -> None:
    feeder = feeders.new(stream, first=first)
    assert feeder.total is None  # not opened yet
    feeder.allow(100)
    feeder.start()
    chunks = take_all(feeder)
    assert feeder.total == total
    assert chunks[-1].error is None


# -- the bound --------------------------------------------------------------------------------


def test_the_thread_never_pulls_beyond_the_room_granted(feeders: Feeders) -> None:
    stream = Counting()
    feeder = feeders.new(stream)
    feeder.start()
    feeder.start()  # no second thread
    wait_until(lambda: parked(stream.opened_in), "the thread waits for room")
    assert stream.pulled == 0  # opened, but nothing pulled without room
    assert stream.opened == 1

    taken: list[int] = []

    def stops_at(bound: int) -> None:
        def there() -> bool:
            assert stream.pulled <= bound, f"pulled {stream.pulled} with room for {bound}"
            return stream.pulled == bound and parked(stream.opened_in)
        wait_until(there, f"the thread pulls {bound} jobs and waits")

    feeder.allow(50)
    stops_at(50)
    taken += jobs_of(take_within(feeder, 2) or [])
    assert taken == list(range(50))
    assert parked(stream.opened_in) and stream.pulled == 50  # taking grants nothing

    feeder.allow(30)  # 30 beyond the 50 taken
    stops_at(80)
    feeder.allow(20)  # less room than granted already: nothing changes
    feeder.allow(0)
    assert parked(stream.opened_in) and stream.pulled == 80
    taken += jobs_of(take_within(feeder, 2) or [])
    assert taken == list(range(80))

    feeder.allow(45)  # more room before the jobs are taken: what it says is room beyond taken
    stops_at(125)
    feeder.allow(46)
    stops_at(126)
    while len(taken) < 126:
        more = take_within(feeder, 2)
        assert more is not None, f"only {len(taken)} of the 126 pulled jobs were handed over"
        taken += jobs_of(more)
    assert taken == list(range(126))
    assert stream.opened == 1


def test_a_smaller_room_takes_back_nothing_granted(feeders: Feeders) -> None:
    stream = Counting()
    feeder = feeders.new(stream)
    feeder.allow(100)
    feeder.allow(10)  # the master's buffer filled meanwhile: the grant of 100 stands
    feeder.start()
    wait_until(lambda: stream.pulled == 100 and parked(stream.opened_in),
               "the thread pulls 100 jobs and waits")


def test_a_resumed_stream_pulls_nothing_before_room_is_granted(feeders: Feeders) -> None:
    # The first job, read to compare it with `last`, was once read before any room.
    stream = Counting()
    feeder = feeders.new(stream, expect=0)
    feeder.start()
    wait_until(lambda: parked(stream.opened_in), "the thread waits for room")
    assert stream.pulled == 0, f"pulled {stream.pulled} job(s) with no room granted"


# -- chunks: many jobs from a fast stream, each job at once from a slow one ---------------------


def test_a_fast_stream_comes_in_chunks_of_many_jobs(feeders: Feeders) -> None:
    n = 200_000

    def get_jobs() -> Iterator[int]:
        yield from range(n)

    feeder = feeders.new(get_jobs)
    feeder.allow(DEFAULT_BUFFER_SIZE)
    feeder.start()
    chunks = take_all(feeder, room=DEFAULT_BUFFER_SIZE, timeout=10)
    assert jobs_of(chunks) == list(range(n))
    assert len(chunks) < n // 100, f"{n} jobs came in {len(chunks)} chunks"
    assert max(len(c.jobs) for c in chunks) >= 1000


def test_a_slow_stream_hands_each_job_over_as_it_is_yielded(feeders: Feeders) -> None:
    def get_jobs() -> Iterator[tuple[int, float]]:
        for i in range(4):
            time.sleep(0.2)
            yield i, time.monotonic()

    feeder = feeders.new(get_jobs)
    feeder.allow(100)
    feeder.start()
    latencies: list[float] = []
    chunks: list[Chunk] = []
    with within(5):
        while not (chunks and chunks[-1].ended):
            taken = feeder.take()
            now = time.monotonic()
            latencies += [now - yielded for _i, yielded in jobs_of(taken)]
            chunks.extend(taken)
    assert chunks and chunks[-1].ended, "the stream did not end within 5s"
    assert [i for i, _t in jobs_of(chunks)] == [0, 1, 2, 3]
    assert max(latencies) < 0.1, f"yield to take(): {[round(t, 3) for t in latencies]}s"
    assert all(len(c.jobs) <= 1 for c in chunks), [len(c.jobs) for c in chunks]


def _sleep_between_yields(yielded: list[tuple[int, float]], stop: threading.Event
                          ) -> Iterator[tuple[int, float]]:
    for i in range(6):
        if i:
            time.sleep(0.15)
        yielded.append((i, time.monotonic()))
        yield yielded[-1]


def _burst_then_wait(yielded: list[tuple[int, float]], stop: threading.Event
                     ) -> Iterator[tuple[int, float]]:
    """Three jobs due now, then a wait for the next due time (a scheduler's stream)."""
    for i in range(6):
        if i == 3:
            time.sleep(0.6)
        yielded.append((i, time.monotonic()))
        yield yielded[-1]


def _fast_then_slow(yielded: list[tuple[int, float]], stop: threading.Event
                    ) -> Iterator[tuple[int, float]]:
    """5000 jobs at once, then one every 0.05s (until the test is over)."""
    for i in itertools.count():
        if i >= 5000 and stop.wait(0.05):
            return
        yielded.append((i, time.monotonic()))
        yield yielded[-1]


def test_once_the_stream_has_blocked_its_jobs_go_one_by_one(feeders: Feeders) -> None:
    yielded: list[tuple[int, float]] = []
    feeder = feeders.new(lambda: _sleep_between_yields(yielded, feeders.gate()))
    feeder.allow(100)
    feeder.start()
    latencies: dict[int, float] = {}
    chunks: list[Chunk] = []
    with within(5):
        while not (chunks and chunks[-1].ended):
            taken = feeder.take()
            now = time.monotonic()
            latencies.update((i, round(now - t, 3)) for i, t in jobs_of(taken))
            chunks.extend(taken)
    assert chunks and chunks[-1].ended, "the stream did not end within 5s"
    assert sorted(latencies) == list(range(6))
    # Each job goes over as it is yielded, the first ones too (see the test below).
    assert max(latencies.values()) < 0.1, latencies


# A step in progress once held the jobs pulled before a wait until it returned: up to
# FEED_STEP_MAX_JOBS slow jobs later, minutes for a burst followed by a trickle.
@pytest.mark.parametrize("get_jobs", [_sleep_between_yields, _burst_then_wait, _fast_then_slow],
                         ids=["sleep between yields", "burst then wait", "fast then slow"])
def test_a_job_yielded_before_a_wait_is_not_held_back_for_it(
        feeders: Feeders,
        get_jobs: Callable[[list[tuple[int, float]], threading.Event],
                           Iterator[tuple[int, float]]]) -> None:
    yielded: list[tuple[int, float]] = []
    stop = feeders.gate()
    feeder = feeders.new(lambda: get_jobs(yielded, stop))
    feeder.allow(10**6)
    feeder.start()
    received: dict[int, float] = {}
    deadline = time.monotonic() + 1.5
    ended = False
    while not ended and (left := deadline - time.monotonic()) > 0:
        taken = take_within(feeder, left)
        if taken is None:
            break
        now = time.monotonic()
        received.update((i, now) for i, _t in jobs_of(taken))
        ended = any(c.ended for c in taken)
    now = time.monotonic()
    assert list(received) == list(range(len(received)))
    late = {i: round(received.get(i, now) - t, 3) for i, t in list(yielded)
            if received.get(i, now) - t >= 0.1}
    assert not late, (f"{len(late)} of {len(yielded)} jobs yielded were handed over 0.1s or "
                      f"more after (or not yet); job: seconds: {dict(list(late.items())[:6])}")


# -- blocking in C ------------------------------------------------------------------------------


def _c_sleep(seconds: float) -> None:
    ctypes.CDLL(None).usleep(int(seconds * 1_000_000))  # a CDLL call releases the GIL


@pytest.mark.parametrize("block", [_c_sleep, time.sleep], ids=["ctypes usleep", "time.sleep"])
def test_a_stream_blocked_in_c_does_not_stall_the_hub(
        feeders: Feeders, block: Callable[[float], None]) -> None:
    blocked: list[float] = []  # when the generator's block began and ended

    def get_jobs() -> Iterator[str]:
        blocked.append(time.monotonic())
        block(0.6)
        blocked.append(time.monotonic())
        yield "after the wait"

    ticks: list[float] = []

    def ticker() -> None:
        while True:
            gevent.sleep(0.05)
            ticks.append(time.monotonic())

    greenlet = gevent.spawn(ticker)
    try:
        feeder = feeders.new(get_jobs)
        feeder.allow(10)
        feeder.start()
        chunks = take_within(feeder, 3)
    finally:
        greenlet.kill()
    assert chunks is not None and jobs_of(chunks) == ["after the wait"]
    began, ended = blocked
    assert ended - began > 0.5, "the generator did not block"
    during = [began, *(t for t in ticks if began < t < ended), ended]
    gaps = [b - a for a, b in itertools.pairwise(during)]
    assert len(during) - 2 >= (ended - began) / 0.05 / 2, \
        f"{len(during) - 2} ticks in {ended - began:.2f}s"
    assert max(gaps) < 0.25, f"the hub stalled for {max(gaps):.2f}s"


# -- the user's errors ---------------------------------------------------------------------------


def exploding_get_jobs(k: int) -> Iterator[int]:
    yield from range(k)
    raise ValueError(f"boom after {k}")


@pytest.mark.parametrize("k", [0, 5, 10_000])
def test_a_stream_that_raises_hands_over_its_jobs_then_the_error(
        feeders: Feeders, k: int) -> None:
    feeder = feeders.new(lambda: exploding_get_jobs(k))
    feeder.allow(100_000)
    feeder.start()
    chunks = take_all(feeder)
    assert jobs_of(chunks) == list(range(k))
    error = error_of(chunks)
    assert isinstance(error, UserCodeError)
    assert str(error) == f"get_jobs raised ValueError: boom after {k}"
    assert "exploding_get_jobs" in error.user_traceback
    assert f"ValueError: boom after {k}" in error.user_traceback
    assert all(c.error is None for c in chunks[:-1])


def test_a_resumed_stream_that_raises_at_once_reports_it(feeders: Feeders) -> None:
    feeder = feeders.new(lambda: exploding_get_jobs(0), expect=0, skip=1)
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder)
    assert jobs_of(chunks) == []
    assert isinstance(error_of(chunks), UserCodeError)
    assert "exploding_get_jobs" in error_of(chunks).user_traceback


def test_get_jobs_raising_when_called_is_the_users_error(feeders: Feeders) -> None:
    def get_jobs_that_cannot_connect(last: Any = None) -> Iterator[int]:
        raise RuntimeError("no database at db.example")

    feeder = feeders.new(opener(get_jobs_that_cannot_connect, {}))
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder)
    assert jobs_of(chunks) == []
    error = error_of(chunks)
    assert isinstance(error, UserCodeError)
    assert str(error) == "get_jobs raised RuntimeError: no database at db.example"
    assert "get_jobs_that_cannot_connect" in error.user_traceback


@pytest.mark.parametrize("returned", [None, 42])
def test_get_jobs_returning_no_iterable_is_a_config_error(
        feeders: Feeders, returned: Any) -> None:
    def get_jobs(last: Any = None) -> Any:
        return returned

    feeder = feeders.new(opener(get_jobs, {}))
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder)
    error = error_of(chunks)
    assert isinstance(error, ConfigError)
    assert "\n" not in str(error)
    assert f"get_jobs returned {returned!r}, which is not iterable" in str(error)


class _IterRaises:
    def __iter__(self) -> Iterator[int]:
        raise RuntimeError("the cursor could not open")


class _HintRaises:
    def __iter__(self) -> Iterator[int]:
        return iter(range(3))

    def __length_hint__(self) -> int:
        raise RuntimeError("the count query failed")


# These once ended the run as an InternalError (critical log, no final checkpoint).
@pytest.mark.parametrize("stream", [
    _IterRaises, _HintRaises, lambda: sized((i for i in range(3)), total=-1)],
    ids=["__iter__ raises", "__length_hint__ raises", "sized with a negative total"])
def test_a_users_iterable_failing_is_not_an_internal_error(
        feeders: Feeders, stream: Callable[[], Any]) -> None:
    feeder = feeders.new(stream)
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder)
    errors = [c.error for c in chunks if c.error is not None]
    assert not any(isinstance(e, InternalError) for e in errors), errors


def test_unknown_arguments_are_a_config_error_before_any_thread(tmp_path: Path) -> None:
    calls: list[Any] = []

    def get_jobs(count: str, last: Any = None) -> Iterator[int]:
        calls.append(count)
        yield from range(int(count))

    with pytest.raises(ConfigError, match="bogus") as raised:
        opener(get_jobs, {"count": "3", "bogus": "1"})
    assert "\n" not in str(raised.value)
    with pytest.raises(ConfigError, match="bogus"):
        feeder_for(get_jobs, master_config(tmp_path, kwargs={"count": "3", "bogus": "1"}), None)

    assert calls == []  # nothing was called: the check is of the signature


def test_a_stream_without_last_is_resumed_by_position(feeders: Feeders, tmp_path: Path) -> None:
    calls: list[Any] = []

    def get_jobs(count: str) -> Iterator[str]:
        calls.append(count)
        yield from (f"job-{i}" for i in range(int(count)))

    cp = Checkpoint(resume_seq=7, last_seq=6, last_job="job-6", has_last=True)
    feeder = feeders.add(feeder_for(get_jobs, master_config(tmp_path, kwargs={"count": "10"}),
                                    cp))
    feeder.allow(100)
    feeder.start()
    chunks = take_all(feeder)
    assert calls == ["10"]  # called without `last`, which it has no parameter for
    assert jobs_of(chunks) == ["job-7", "job-8", "job-9"]  # the 7 before are skipped


# -- get_jobs runs in the feeder's thread --------------------------------------------------------


def test_get_jobs_is_called_in_the_thread_that_pulls_it(feeders: Feeders) -> None:
    seen: dict[str, int] = {}

    def get_jobs(count: str, last: Any = None) -> Iterator[int]:
        """Not a generator: it opens a connection now and returns a generator using it."""
        seen["called in"] = threading.get_ident()
        conn = sqlite3.connect(":memory:")  # usable only in the thread that opened it
        conn.execute("CREATE TABLE t (v INTEGER)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(int(count))])

        def rows() -> Iterator[int]:
            seen["pulled in"] = threading.get_ident()
            for (v,) in conn.execute("SELECT v FROM t ORDER BY v"):
                yield v
            conn.close()

        return rows()

    feeder = feeders.new(opener(get_jobs, {"count": "50"}))
    assert seen == {}  # opener() calls nothing
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder, room=10)
    assert chunks[-1].error is None, getattr(chunks[-1].error, "user_traceback", "")
    assert jobs_of(chunks) == list(range(50))
    assert seen["called in"] != threading.get_ident()
    assert seen["called in"] == seen["pulled in"]


# -- feeder_for: fresh, resumed by value, retried from a failures file -------------------------


def _counting_get_jobs(calls: list[Any], *, ignore_last: bool = False
                       ) -> Callable[..., Iterable[str]]:
    def get_jobs(count: str, last: Any = MISSING) -> Iterable[str]:
        calls.append(last)
        start = 0 if last is MISSING or ignore_last else int(last.removeprefix("job-"))
        return sized((f"job-{i}" for i in range(start, int(count))), total=int(count) - start)
    return get_jobs


@pytest.mark.parametrize("cp", [None, Checkpoint(resume_seq=0, has_last=False)],
                         ids=["no checkpoint", "checkpoint before any job"])
def test_a_fresh_run_calls_get_jobs_without_last(
        feeders: Feeders, tmp_path: Path, cp: Checkpoint | None) -> None:
    calls: list[Any] = []
    feeder = feeders.add(feeder_for(_counting_get_jobs(calls),
                                    master_config(tmp_path, kwargs={"count": "6"}), cp))
    feeder.allow(100)
    feeder.start()
    chunks = take_all(feeder)
    assert calls == [MISSING]
    assert jobs_of(chunks) == [f"job-{i}" for i in range(6)]
    assert (feeder.first, feeder.total) == (0, 6)


@pytest.mark.parametrize("resume_seq", [4, 5], ids=["resume at last", "resume after last"])
def test_a_resume_by_value_starts_from_last(
        feeders: Feeders, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        resume_seq: int) -> None:
    caplog.set_level(logging.INFO, logger="taskmaster.feeder")
    calls: list[Any] = []
    cp = Checkpoint(resume_seq=resume_seq, last_seq=4, last_job="job-4", has_last=True)
    feeder = feeders.add(feeder_for(_counting_get_jobs(calls),
                                    master_config(tmp_path, kwargs={"count": "10"}), cp))
    feeder.allow(100)
    feeder.start()
    chunks = take_all(feeder)
    assert calls == ["job-4"]
    # resume_seq - last_seq jobs are skipped: job-4 is settled when the run resumes after it.
    assert jobs_of(chunks) == [f"job-{i}" for i in range(resume_seq, 10)]
    assert feeder.first == 4
    assert feeder.total == 4 + 6  # the stream from last on tells 6 jobs
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("resume_seq", [4, 5], ids=["resume at last", "resume after last"])
def test_a_stream_that_does_not_begin_with_last_is_warned_about(
        feeders: Feeders, tmp_path: Path, caplog: pytest.LogCaptureFixture,
        resume_seq: int) -> None:
    caplog.set_level(logging.WARNING, logger="taskmaster.feeder")
    calls: list[Any] = []
    cp = Checkpoint(resume_seq=resume_seq, last_seq=4, last_job="job-4", has_last=True)
    get_jobs = _counting_get_jobs(calls, ignore_last=True)  # always from job-0
    feeder = feeders.add(feeder_for(get_jobs, master_config(tmp_path, kwargs={"count": "10"}),
                                    cp))
    feeder.allow(100)
    feeder.start()
    chunks = take_all(feeder)
    assert calls == ["job-4"]
    # The stream is taken as it comes: a first job that is not `last` is never skipped, even
    # when the run resumes after `last` (it may be the next job: it once was lost); and when
    # `last` itself was not finished (resume at it), it runs first (it once was lost too).
    first = ["job-4"] if resume_seq == 4 else []
    assert jobs_of(chunks) == first + [f"job-{i}" for i in range(10)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "get_jobs(last='job-4') began with 'job-0'" in warnings[0]


def _write_failures(path: Path, records: list[tuple[int, Any]]) -> None:
    log = FailureLog(path)
    try:
        log.record([Failure(seq=n, job=job, attempts=1, slave=b"slave-1",
                            error=JobError("ValueError", f"bad {n}", "Traceback ..."),
                            origin=origin)
                    for n, (origin, job) in enumerate(records)])
    finally:
        log.close()


RECORDS: list[tuple[int, Any]] = [(3, {"id": 3}), (7, "seven"), (11, None), (40, 0),
                                  (41, ("t", 41))]


@pytest.mark.parametrize("resume_seq", [None, 0, 2, 5],
                         ids=["fresh", "resume at 0", "resume at 2", "resume at the end"])
def test_a_retry_replays_the_recorded_jobs_with_their_origins(
        feeders: Feeders, tmp_path: Path, resume_seq: int | None) -> None:
    path = tmp_path / "run.failures.jsonl"
    _write_failures(path, RECORDS)
    calls: list[Any] = []
    cp = (None if resume_seq is None else
          Checkpoint(resume_seq=resume_seq, last_seq=resume_seq, last_job="ignored",
                     has_last=True))
    feeder = feeders.add(feeder_for(_counting_get_jobs(calls),
                                    master_config(tmp_path, retry_failures=path), cp))
    feeder.allow(2)
    feeder.start()
    chunks = take_all(feeder, room=2)
    skip = resume_seq or 0
    assert jobs_of(chunks) == [job for _origin, job in RECORDS[skip:]]
    assert [o for c in chunks for o in c.origins or []] == [o for o, _job in RECORDS[skip:]]
    assert all(c.origins is not None and len(c.origins) == len(c.jobs) for c in chunks)
    assert chunks[-1].error is None
    assert feeder.total == len(RECORDS)  # positions in the file, as the ledger numbers them
    assert calls == []  # a retry never calls get_jobs


def test_a_corrupt_failures_file_is_a_state_error(feeders: Feeders, tmp_path: Path) -> None:
    path = tmp_path / "run.failures.jsonl"
    _write_failures(path, RECORDS[:2])
    with open(path, "a", encoding="utf-8") as f:
        f.write("not a record\n")
    feeder = feeders.add(feeder_for(_counting_get_jobs([]),
                                    master_config(tmp_path, retry_failures=path), None))
    feeder.allow(10)
    feeder.start()
    chunks = take_all(feeder)
    assert jobs_of(chunks) == [job for _origin, job in RECORDS[:2]]
    assert isinstance(error_of(chunks), StateError), repr(error_of(chunks))


# -- close ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("room", [10**9, 10], ids=["pulling", "waiting for room"])
def test_close_stops_the_thread(feeders: Feeders, room: int) -> None:
    stream = Counting()
    feeder = feeders.new(stream)
    feeder.allow(room)
    feeder.start()
    first = take_within(feeder, 2)  # within a turn or so, not once the room is full
    assert first is not None and jobs_of(first)[:1] == [0]
    if room == 10:
        wait_until(lambda: stream.pulled == 10 and parked(stream.opened_in),
                   "the thread waits for room")
    else:
        wait_until(lambda: stream.pulled > len(jobs_of(first)), "the thread pulls on")
    feeder.close()
    wait_until(lambda: not thread_alive(stream.native_id), "the thread leaves after close",
               timeout=2)
    # An endless stream granted endless room: only close() ends its thread. What it handed
    # over before close is still there to take, in order; nothing after.
    received = jobs_of(first)
    while (more := take_within(feeder, 4 * FEED_TURN_S)) is not None:
        received += jobs_of(more)
    assert received == list(range(len(received)))
    assert len(received) <= stream.pulled
    if room == 10:
        assert stream.pulled == 10 and received == list(range(10))


def test_close_while_blocked_in_the_stream_hands_over_nothing_more(feeders: Feeders) -> None:
    entered, gate = threading.Event(), feeders.gate()
    stream = Counting()

    def get_jobs() -> Iterator[int]:
        it = stream()
        entered.set()
        gate.wait(10)  # blocked inside the generator, before its first job
        yield from it

    ticks: list[float] = []

    def ticker() -> None:
        while True:
            gevent.sleep(0.01)
            ticks.append(time.monotonic())

    greenlet = gevent.spawn(ticker)
    try:
        feeder = feeders.new(get_jobs)
        feeder.allow(10**6)
        feeder.start()
        wait_until(entered.is_set, "the generator runs")
        began = time.monotonic()
        feeder.close()
        assert time.monotonic() - began < 0.05, "close() waited for the blocked thread"
        already = len(ticks)
        wait_until(lambda: len(ticks) >= already + 5, "the hub runs on after close")
        assert thread_alive(stream.native_id)  # still blocked: the gate is closed
    finally:
        greenlet.kill()
        gate.set()
    wait_until(lambda: not thread_alive(stream.native_id),
               "the thread leaves once the stream returns", timeout=2)
    assert stream.pulled <= 1, f"pulled {stream.pulled} jobs after close"
    assert take_within(feeder, 4 * FEED_TURN_S) is None, "a chunk was handed over after close"


class _Plain:
    """A job type that does not define equality (a plain class, as users write them)."""

    def __init__(self, n: int) -> None:
        self.n = n


def test_a_job_without_equality_is_compared_by_its_pickle(
        feeders: Feeders, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`last` comes back from the state file as another object: compared by identity, every
    resume would warn, and a resume after `last` would never skip it."""
    caplog.set_level(logging.WARNING, logger="taskmaster.feeder")

    def get_jobs(last: _Plain | None = None) -> Iterator[_Plain]:
        yield from (_Plain(i) for i in range(last.n if last else 0, 6))

    cp = Checkpoint(resume_seq=4, last_seq=3, last_job=_Plain(3), has_last=True)
    feeder = feeders.add(feeder_for(get_jobs, master_config(tmp_path), cp))
    feeder.allow(100)
    feeder.start()
    assert [job.n for job in jobs_of(take_all(feeder))] == [4, 5]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
