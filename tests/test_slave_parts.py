"""The slave's parts without sockets or processes: `Pacing` (what a slave asks for), `Holdings`
(what it holds and owes the master) and `WorkerPool` with `Isolation` (the greenlets that call
handle_job). Each is driven through its real API; the pool runs on gevent in this process, and
every wait is bounded by a deadline, so a broken pool fails a test instead of hanging it.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import gevent
import gevent.event
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from taskmaster.config import MAX_WINDOW_JOBS, PIECE_S, SLAVE_WORK_AHEAD_S, STEAL_AFTER_S
from taskmaster.holdings import Failures, Holdings, Piece
from taskmaster.messages import BatchDone, JobError
from taskmaster.pacing import Pacing
from taskmaster.pool import Isolation, JobTimeoutError, WorkerPool
from taskmaster.protocol import NO_EPOCH

EPOCH = b"epoch-one"
NEW_EPOCH = b"epoch-two"
ERR = JobError("ValueError", "boom", "Traceback ...")
WAIT_S = 5.0
"""Longest any test waits for a condition: far beyond what a passing run needs."""


def until(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    """Let the greenlets run until ``condition`` holds; False if it did not within the time."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.001)
    return True


def let_others_run() -> None:
    """Give every ready greenlet its turns, to show that one which could go on does not."""
    for _ in range(5):
        gevent.idle()
    gevent.sleep(0.02)


# -- Pacing ---------------------------------------------------------------------------------


def paced(concurrency: int, job_s: float, pieces: int = 60, jobs: int = 10,
          running: int = 1) -> Pacing:
    """A Pacing that has seen ``pieces`` pieces of ``jobs`` jobs taking ``job_s`` each, with
    ``running`` pieces in progress whenever one started."""
    pacing = Pacing(concurrency)
    for _ in range(pieces):
        pacing.started(running)
        pacing.finished(job_s * jobs, jobs)
    return pacing


def test_pacing_starts_with_two_jobs_per_greenlet_and_a_millisecond_guess() -> None:
    for concurrency in (1, 3, 10):
        pacing = Pacing(concurrency)
        assert pacing.window == 2 * concurrency
        assert pacing.overlap == 1.0
    # Each greenlet's first turn is one job; then a piece is PIECE_S of what a job took
    # (here, as guessed: 1 ms).
    pacing = Pacing(4)
    for _ in range(4):
        assert pacing.piece_size(10_000, alone=False) == 1
        pacing.finished(0.001, 1)
    assert pacing.piece_size(10_000, alone=False) == round(PIECE_S / 0.001)


def test_window_grows_for_fast_jobs_and_stops_at_max_window_jobs() -> None:
    pacing = Pacing(4)
    windows = []
    for _ in range(80):
        pacing.started(1)
        pacing.finished(1e-6 * 1000, 1000)  # a microsecond a job
        windows.append(pacing.window)
    assert windows == sorted(windows), "the window must grow as the estimate falls"
    # Not before each greenlet's first turn is timed (those are single jobs); then it grows,
    # it does not jump.
    assert windows[:3] == [2 * 4] * 3
    assert 2 * 4 < windows[3] < MAX_WINDOW_JOBS
    assert windows[-1] == MAX_WINDOW_JOBS
    # Overlap does not lift it past the bound either.
    assert paced(4, 1e-6, running=50).window == MAX_WINDOW_JOBS


@pytest.mark.parametrize("concurrency", [1, 7, 100])
def test_window_never_below_two_jobs_per_greenlet_for_slow_jobs(concurrency: int) -> None:
    assert paced(concurrency, 10.0).window == 2 * concurrency
    assert paced(concurrency, 10.0, running=concurrency).window == 2 * concurrency


@settings(max_examples=200, deadline=None)
@given(concurrency=st.integers(1, 1000),
       pieces=st.lists(st.tuples(st.floats(0, 100, allow_nan=False), st.integers(1, 5000),
                                 st.integers(1, 1000)), min_size=1, max_size=20))
def test_window_stays_within_its_bounds(concurrency: int,
                                        pieces: list[tuple[float, int, int]]) -> None:
    pacing = Pacing(concurrency)
    for elapsed_s, jobs, running in pieces:
        pacing.started(running)
        pacing.finished(elapsed_s, jobs)
        assert 2 * concurrency <= pacing.window <= MAX_WINDOW_JOBS
        assert pacing.job_s > 0
        assert 1 <= pacing.piece_size(jobs, alone=False) <= jobs


def test_cpu_bound_slave_asks_for_about_work_ahead_seconds() -> None:
    job_s = 0.002
    pacing = paced(10, job_s)  # overlap 1: a piece that never yields runs alone
    assert pacing.overlap == pytest.approx(1.0)
    assert pacing.window > 2 * 10  # not the floor: the estimate decides
    assert pacing.window * job_s == pytest.approx(SLAVE_WORK_AHEAD_S, rel=0.02)


def test_overlap_raises_the_window_of_io_bound_jobs() -> None:
    cpu = paced(2, 0.01, running=1)
    io = paced(2, 0.01, running=8)  # eight pieces waiting on I/O at once
    assert io.overlap == pytest.approx(8.0, rel=0.01)
    assert io.job_s == pytest.approx(cpu.job_s)
    assert io.window == pytest.approx(8 * cpu.window, rel=0.02)
    assert io.window * io.job_s == pytest.approx(8 * SLAVE_WORK_AHEAD_S, rel=0.02)


def test_job_time_follows_a_change_of_speed_within_a_few_pieces() -> None:
    slow, fast = 0.01, 0.0001
    pacing = paced(2, slow)
    assert pacing.job_s == pytest.approx(slow, rel=0.01)
    for _ in range(3):
        pacing.finished(fast * 10, 10)
    assert pacing.job_s < 0.4 * slow
    for _ in range(25):
        pacing.finished(fast * 10, 10)
    assert pacing.job_s == pytest.approx(fast, rel=0.05)


def test_job_time_has_a_floor_when_pieces_take_no_measurable_time() -> None:
    pacing = paced(3, 0.0)
    assert pacing.job_s == pytest.approx(1e-7)
    assert pacing.window == MAX_WINDOW_JOBS
    assert pacing.piece_size(MAX_WINDOW_JOBS, alone=False) == MAX_WINDOW_JOBS


def test_piece_size_is_one_for_a_suspect_batch_whatever_the_speed() -> None:
    for pacing in (Pacing(4), paced(4, 1e-6), paced(4, 5.0)):
        for jobs in (1, 2, 5000):
            assert pacing.piece_size(jobs, alone=True) == 1


def test_piece_size_is_about_piece_s_of_work_capped_by_the_batch() -> None:
    job_s = 0.0005
    pacing = paced(4, job_s)
    size = pacing.piece_size(10_000, alone=False)
    assert abs(size - PIECE_S / job_s) <= 1
    assert size * job_s == pytest.approx(PIECE_S, rel=0.02)
    assert pacing.piece_size(30, alone=False) == 30  # a small batch is one piece
    assert pacing.piece_size(1, alone=False) == 1
    # A job slower than a piece's worth: one job a turn, never zero.
    assert paced(4, 2 * PIECE_S).piece_size(100, alone=False) == 1


# -- Holdings -------------------------------------------------------------------------------


def check_consistent(h: Holdings, running: Iterable[Piece] = ()) -> None:
    """What must hold whatever was done to ``h``: ``held`` is the jobs queued or running, each
    batch counts exactly its queued and running pieces, the heartbeat snapshot names the
    batches kept, and no counter is negative. ``running`` are the pieces taken, not finished."""
    running = list(running)
    queued = list(h.queue)
    assert h.held == sum(len(p.jobs) for p in queued + running)
    assert h.held >= 0 and h.done >= 0 and h.failed_attempts >= 0
    assert h.window(0) >= 0
    for piece in queued:
        assert h.batches.get(piece.batch.bid) is piece.batch, "a queued piece of a lost batch"
        assert piece.jobs, "an empty piece"
    for bid, batch in h.batches.items():
        assert batch.bid == bid
        assert batch.pieces_left == sum(1 for p in queued + running if p.batch is batch)
    held, started = h.snapshot()
    assert isinstance(held, frozenset) and isinstance(started, frozenset)
    assert held == set(h.batches)
    assert started == {bid for bid, batch in h.batches.items() if batch.started}
    assert started <= held


def take_all(h: Holdings) -> list[Piece]:
    pieces = []
    while (piece := h.next_piece()) is not None:
        pieces.append(piece)
    return pieces


def test_add_cuts_a_batch_into_pieces_at_the_right_offsets() -> None:
    h = Holdings()
    jobs = [f"job-{i}" for i in range(10)]
    h.add(7, EPOCH, jobs, False, 3)
    check_consistent(h)
    assert h.held == 10
    assert [(p.offset, p.jobs) for p in h.queue] == [
        (0, jobs[0:3]), (3, jobs[3:6]), (6, jobs[6:9]), (9, jobs[9:10])]
    assert all(p.batch.bid == 7 and not p.alone for p in h.queue)
    assert h.batches[7].pieces_left == 4 and h.batches[7].size == 10
    assert h.snapshot() == (frozenset({7}), frozenset())

    # A piece as large as the batch, or larger: the batch is one piece.
    for piece in (10, 11, 5000):
        whole = Holdings()
        whole.add(1, EPOCH, jobs, True, piece)
        assert [(p.offset, p.jobs, p.alone) for p in whole.queue] == [(0, jobs, True)]
        check_consistent(whole)


def test_next_piece_takes_pieces_in_order_and_marks_the_batch_started() -> None:
    h = Holdings()
    assert h.next_piece() is None
    h.add(1, EPOCH, list(range(4)), False, 2)
    h.add(2, EPOCH, list(range(4, 6)), False, 2)
    first = h.next_piece()
    assert first is not None and (first.batch.bid, first.offset) == (1, 0)
    assert h.snapshot() == (frozenset({1, 2}), frozenset({1}))
    check_consistent(h, [first])
    rest = take_all(h)
    assert [(p.batch.bid, p.offset, p.jobs) for p in rest] == [(1, 2, [2, 3]), (2, 0, [4, 5])]
    assert h.snapshot() == (frozenset({1, 2}), frozenset({1, 2}))
    assert h.next_piece() is None
    check_consistent(h, [first, *rest])


def test_a_batch_is_reported_once_its_last_piece_is_done_with_all_its_failures() -> None:
    h = Holdings()
    h.add(5, EPOCH, list(range(10)), False, 4)  # pieces at 0, 4, 8
    pieces = take_all(h)
    assert h.report_due is None
    h.finish(pieces[1], [(4, ERR), (6, ERR)], EPOCH, now=10.0)
    assert h.report_due == 10.0  # something done waits to be acknowledged since then
    h.finish(pieces[0], [], EPOCH, now=11.0)
    assert h.report_due == 10.0
    check_consistent(h, pieces[2:])
    assert h.report() == [], "a batch is acknowledged as a whole, not piece by piece"
    assert h.snapshot() == (frozenset({5}), frozenset({5}))

    h.finish(pieces[2], [(9, ERR)], EPOCH, now=12.0)
    assert (h.done, h.failed_attempts, h.held) == (7, 3, 0)
    assert h.snapshot() == (frozenset({5}), frozenset({5}))  # named until acknowledged
    check_consistent(h)
    report = h.report()
    assert report == [BatchDone(5, ((4, ERR), (6, ERR), (9, ERR)))]
    assert h.report_due is None
    assert h.snapshot() == (frozenset(), frozenset())
    assert h.batches == {}
    assert h.report() == []  # reported once only
    check_consistent(h)


def test_report_gathers_every_finished_batch_and_keeps_the_others() -> None:
    h = Holdings()
    h.add(1, EPOCH, [0, 1], False, 2)
    h.add(2, EPOCH, [2, 3], False, 1)
    h.add(3, EPOCH, [4], False, 1)
    one, two_a, two_b, three = take_all(h)
    h.finish(one, [], EPOCH, 1.0)
    h.finish(two_a, [], EPOCH, 1.0)
    h.finish(three, [(0, ERR)], EPOCH, 1.0)
    assert sorted(h.report(), key=lambda d: d.bid) == [BatchDone(1), BatchDone(3, ((0, ERR),))]
    assert h.snapshot() == (frozenset({2}), frozenset({2}))
    check_consistent(h, [two_b])
    h.finish(two_b, [], EPOCH, 2.0)
    assert h.report() == [BatchDone(2)]


def test_window_adds_back_jobs_done_in_unacknowledged_batches() -> None:
    h = Holdings()
    h.add(1, EPOCH, list(range(10)), False, 5)
    h.add(2, EPOCH, list(range(3)), False, 3)
    a, b, c = take_all(h)
    assert h.window(100) == 100
    h.finish(a, [(2, ERR)], EPOCH, 0.0)
    assert h.window(100) == 105, "a failed job is done too: the master counts it as ours"
    h.finish(c, [], EPOCH, 0.0)
    assert h.window(100) == 108
    h.report()  # batch 2 is acknowledged; batch 1 is still open
    assert h.window(100) == 105
    h.finish(b, [], EPOCH, 0.0)
    assert h.window(100) == 110
    h.report()
    assert h.window(100) == 100
    assert h.window(0) == 0
    check_consistent(h)


def test_hand_back_returns_only_unstarted_batches_and_drops_their_pieces() -> None:
    h = Holdings()
    h.add(1, EPOCH, list(range(6)), False, 2)  # started below, two pieces still queued
    h.add(2, EPOCH, list(range(4)), False, 2)
    h.add(3, EPOCH, list(range(1)), True, 1)
    running = h.next_piece()
    assert running is not None and running.batch.bid == 1
    assert sorted(h.hand_back()) == [2, 3]
    check_consistent(h, [running])
    assert h.held == 6  # batch 1: the running piece and its two queued pieces
    assert [(p.batch.bid, p.offset) for p in h.queue] == [(1, 2), (1, 4)]
    assert h.snapshot() == (frozenset({1}), frozenset({1}))
    assert h.hand_back() == []  # nothing left that has not started

    # Batch 1 goes on and is acknowledged as usual.
    rest = take_all(h)
    for piece in [running, *rest]:
        h.finish(piece, [], EPOCH, 0.0)
    assert h.report() == [BatchDone(1)]
    assert (h.held, h.done) == (0, 6)
    check_consistent(h)


def test_hand_back_keeps_finished_batches_waiting_to_be_acknowledged() -> None:
    h = Holdings()
    h.add(1, EPOCH, [0], False, 1)
    piece = h.next_piece()
    assert piece is not None
    h.finish(piece, [], EPOCH, 0.0)
    assert h.hand_back() == []
    assert h.report() == [BatchDone(1)]


def test_forget_drops_queued_pieces_and_running_batches_go_unacknowledged() -> None:
    h = Holdings()
    h.add(2, EPOCH, list(range(2)), False, 2)  # finished, not yet acknowledged
    h.add(1, EPOCH, list(range(6)), False, 2)  # one piece done, one running, one queued
    h.add(3, EPOCH, list(range(3)), False, 3)  # not started
    p2, p1a, p1b = h.next_piece(), h.next_piece(), h.next_piece()
    assert p2 is not None and p1a is not None and p1b is not None
    p1c, p3 = h.queue
    assert (p1c.batch.bid, p1c.offset, p3.batch.bid) == (1, 4, 3)
    h.finish(p2, [], EPOCH, 1.0)
    h.finish(p1b, [(3, ERR)], EPOCH, 1.0)
    assert h.window(0) == 4
    assert h.report_due == 1.0
    check_consistent(h, [p1a])
    done, failed = h.done, h.failed_attempts

    h.forget(NO_EPOCH)
    check_consistent(h, [p1a])
    assert not h.queue
    assert h.held == len(p1a.jobs)
    assert h.window(0) == 0, "the new master counts nothing of the old leases as ours"
    assert h.report_due is None
    assert h.report() == [], "finished batches of the old master are not acknowledged"
    assert h.snapshot() == (frozenset({1}), frozenset({1}))  # still running here
    assert h.hand_back() == []

    # The running piece finishes under the new master: counted, but not acknowledged.
    h.finish(p1a, [(1, ERR)], NEW_EPOCH, 2.0)
    assert (h.done, h.failed_attempts) == (done + 1, failed + 1)
    assert h.held == 0
    assert h.report_due is None
    assert h.report() == []
    assert h.window(0) == 0
    assert h.batches == {}
    assert h.snapshot() == (frozenset(), frozenset())
    check_consistent(h)

    # New work from the new master is acknowledged as usual.
    h.add(9, NEW_EPOCH, [0, 1], False, 2)
    piece = h.next_piece()
    assert piece is not None
    h.finish(piece, [], NEW_EPOCH, 3.0)
    assert h.window(0) == 2
    assert h.report() == [BatchDone(9)]
    check_consistent(h)


def test_forget_twice_keeps_a_running_batch_unacknowledged() -> None:
    # The master that lost track of us welcomes us again with the same epoch: a lease it gave
    # up on must stay unacknowledged even though the epoch is the same again.
    h = Holdings()
    h.add(1, EPOCH, [0, 1], False, 1)
    piece = h.next_piece()
    assert piece is not None
    h.forget(NO_EPOCH)
    h.forget(NO_EPOCH)
    check_consistent(h, [piece])
    h.finish(piece, [], EPOCH, 0.0)
    assert h.report() == [] and h.window(0) == 0 and h.batches == {}
    check_consistent(h)


@dataclass
class ModelBatch:
    size: int
    unfinished: int  # pieces queued or running
    current: bool = True  # acknowledged to the current master when done
    started: bool = False
    failures: dict[int, str] = field(default_factory=dict)


class HoldingsMachine(RuleBasedStateMachine):
    """Holdings against a model: any sequence of arrivals, turns, finishes, reports,
    hand-backs and new masters keeps every count, and acknowledges exactly the batches of the
    current master that are done, each once, with the failures of all its pieces."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Holdings()
        self.epoch = b"epoch-0"
        self.masters = 0
        self.next_bid = 1
        self.clock = 0.0
        self.batches: dict[int, ModelBatch] = {}
        self.queue: deque[tuple[int, int, int]] = deque()  # (bid, offset, jobs)
        self.running: list[Piece] = []
        self.unreported: set[int] = set()
        self.unacked = 0
        self.due: float | None = None
        self.held = self.done = self.failed = 0
        self.acknowledged: set[int] = set()

    @rule(size=st.integers(1, 12), piece=st.integers(1, 14), alone=st.booleans())
    def add(self, size: int, piece: int, alone: bool) -> None:
        bid = self.next_bid
        self.next_bid += 1
        self.h.add(bid, self.epoch, [(bid, i) for i in range(size)], alone, piece)
        offsets = range(0, size, piece)
        self.queue.extend((bid, o, min(piece, size - o)) for o in offsets)
        self.batches[bid] = ModelBatch(size, len(offsets))
        self.held += size

    @rule()
    def take(self) -> None:
        piece = self.h.next_piece()
        if not self.queue:
            assert piece is None
            return
        bid, offset, n = self.queue.popleft()
        assert piece is not None
        assert (piece.batch.bid, piece.offset, len(piece.jobs)) == (bid, offset, n)
        assert piece.jobs == [(bid, i) for i in range(offset, offset + n)]
        self.batches[bid].started = True
        self.running.append(piece)

    @precondition(lambda self: self.running)
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        piece = self.running.pop(data.draw(st.integers(0, len(self.running) - 1)))
        bid, n = piece.batch.bid, len(piece.jobs)
        raised = sorted(data.draw(st.sets(st.integers(0, n - 1))))
        failures = [(piece.offset + i, JobError("E", f"{bid}:{piece.offset + i}"))
                    for i in raised]
        self.clock += 1
        self.h.finish(piece, failures, self.epoch, self.clock)
        self.held -= n
        self.done += n - len(failures)
        self.failed += len(failures)
        batch = self.batches[bid]
        batch.unfinished -= 1
        if batch.current:
            batch.failures.update((i, e.message) for i, e in failures)
            self.unacked += n
            if batch.unfinished == 0:
                self.unreported.add(bid)
            if self.due is None:
                self.due = self.clock
        elif batch.unfinished == 0:
            del self.batches[bid]

    @rule()
    def report(self) -> None:
        out = self.h.report()
        assert sorted(d.bid for d in out) == sorted(self.unreported)
        for done in out:
            assert done.bid not in self.acknowledged
            self.acknowledged.add(done.bid)
            batch = self.batches.pop(done.bid)
            assert len(done.failures) == len(batch.failures)
            assert dict((i, e.message) for i, e in done.failures) == batch.failures
            self.unacked -= batch.size
        self.unreported.clear()
        self.due = None

    @rule()
    def hand_back(self) -> None:
        back = self.h.hand_back()
        expected = [bid for bid, batch in self.batches.items() if not batch.started]
        assert sorted(back) == sorted(expected)
        for bid in back:
            self.held -= self.batches.pop(bid).size
        self.queue = deque(q for q in self.queue if q[0] not in back)

    @rule()
    def new_master(self) -> None:
        self.masters += 1
        self.epoch = b"epoch-%d" % self.masters
        self.h.forget(NO_EPOCH)
        for bid, _offset, n in self.queue:
            self.held -= n
            self.batches[bid].unfinished -= 1
        self.queue.clear()
        self.unacked = 0
        self.unreported.clear()
        self.due = None
        for bid, batch in list(self.batches.items()):
            if batch.unfinished == 0:
                del self.batches[bid]
            else:
                batch.current = False

    @invariant()
    def agrees_with_the_model(self) -> None:
        h = self.h
        check_consistent(h, self.running)
        assert (h.held, h.done, h.failed_attempts) == (self.held, self.done, self.failed)
        assert h.window(7) == 7 + self.unacked
        assert h.report_due == self.due
        assert [(p.batch.bid, p.offset, len(p.jobs)) for p in h.queue] == list(self.queue)
        assert h.snapshot() == (frozenset(self.batches),
                                frozenset(b for b, m in self.batches.items() if m.started))
        for bid, batch in self.batches.items():
            assert h.batches[bid].pieces_left == batch.unfinished


TestHoldingsModel = HoldingsMachine.TestCase
TestHoldingsModel.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)


# -- WorkerPool -----------------------------------------------------------------------------


@dataclass
class Rig:
    """A real WorkerPool on real Holdings and Pacing, wired as the slave wires them."""

    holdings: Holdings
    pacing: Pacing
    pool: WorkerPool = field(init=False)
    finished: list[tuple[Piece, Failures]] = field(default_factory=list)
    crashes: list[gevent.Greenlet] = field(default_factory=list)
    betweens: int = 0
    reports: list[BatchDone] = field(default_factory=list)
    epoch: bytes = EPOCH

    def done(self, piece: Piece, failures: Failures) -> None:
        self.finished.append((piece, failures))
        self.holdings.finish(piece, failures, self.epoch, time.monotonic())

    def between(self) -> None:
        self.betweens += 1

    def add(self, bid: int, jobs: list[Any], alone: bool = False,
            piece: int | None = None) -> None:
        if piece is None:
            piece = self.pacing.piece_size(len(jobs), alone)
        self.holdings.add(bid, self.epoch, jobs, alone, piece)
        self.pool.wake()

    def settle(self, timeout_s: float = WAIT_S) -> None:
        """Wait until everything held is done (or a worker crashed), then take the report."""
        ok = until(lambda: bool(self.crashes) or (not self.pool.busy and self.holdings.held == 0),
                   timeout_s)
        assert not self.crashes, f"a worker crashed: {self.crashes[0].exception!r}"
        assert ok, f"still busy after {timeout_s}s: {self.holdings.held} jobs held"
        self.reports.extend(self.holdings.report())

    def failures_of(self, bid: int) -> list[tuple[int, JobError]]:
        (done,) = [d for d in self.reports if d.bid == bid]
        return sorted(done.failures, key=lambda f: f[0])


@pytest.fixture
def rig() -> Iterator[Callable[..., Rig]]:
    """Make started pools; every one is stopped at the end of the test."""
    made: list[Rig] = []

    def make(handle_job: Callable[[Any], Any], concurrency: int = 2,
             job_timeout_s: float | None = None) -> Rig:
        r = Rig(Holdings(), Pacing(concurrency))
        r.pool = WorkerPool(handle_job, concurrency, r.holdings, r.pacing, done=r.done,
                            between=r.between, job_timeout_s=job_timeout_s)
        r.pool.start(crashed=r.crashes.append)
        made.append(r)
        return r

    yield make
    for r in made:
        r.pool.stop()


def test_pool_runs_every_job_once_and_every_batch_is_acknowledged(
        rig: Callable[..., Rig]) -> None:
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        if job % 3 == 0:
            gevent.sleep(0)  # some jobs yield, so pieces interleave

    r = rig(handle_job, concurrency=4)
    assert not r.pool.busy
    batches = {1: list(range(0, 50)), 2: list(range(50, 100)), 3: list(range(100, 150)),
               4: [150]}
    for bid, jobs in batches.items():
        r.add(bid, jobs, piece=7)
    r.settle()
    assert Counter(ran) == Counter(range(151)), "each job exactly once"
    assert sorted(r.reports, key=lambda d: d.bid) == [BatchDone(bid) for bid in batches]
    pieces = 3 * 8 + 1  # 50 jobs in pieces of 7 is 8 pieces
    assert len(r.finished) == pieces
    assert r.betweens == pieces, "the slave reads its socket after every piece"
    assert sorted((p.batch.bid, p.offset) for p, _ in r.finished) == sorted(
        (bid, o) for bid, jobs in batches.items() for o in range(0, len(jobs), 7))
    assert (r.holdings.done, r.holdings.failed_attempts, r.holdings.held) == (151, 0, 0)
    assert r.holdings.snapshot() == (frozenset(), frozenset())
    check_consistent(r.holdings)


def test_a_job_that_raises_is_reported_by_its_index_in_the_batch_and_the_rest_run(
        rig: Callable[..., Rig]) -> None:
    ran: list[int] = []

    def flaky_handle_job(job: int) -> None:
        ran.append(job)
        if job == 113:
            raise ValueError(f"bad {job}")

    r = rig(flaky_handle_job)
    r.add(1, list(range(100, 120)), piece=6)  # 113 is the second job of the piece at 12
    r.settle()
    assert sorted(ran) == list(range(100, 120))
    [(index, error)] = r.failures_of(1)
    assert index == 13
    assert (error.type, error.message) == ("ValueError", "bad 113")
    assert error.traceback.startswith("Traceback (most recent call last):")
    assert "flaky_handle_job" in error.traceback
    assert error.traceback.rstrip().endswith("ValueError: bad 113")
    assert (r.holdings.done, r.holdings.failed_attempts) == (19, 1)
    # The piece's own index was not mistaken for the batch's.
    [(piece, failures)] = [(p, f) for p, f in r.finished if f]
    assert piece.offset == 12 and [i for i, _ in failures] == [13]


def test_several_failures_in_one_piece_are_all_reported_in_order(
        rig: Callable[..., Rig]) -> None:
    ran: list[int] = []
    nothing: dict[str, int] = {}
    raises: dict[int, Callable[[], Any]] = {
        0: lambda: nothing["missing"],
        4: lambda: int("four"),
        5: lambda: 1 / 0,
        9: lambda: (_ for _ in ()).throw(RuntimeError("last")),
    }

    def handle_job(job: int) -> None:
        ran.append(job)
        if job in raises:
            raises[job]()

    r = rig(handle_job, concurrency=1)
    r.add(1, list(range(10)), piece=10)  # first, adjacent and last jobs of one piece
    r.settle()
    assert ran == list(range(10)), "every job ran, in order, once"
    assert len(r.finished) == 1
    failures = r.failures_of(1)
    assert [(i, e.type) for i, e in failures] == [
        (0, "KeyError"), (4, "ValueError"), (5, "ZeroDivisionError"), (9, "RuntimeError")]
    assert failures[3][1].message == "last"
    assert (r.holdings.done, r.holdings.failed_attempts) == (6, 4)


def test_system_exit_in_a_job_is_a_failure_and_the_worker_goes_on(
        rig: Callable[..., Rig]) -> None:
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        if job == 1:
            raise SystemExit(3)

    r = rig(handle_job, concurrency=1)  # one worker: if it died, nothing more would run
    r.add(1, [0, 1, 2], piece=3)
    r.settle()
    [(index, error)] = r.failures_of(1)
    assert (index, error.type, error.message) == (1, "SystemExit", "3")
    r.add(2, [3, 4], piece=1)
    r.settle()
    assert ran == [0, 1, 2, 3, 4]
    assert r.failures_of(2) == []


@pytest.mark.parametrize("alone", [True, False], ids=["suspect", "control"])
def test_a_suspect_piece_never_runs_beside_another(rig: Callable[..., Rig],
                                                   alone: bool) -> None:
    # The control run (the same jobs, not marked alone) shows that the check below sees
    # overlap when there is some: pieces do run side by side in this pool.
    active: list[tuple[str, int]] = []
    overlaps: list[list[tuple[str, int]]] = []
    most_ordinary = 0
    ran: list[tuple[str, int]] = []

    def handle_job(job: tuple[str, int]) -> None:
        nonlocal most_ordinary
        active.append(job)
        ran.append(job)
        # Every overlap begins with an entry: checking at each one sees them all.
        if len(active) > 1 and any(kind == "suspect" for kind, _ in active):
            overlaps.append(list(active))
        if job[0] == "ordinary":
            most_ordinary = max(most_ordinary, len(active))
        try:
            gevent.sleep(0.002)
        finally:
            active.remove(job)

    r = rig(handle_job, concurrency=4)
    ordinary = [("ordinary", i) for i in range(16)]
    suspects = [("suspect", i) for i in range(4)]
    r.add(1, ordinary[:8], piece=2)
    r.add(2, suspects, alone=alone, piece=1)
    r.add(3, ordinary[8:], piece=2)
    r.settle()
    assert Counter(ran) == Counter(ordinary + suspects)
    assert sorted(d.bid for d in r.reports) == [1, 2, 3]
    assert most_ordinary > 1, "ordinary pieces ran side by side"
    if alone:
        assert overlaps == []
    else:
        assert overlaps, "the check must be able to see an overlap"


def test_isolation_lets_a_suspect_in_alone_and_ahead_of_new_ordinary_pieces() -> None:
    isolation = Isolation()
    inside: list[str] = []
    log: list[str] = []
    gates = {name: gevent.event.Event() for name in ("o1", "o2", "s1", "s2", "o3")}

    def piece(name: str, alone: bool) -> None:
        isolation.enter(alone)
        inside.append(name)
        log.append(name)
        if alone:
            assert inside == [name], f"{name} ran beside {inside}"
        else:
            assert not any(n.startswith("s") for n in inside), f"{name} beside {inside}"
        try:
            assert gates[name].wait(timeout=WAIT_S)
        finally:
            inside.remove(name)
            isolation.leave(alone)

    greenlets = [gevent.spawn(piece, "o1", False), gevent.spawn(piece, "o2", False)]
    try:
        assert until(lambda: sorted(inside) == ["o1", "o2"])  # ordinary pieces share
        greenlets.append(gevent.spawn(piece, "s1", True))
        let_others_run()
        assert "s1" not in log and isolation.waiting == 1  # waits for those running
        greenlets.append(gevent.spawn(piece, "o3", False))
        greenlets.append(gevent.spawn(piece, "s2", True))
        let_others_run()
        assert log == ["o1", "o2"], "a new ordinary piece waits behind a waiting suspect"

        gates["o1"].set()
        let_others_run()
        assert "s1" not in log  # o2 still runs
        gates["o2"].set()
        assert until(lambda: len(log) == 3)
        assert log[2] in ("s1", "s2") and inside == [log[2]]  # a suspect, alone
        first = log[2]
        other = "s2" if first == "s1" else "s1"
        let_others_run()
        assert inside == [first], "nothing joins a running suspect"

        gates[first].set()
        assert until(lambda: len(log) == 4)
        assert log[3] == other, "the other suspect goes before ordinary pieces"
        gates[other].set()
        assert until(lambda: inside == ["o3"])
        gates["o3"].set()
        finished = gevent.joinall(greenlets, timeout=WAIT_S, raise_error=True)
        assert len(finished) == len(greenlets)
        assert (isolation.shared, isolation.exclusive, isolation.waiting) == (0, False, 0)
    finally:
        gevent.killall(greenlets, timeout=1)


def test_job_timeout_fails_a_job_that_waits_too_long_and_the_piece_goes_on(
        rig: Callable[..., Rig]) -> None:
    ran: list[int] = []

    def handle_job(job: int) -> None:
        gevent.sleep(10.0 if job == 1 else 0.001)
        ran.append(job)

    r = rig(handle_job, job_timeout_s=0.05)
    started = time.monotonic()
    r.add(1, [0, 1, 2], piece=3)
    r.settle(timeout_s=3.0)
    assert time.monotonic() - started < 3.0
    assert ran == [0, 2], "the job past its limit was interrupted, the others finished"
    [(index, error)] = r.failures_of(1)
    assert index == 1
    assert error.type == JobTimeoutError.__name__
    assert error.message == "handle_job ran past --job-timeout 0.05s"
    assert (r.holdings.done, r.holdings.failed_attempts) == (2, 1)


def test_job_timeout_leaves_jobs_within_the_limit_alone(rig: Callable[..., Rig]) -> None:
    ran: list[int] = []

    def handle_job(job: int) -> str:
        gevent.sleep(0.002)
        ran.append(job)
        return "a result, ignored"

    r = rig(handle_job, concurrency=3, job_timeout_s=1.0)
    r.add(1, list(range(12)), piece=4)
    r.settle()
    assert sorted(ran) == list(range(12))
    assert r.failures_of(1) == []


def test_pacing_learns_the_job_time_of_each_finished_piece(rig: Callable[..., Rig]) -> None:
    def handle_job(job: int) -> None:
        gevent.sleep(0.01)

    r = rig(handle_job, concurrency=1)
    assert r.pacing.job_s == 0.001
    r.add(1, [0, 1, 2, 3], piece=4)  # one piece of about 40 ms: 10 ms a job
    r.settle()
    # 0.7 * 1 ms + 0.3 * (elapsed / 4 jobs), about 3.7 ms: the elapsed time of a piece is
    # divided by its jobs (without that, it would be 12.7 ms or more).
    assert 0.0025 <= r.pacing.job_s <= 0.012
    assert r.pacing.overlap == pytest.approx(1.0)
    assert r.pacing.window != 2 * 1
    assert r.pacing.window * r.pacing.job_s == pytest.approx(SLAVE_WORK_AHEAD_S, rel=0.05)


def test_pacing_sees_overlap_of_waiting_jobs_and_none_of_cpu_bound_ones(
        rig: Callable[..., Rig]) -> None:
    def waits(job: int) -> None:
        gevent.sleep(0.003)

    def computes(job: int) -> int:
        return sum(range(2000))  # never yields

    io = rig(waits, concurrency=4)
    io.add(1, list(range(24)), piece=1)
    io.settle()
    # Four greenlets waited side by side. Their pieces end together, so each round starts
    # with 1, 2, 3, then 4 running: the estimate settles near 2.8, well above 1.
    assert io.pacing.overlap > 2.0

    cpu = rig(computes, concurrency=4)
    for bid in range(1, 7):
        cpu.add(bid, list(range(4)), piece=1)
    cpu.settle()
    assert len(cpu.finished) == 24
    assert cpu.pacing.overlap == pytest.approx(1.0), "a piece that never yields runs alone"
    assert cpu.pacing.job_s < 0.001  # learned: well under the first guess


def test_busy_while_work_is_queued_or_running(rig: Callable[..., Rig]) -> None:
    gate = gevent.event.Event()
    entered: list[int] = []

    def handle_job(job: int) -> None:
        entered.append(job)
        assert gate.wait(timeout=WAIT_S)

    r = rig(handle_job, concurrency=2)
    assert not r.pool.busy
    r.holdings.add(1, EPOCH, [0, 1], False, 1)
    assert r.pool.busy, "queued, not yet running"
    r.pool.wake()
    assert until(lambda: len(entered) == 2)
    assert not r.holdings.queue and r.pool.running == 2
    assert r.pool.busy, "nothing queued, but two pieces running"
    gate.set()
    r.settle()
    assert not r.pool.busy
    assert r.reports == [BatchDone(1)]


def test_hand_back_while_running_keeps_started_work_and_never_runs_the_rest(
        rig: Callable[..., Rig]) -> None:
    gate = gevent.event.Event()
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        assert gate.wait(timeout=WAIT_S)

    r = rig(handle_job, concurrency=1)
    r.add(1, [0, 1], piece=1)
    r.add(2, [2, 3], piece=2)
    assert until(lambda: ran == [0])
    assert r.holdings.hand_back() == [2]
    assert [(p.batch.bid, p.offset) for p in r.holdings.queue] == [(1, 1)]
    assert r.holdings.held == 2  # job 0 running, job 1 queued
    assert r.holdings.snapshot() == (frozenset({1}), frozenset({1}))
    gate.set()
    r.settle()
    assert ran == [0, 1]
    assert r.reports == [BatchDone(1)]


def test_a_new_master_while_a_piece_runs_drops_the_queue_and_acknowledges_nothing(
        rig: Callable[..., Rig]) -> None:
    gate = gevent.event.Event()
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        if job == 0:
            raise ValueError("still counted")
        assert gate.wait(timeout=WAIT_S)

    r = rig(handle_job, concurrency=1)
    r.add(1, [0, 1, 2, 3], piece=2)
    assert until(lambda: ran == [0, 1])
    r.holdings.forget(NO_EPOCH)
    r.epoch = NEW_EPOCH  # what the slave does on a WELCOME
    gate.set()
    r.settle()
    assert ran == [0, 1], "the queued piece of the forgotten lease never ran"
    assert r.reports == []
    assert r.holdings.batches == {} and r.holdings.window(0) == 0
    assert (r.holdings.done, r.holdings.failed_attempts) == (1, 1)


# -- found while writing these tests ----------------------------------------------------------


@pytest.mark.parametrize("raising", [[2], [4], [0, 1, 4]], ids=["middle", "last", "several"])
def test_a_job_raising_stop_iteration_is_a_failure_and_the_rest_of_its_piece_runs(
        rig: Callable[..., Rig], raising: list[int]) -> None:
    """map() takes a StopIteration from its function for its own end: found by counting
    the calls that returned (this once lost the rest of the piece, counted as done)."""
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        if job in raising:
            next(iter([]))  # a user's bug: next() on an empty iterator

    r = rig(handle_job, concurrency=1)
    r.add(1, [0, 1, 2, 3, 4], piece=5)
    r.settle()
    assert ran == [0, 1, 2, 3, 4]
    assert [(i, e.type) for i, e in r.failures_of(1)] == [(i, "StopIteration") for i in raising]
    assert (r.holdings.done, r.holdings.failed_attempts) == (5 - len(raising), len(raising))


def test_a_gevent_timeout_escaping_handle_job_is_a_failure(rig: Callable[..., Rig]) -> None:
    """gevent.Timeout is a BaseException: the usual `with gevent.Timeout(s):` firing in a job
    is that job's failure, not the death of its worker (it once was)."""
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        if job == 0:
            with gevent.Timeout(0.005):
                gevent.sleep(1.0)

    r = rig(handle_job, concurrency=1)
    r.add(1, [0, 1], piece=2)
    r.settle()
    assert ran == [0, 1]
    assert [(i, e.type) for i, e in r.failures_of(1)] == [(0, "Timeout")]


@pytest.mark.parametrize("job_timeout_s", [None, 30.0], ids=["untimed", "timed"])
def test_a_slow_job_holds_up_only_itself_not_the_rest_of_its_piece(
        rig: Callable[..., Rig], job_timeout_s: float | None) -> None:
    """One piece of ten jobs whose first waits: an idle greenlet takes over the nine after it
    (once the piece has run STEAL_AFTER_S), and they run while it waits. The failures of both
    halves keep their indices in the batch, and the batch is acknowledged once, whole."""
    ran: list[int] = []
    release = gevent.event.Event()

    def handle_job(job: int) -> None:
        if job == 0:
            release.wait()
            raise ValueError("slow and bad")
        ran.append(job)
        if job == 6:
            raise KeyError(job)

    r = rig(handle_job, concurrency=2, job_timeout_s=job_timeout_s)
    r.add(1, list(range(10)), piece=10)
    started = time.monotonic()
    assert until(lambda: len(ran) == 9, STEAL_AFTER_S + WAIT_S), f"ran {ran} while job 0 waited"
    assert time.monotonic() - started >= STEAL_AFTER_S * 0.9, "taken over before its time"
    assert ran == list(range(1, 10)) and r.holdings.held == 1
    assert r.holdings.report() == [], "acknowledged before its first job was done"
    release.set()
    r.settle()
    assert [(i, e.type) for i, e in r.failures_of(1)] == [(0, "ValueError"), (6, "KeyError")]
    assert sorted((p.offset, len(p.jobs)) for p, _ in r.finished) == [(0, 1), (1, 9)]
    assert (r.holdings.done, r.holdings.failed_attempts, r.holdings.held) == (8, 2, 0)
    assert r.holdings.snapshot() == (frozenset(), frozenset())


def test_a_suspect_piece_is_never_taken_over(rig: Callable[..., Rig]) -> None:
    """Suspects run one job at a time and alone: nothing of theirs is split off."""
    release = gevent.event.Event()
    ran: list[int] = []

    def handle_job(job: int) -> None:
        ran.append(job)
        if job == 0:
            release.wait()

    r = rig(handle_job, concurrency=2)
    r.add(1, [0, 1, 2], alone=True, piece=3)  # one piece on purpose: it must not be split
    gevent.sleep(STEAL_AFTER_S * 3)
    assert ran == [0], "a job ran beside a suspect"
    release.set()
    r.settle()
    assert ran == [0, 1, 2]


def test_pieces_that_hold_the_cpu_still_let_timers_fire_between_them(
        rig: Callable[..., Rig]) -> None:
    # gevent looks at its timers only every 50 ready greenlets: were CPU-bound pieces
    # followed by sleep(0), some 50 pieces would run before a due timer (the slave's own loop:
    # held-back acknowledgements, a stop signal) got its turn.
    def cpu_bound(job: int) -> None:
        deadline = time.perf_counter() + 0.002
        while time.perf_counter() < deadline:
            pass

    r = rig(cpu_bound, concurrency=2)
    woke: list[int] = []
    timer = gevent.spawn_later(0.01, lambda: woke.append(len(r.finished)))
    r.add(1, list(range(200)), piece=1)
    r.settle()
    timer.join(1)
    assert woke and woke[0] < 20, f"the timer waited for {woke} pieces of 2 ms"


def test_an_acknowledgement_of_many_long_failures_stays_a_message_the_master_takes() -> None:
    """A window of instant jobs that all raise with a long message: 100 000 failures of 2 KB
    would make an ACK of some 300 MiB, which the master drops (over MAX_MESSAGE_BYTES) while
    the slave forgets the batches: the run hung with them leased. Each failure's texts are cut
    to an equal share of ACK_ERROR_CHARS instead, keeping the head of the message and the tail
    of the traceback; a report with little to say is left whole."""
    from taskmaster import protocol
    from taskmaster.config import ACK_ERROR_CHARS, MAX_MESSAGE_BYTES
    from taskmaster.messages import Ack

    h = Holdings()
    error = JobError("ValueError", "bad row: " + "é" * 2000, "Traceback ...\n" + "x" * 1000 +
                     "\n  File 'jobs.py', line 7, in handle_job\nValueError: bad row")
    for bid in (1, 2):
        h.add(bid, EPOCH, list(range(50_000)), False, 50_000)
        piece = h.next_piece()
        assert piece is not None
        h.finish(piece, [(i, error) for i in range(50_000)], EPOCH, time.monotonic())
    done = h.report()
    assert [len(b.failures) for b in done] == [50_000, 50_000]
    assert [i for i, _ in done[1].failures] == list(range(50_000))
    cut = done[0].failures[0][1]
    assert cut.type == "ValueError" and cut.message.startswith("bad row: éé")
    assert cut.traceback.endswith("ValueError: bad row")
    assert len(cut.message) + len(cut.traceback) <= ACK_ERROR_CHARS // 100_000 + 2
    frames = protocol.encode(Ack(tuple(done), 10), epoch=EPOCH, counter=1, key=b"k" * 32)
    assert sum(map(len, frames)) < MAX_MESSAGE_BYTES

    h.add(3, EPOCH, list(range(10)), False, 10)
    piece = h.next_piece()
    assert piece is not None
    h.finish(piece, [(4, error)], EPOCH, time.monotonic())
    assert h.report() == [BatchDone(3, ((4, error),))]
