"""The master's parts without a socket: the registry's handshake and counters, the lease
arithmetic, the checkpointer, the handout and the exchange, driven with explicit times.

Messages go through the real encoding (most signed with a run key) and `Exchange.handle`;
what the master would send is read back from the recording `Wire` of `master_parts.Parts` and
decoded with the run's key. Every clock reading is passed in (``now``), except where a part
reads the clock itself (`Handout.serve_waiting`): those tests start from ``t0``, the real
monotonic time, so that both clocks agree.
"""

from __future__ import annotations

import ctypes
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from master_parts import SLAVE, Parts, Wire

from taskmaster import protocol as p
from taskmaster.checkpointer import Checkpointer
from taskmaster.config import (
    BATCH_BYTES,
    DEFAULT_MAX_MESSAGE_BYTES,
    FIRST_BATCH_JOBS,
    GONE_GRACE_S,
    HEARTBEAT_INTERVAL_S,
    IDLE_PING_S,
    MAX_BATCH_JOBS,
    MAX_MESSAGE_BYTES,
    MAX_WINDOW_JOBS,
    WELCOME_REPEAT_S,
    WINDOW_BYTES,
)
from taskmaster.dispatch import JobSize, Lease, buffer_room, lease_for
from taskmaster.errors import EXIT_REPLACE, StateError, UserCodeError
from taskmaster.exchange import Exchange
from taskmaster.handout import Handout, Send
from taskmaster.ledger import Ledger
from taskmaster.protocol import HEARTBEAT_SUFFIX
from taskmaster.records import FailureLog
from taskmaster.redelivery import Redelivery
from taskmaster.registry import Registry, Waiting
from taskmaster.settings import MasterConfig
from taskmaster.state import Checkpoint, StateFile, decode_job
from taskmaster.target import Target

OTHER = b"other-slave:2:fedcba"
THIRD = b"third-slave:3:012345"
SECRET = b"a secret for the parts tests, 32b"
OLD_EPOCH = b"\x01" * 8
ERR = p.JobError("ValueError", "boom", "Traceback (most recent call last):\n  ...\n")
T0 = 1000.0
IDENTITY = {"target": "jobs:get_jobs", "kwargs": {"count": "10"}, "retry_failures": None}


# -- helpers --------------------------------------------------------------------------------


@pytest.fixture
def t0() -> float:
    """Now, on the clock `Handout.serve_waiting` reads for itself."""
    return time.monotonic()


@dataclass
class FlakyWire(Wire):
    """A `Wire` on which the connection to a slave drops after ``budget[ident]`` more sends to
    it (ZeroMQ fails a send to a peer that is gone; the others go on)."""

    budget: dict[bytes, int] = field(default_factory=dict)

    def send(self, ident: bytes, frames: list[bytes]) -> bool:
        left = self.budget.get(ident)
        if left is not None:
            if left <= 0:
                return False
            self.budget[ident] = left - 1
        return super().send(ident, frames)


class Rig(Parts):
    """`Parts`, rewired through the same constructors over another wire or failures file."""

    def __init__(self, tmp_path: Path, *, wire: Wire | None = None,
                 failures_path: Path | None = None, **kw: Any) -> None:
        super().__init__(tmp_path, **kw)
        if wire is not None:
            self.wire = wire
        if failures_path is not None:
            self.failures_path = failures_path
        self.checkpointer = Checkpointer(self.state, FailureLog(self.failures_path), None, {})
        send: Send = self.wire.send
        self.handout = Handout(self.ledger, self.registry, self.checkpointer, send,
                               p.Seal(self.key, self.epoch), stop=self.stops.append,
                               room_freed=lambda: None)
        self.exchange = Exchange(self.ledger, self.registry, self.handout, self.checkpointer,
                                 key=self.key, epoch=self.epoch)


def deliver(parts: Parts, sender: bytes, message: p.Message, now: float, *,
            epoch: bytes | None = None) -> list[tuple[bytes, p.Message]]:
    """``message`` from ``sender`` at ``now``; returns what the master sent in answer."""
    mark = len(parts.wire.sent)
    parts.exchange.handle(sender, parts.frames(sender, message, epoch=epoch), now)
    return parts.wire.messages(parts.key)[mark:]


def knock(parts: Parts, ident: bytes, now: float, *, nonce: str = "knock-nonce",
          sender: bytes | None = None) -> list[tuple[bytes, p.Message]]:
    """A knock (a heartbeat of no epoch, holding nothing) naming ``ident``."""
    beat = sender is not None and sender.endswith(HEARTBEAT_SUFFIX)
    return deliver(parts, sender or ident, p.Heartbeat(ident.decode(), nonce, beat=beat), now,
                   epoch=p.NO_EPOCH)


def welcome_of(answer: list[tuple[bytes, p.Message]], ident: bytes) -> p.Welcome:
    [(to, welcome)] = answer
    assert to == ident
    assert isinstance(welcome, p.Welcome), welcome
    return welcome


def join_at(parts: Parts, ident: bytes, window: int, now: float,
            concurrency: int = 1, patience_ms: int = 0) -> list[p.Jobs]:
    """The real handshake at ``now``; returns the batches sent to the new member."""
    welcome = welcome_of(knock(parts, ident, now), ident)
    answer = deliver(parts, ident, p.Ready(welcome.session, window, concurrency, "host", 7,
                                           DEFAULT_MAX_MESSAGE_BYTES, patience_ms), now)
    assert parts.registry.get(ident) is not None
    return jobs_to(answer, ident)


def jobs_to(answer: list[tuple[bytes, p.Message]], ident: bytes) -> list[p.Jobs]:
    assert all(isinstance(m, p.Jobs) for _, m in answer), answer
    return [m for to, m in answer if to == ident and isinstance(m, p.Jobs)]


def heartbeat(ident: bytes, held: set[int] | None, started: set[int] | None = None,
              beat: bool = False, seen: int = 0, sent: int = 0) -> p.Heartbeat:
    """A heartbeat naming ``ident``; ``beat``: as sent by its heartbeat thread's socket;
    ``seen``: the counter of the last message it received from the master; ``sent``: that of
    the last it sent from its own socket."""
    return p.Heartbeat(ident.decode(), "beat", None if held is None else frozenset(held),
                       None if started is None else frozenset(started), beat, seen, sent)


def counter_of(parts: Parts) -> int:
    """The counter of the last message the master sent."""
    return parts.handout.seal.counter


def ack(*batches: p.BatchDone, window: int) -> p.Ack:
    return p.Ack(tuple(batches), window)


def done(bid: int, *failed: int) -> p.BatchDone:
    return p.BatchDone(bid, tuple((i, ERR) for i in failed))


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def flat(batches: list[p.Jobs]) -> list[Any]:
    return [job for batch in batches for job in batch.jobs]


# -- the registry: handshake, counters, liveness ---------------------------------------------


def ready(session: int, window: int = 5) -> p.Ready:
    return p.Ready(session, window, 2, "host", 7)


def test_a_knock_is_offered_a_session_and_knocks_just_after_it_are_not() -> None:
    r = Registry()
    session = r.offer(SLAVE, T0)
    assert session is not None
    assert r.offer(SLAVE, T0) is None
    assert r.offer(SLAVE, T0 + WELCOME_REPEAT_S * 0.99) is None
    # Once the interval is over the same session is offered again: a READY answering the
    # first WELCOME is still good.
    assert r.offer(SLAVE, T0 + WELCOME_REPEAT_S) == session
    assert r.offer(SLAVE, T0 + WELCOME_REPEAT_S * 1.5) is None
    other = r.offer(OTHER, T0)  # the interval is per identity
    assert other is not None and other != session


def test_ready_joins_only_with_the_session_offered_and_only_once() -> None:
    r = Registry()
    mine, theirs = r.offer(SLAVE, T0), r.offer(OTHER, T0)
    assert mine is not None and theirs is not None
    assert not r.accept(SLAVE, ready(mine + theirs + 1))  # a session never offered
    assert not r.accept(SLAVE, ready(theirs))  # another stranger's session
    assert not r.accept(THIRD, ready(mine))  # offered to someone else
    assert r.accept(SLAVE, ready(mine))
    assert not r.accept(SLAVE, ready(mine)), "a session was taken up twice"
    assert r.accept(OTHER, ready(theirs))
    # After taking one up, a new knock is offered a new session at once: a late READY of
    # the old one cannot be used.
    again = r.offer(SLAVE, T0 + 0.01)
    assert again is not None and again not in (mine, theirs)
    assert not r.accept(SLAVE, ready(mine))


def test_join_makes_a_member_as_its_ready_describes_it() -> None:
    r = Registry()
    slave = r.join(SLAVE, p.Ready(1, 40, 3, "box", 99), T0)
    assert r.get(SLAVE) is slave and len(r) == 1 and list(r) == [slave]
    assert (slave.host, slave.pid, slave.concurrency, slave.last_seen) == ("box", 99, 3, T0)
    assert slave.name == "box:99"
    assert slave.window == 0, "the exchange sets the window, after the READY is taken up"
    r.waiting.add(SLAVE)
    r.forget(SLAVE)
    assert r.get(SLAVE) is None and len(r) == 0 and SLAVE not in r.waiting
    r.forget(SLAVE)  # forgetting twice is harmless


def test_a_first_knock_is_offered_a_session_whatever_the_clock_reads() -> None:
    # A stranger was once taken as offered a session at time 0.0.
    assert Registry().offer(SLAVE, 0.0) is not None


def test_counters_only_grow_for_each_sender_independently() -> None:
    r = Registry()
    assert not r.fresh(SLAVE, 0), "0 is no counter: a Seal starts at 1"
    assert r.fresh(SLAVE, 1)
    assert not r.fresh(SLAVE, 1), "a repeat is a replay"
    assert r.fresh(SLAVE, 5)  # gaps are fine: messages get lost
    assert not r.fresh(SLAVE, 4), "a lower counter is a replay"
    assert not r.fresh(SLAVE, 5)
    # Another sender, even one with a counter below SLAVE's, has a counter of its own.
    assert r.fresh(OTHER, 1)
    assert r.fresh(SLAVE + HEARTBEAT_SUFFIX, 2)
    assert r.fresh(SLAVE, 6)
    assert not r.fresh(OTHER, 1)
    assert r.fresh(OTHER, 2)


@pytest.mark.parametrize(("sender", "beat", "speaks"), [
    (SLAVE, False, True),
    (SLAVE + HEARTBEAT_SUFFIX, True, True),
    # A heartbeat captured from one of the slave's sockets, replayed as from the other (each
    # socket has counters of its own, so the replay check alone would let it through).
    (SLAVE, True, False),
    (SLAVE + HEARTBEAT_SUFFIX, False, False),
    (OTHER, False, False),
    (SLAVE[:-1], False, False),
    (SLAVE + b"x", False, False),
    (SLAVE + HEARTBEAT_SUFFIX + b"x", True, False),
    (SLAVE + HEARTBEAT_SUFFIX + HEARTBEAT_SUFFIX, True, False),
    (b"x" + SLAVE, False, False),
    (HEARTBEAT_SUFFIX, True, False),
    (b"", False, False),
])
def test_only_a_slaves_own_socket_of_the_kind_speaks_for_it(sender: bytes, beat: bool,
                                                           speaks: bool) -> None:
    assert Registry.speaks_for(sender, SLAVE.decode(), beat) == (SLAVE if speaks else None)


def test_an_identity_that_is_not_utf8_still_speaks_for_itself() -> None:
    # A heartbeat carries the identity as text with surrogate escapes (as the slave sends it).
    ident = b"host:\xff:1"
    name = ident.decode("utf-8", "surrogateescape")
    assert Registry.speaks_for(ident, name, False) == ident
    assert Registry.speaks_for(ident + HEARTBEAT_SUFFIX, name, True) == ident
    assert Registry.speaks_for(b"host:?:1", name, False) is None


def test_silent_names_members_not_heard_from_for_longer_than_the_timeout() -> None:
    r = Registry()
    a = r.join(SLAVE, ready(1), T0)
    b = r.join(OTHER, ready(2), T0 + 5)
    assert r.silent(T0 + 5, 5) == [], "silence of exactly the timeout is not silence"
    assert r.silent(T0 + 5.5, 5) == [a]
    assert {s.ident for s in r.silent(T0 + 11, 5)} == {SLAVE, OTHER}
    b.last_seen = T0 + 20
    assert r.silent(T0 + 24, 5) == [a]


def test_excuse_forgives_silence_until_then_but_never_turns_a_clock_back() -> None:
    r = Registry()
    a = r.join(SLAVE, ready(1), T0)
    b = r.join(OTHER, ready(2), T0 + 100)
    r.excuse(T0 + 50)
    assert (a.last_seen, b.last_seen) == (T0 + 50, T0 + 100)
    assert r.silent(T0 + 59, 10) == []
    assert r.silent(T0 + 61, 10) == [a]


def test_takers_are_members_with_a_window_that_are_not_leaving() -> None:
    r = Registry()
    assert r.takers() == 0
    a, b, c = (r.join(i, ready(n), T0) for n, i in enumerate((SLAVE, OTHER, THIRD), 1))
    assert r.takers() == 0, "a member takes work once it has said how much"
    a.window = b.window = c.window = 10
    assert r.takers() == 3
    b.leaving = True
    c.window = 0
    assert r.takers() == 1


def takers_by_walk(r: Registry) -> int:
    return sum(1 for s in r.slaves.values() if not s.leaving and s.window)


def test_the_count_of_takers_follows_every_change_of_window_leaving_and_membership(
        tmp_path: Path) -> None:
    """`takers` is kept as windows change, not counted when asked: through READY, ACK, BYE,
    departure, loss and rejoining, it agrees with a walk of every member."""
    parts = Parts(tmp_path, jobs=0, secret=SECRET)
    r = parts.registry

    def check() -> None:
        assert r.takers() == takers_by_walk(r)

    for n, ident in enumerate((SLAVE, OTHER, THIRD)):
        join_at(parts, ident, 10 * n, T0)  # SLAVE asks for nothing
        check()
    assert r.takers() == 2
    deliver(parts, SLAVE, ack(window=5), T0 + 1)
    check()
    deliver(parts, OTHER, ack(window=0), T0 + 1)
    check()
    assert r.takers() == 2
    deliver(parts, THIRD, p.Bye(()), T0 + 2)  # holding nothing: forgotten at once
    check()
    assert r.get(THIRD) is None and r.takers() == 1
    slave = r.get(SLAVE)
    assert slave is not None
    parts.handout.departed(slave, None, "disconnected", T0 + 3)
    check()
    assert r.takers() == 0
    # A member forgotten while a caller still holds it: what is done to it later no longer
    # counts; and its identity joining again is a new member.
    join_at(parts, THIRD, 10, T0 + 4)
    old = r.get(THIRD)
    assert old is not None
    parts.handout.lose(old, "silent")
    old.window, old.leaving = 50, False
    check()
    join_at(parts, THIRD, 20, T0 + 5)
    check()
    assert r.takers() == 1
    r.forget(THIRD)
    check()
    assert r.takers() == 0


def test_the_waiting_line_serves_the_longest_waiting_first_and_the_served_go_to_the_back(
        ) -> None:
    w = Waiting()
    for ident in (SLAVE, OTHER, THIRD):
        w.add(ident)
    w.add(SLAVE)  # waiting already: keeps its place
    assert list(w) == [SLAVE, OTHER, THIRD] and w.first() == SLAVE and len(w) == 3
    w.requeue(SLAVE)
    assert list(w) == [OTHER, THIRD, SLAVE]
    w.discard(THIRD)
    w.discard(THIRD)
    assert list(w) == [OTHER, SLAVE] and THIRD not in w and OTHER in w
    w.requeue(THIRD)  # served while not in line: at the back
    assert list(w) == [OTHER, SLAVE, THIRD]


def test_work_that_comes_a_batch_at_a_time_goes_to_each_waiting_slave_in_turn(
        tmp_path: Path, t0: float) -> None:
    """The slaves that wait for work take turns: the first in line gets the first batch,
    and goes to the back of the line while it still has room."""
    parts = Parts(tmp_path, jobs=0, size=100)
    idents = [f"slave:{n}:x".encode() for n in range(5)]
    for ident in idents:
        assert join_at(parts, ident, 100, t0) == []
    served: list[bytes] = []
    for round_ in range(3 * len(idents)):
        mark = len(parts.wire.sent)
        parts.ledger.feed(list(range(round_ * 10, round_ * 10 + 10)))
        parts.handout.serve_waiting()
        [(to, batch)] = parts.wire.messages(parts.key)[mark:]
        assert isinstance(batch, p.Jobs) and len(batch.jobs) == 10
        served.append(to)
    assert served == idents * 3
    assert list(parts.registry.waiting) == idents
    # Served on its own ACK, ahead of its turn: to the back of the line all the same.
    parts.ledger.feed(list(range(150, 160)))
    [(to, _)] = deliver(parts, idents[0], ack(window=100), t0 + 1)
    assert to == idents[0]
    assert list(parts.registry.waiting) == [*idents[1:], idents[0]]


# -- dispatch: how much a slave gets, in what batches -----------------------------------------


def test_until_a_job_size_is_known_batches_are_first_batch_jobs() -> None:
    assert lease_for(500, 0, 10, 0) == Lease(500, FIRST_BATCH_JOBS)
    assert lease_for(50, 0, 10, 0.0) == Lease(50, FIRST_BATCH_JOBS)


@pytest.mark.parametrize(("window", "held", "credit"), [
    (100, 0, 100), (100, 30, 70), (100, 100, 0), (100, 130, -30), (0, 0, 0), (0, 5, -5),
])
def test_credit_is_the_window_minus_what_is_held(window: int, held: int, credit: int) -> None:
    # Absolute, not incremental: the same question asked twice gets the same answer.
    assert lease_for(window, held, 4, 0).credit == credit
    assert lease_for(window, held, 4, 10).credit == credit


def test_a_window_is_capped_at_max_window_jobs() -> None:
    assert lease_for(MAX_WINDOW_JOBS * 5, 0, 1, 0).credit == MAX_WINDOW_JOBS
    assert lease_for(MAX_WINDOW_JOBS + 1, 1000, 1, 0).credit == MAX_WINDOW_JOBS - 1000
    assert lease_for(MAX_WINDOW_JOBS * 5, 0, 1, 1).credit == MAX_WINDOW_JOBS


@pytest.mark.parametrize(("window", "concurrency", "job_bytes", "lease"), [
    # Small jobs: the job bounds hold.
    (10_000, 10, 10, Lease(10_000, MAX_BATCH_JOBS)),
    # 1 KiB: a batch of BATCH_BYTES, a window of WINDOW_BYTES.
    (10_000, 10, 1024, Lease(WINDOW_BYTES // 1024, BATCH_BYTES // 1024)),
    (1000, 10, 1024, Lease(1000, BATCH_BYTES // 1024)),  # the slave asked for less
    # 1 MiB: 4 jobs fit WINDOW_BYTES, one BATCH_BYTES.
    (50, 2, 2**20, Lease(WINDOW_BYTES // 2**20, 1)),
    # ... but never below a job per greenlet, nor a batch below one job.
    (50, 10, 2**20, Lease(10, 1)),
    (50, 3, 100 * 2**20, Lease(3, 1)),
    # ... and never more than the slave asked for.
    (2, 10, 2**20, Lease(2, 1)),
])
def test_windows_and_batches_of_large_jobs_are_bounded_in_bytes(
        window: int, concurrency: int, job_bytes: float, lease: Lease) -> None:
    assert lease_for(window, 0, concurrency, job_bytes) == lease


def test_byte_bounds_credit_what_is_held_against_the_smaller_window() -> None:
    # 1 MiB jobs, concurrency 2: a window of 4 jobs, of which the slave holds 3.
    assert lease_for(50, 3, 2, 2**20) == Lease(1, 1)
    assert lease_for(50, 6, 2, 2**20).credit == -2


KB_BATCH, KB_WINDOW = BATCH_BYTES // 1024, WINDOW_BYTES // 1024
"""1 KiB jobs: batches of 1 024, a window of 4 096 (all of it whole batches)."""


@pytest.mark.parametrize(("window", "held", "job_bytes", "credit"), [
    (10_000, 0, 1024, KB_WINDOW),
    # A batch and 8 free: the whole batch goes; the 8 over wait for more (they went as a
    # batch of their own, and came back as one, for good).
    (10_000, KB_WINDOW - KB_BATCH - 8, 1024, KB_BATCH),
    (10_000, KB_WINDOW - 8, 1024, 0),
    # What is over whole batches goes when it is a quarter of the window or more.
    (1000, 0, 1024, 1000),
    (1000, 900, 1024, 0),
    # Slow jobs, a small window: a quarter of it at least, never none for long.
    (20, 16, 10, 0),
    (20, 15, 10, 5),
    (2, 1, 10, 1),
])
def test_no_batch_is_too_small_to_be_worth_its_message(
        window: int, held: int, job_bytes: float, credit: int) -> None:
    assert lease_for(window, held, 10, job_bytes).credit == credit


@pytest.mark.parametrize(("held", "credit"), [(0, 500), (448, 52), (490, 10), (436, 64)])
def test_credit_is_never_withheld_from_an_idle_greenlet(held: int, credit: int) -> None:
    # Jobs of 16 KB, 500 greenlets: a window of one job each (4 MiB holds only 256), batches
    # of 64. What is over whole batches goes all the same: held back, it would idle greenlets.
    assert lease_for(1000, held, 500, 16 * 1024) == Lease(credit, BATCH_BYTES // (16 * 1024))


def test_the_default_sizes_byte_bound_counts_the_buffer_alone() -> None:
    # 1 KiB jobs, 100 held of which 60 leased: --max-buffer-mb (256 MiB) counts all 100; the
    # default --size's 8 MiB counts the 40 buffered; without it, the room in jobs decides.
    bounds = {"held": 100, "leased": 60, "job_bytes": 1024, "max_bytes": 256 * 2**20}
    assert buffer_room(50_000, **bounds, buffer_bytes=8 * 2**20) == 8192 - 40
    assert buffer_room(50_000, **bounds) == 50_000
    assert buffer_room(50_000, **{**bounds, "max_bytes": 2**20}, buffer_bytes=8 * 2**20) == 924
    # Before a job's size is known: one job at a time, under either bound.
    assert buffer_room(50_000, held=0, leased=0, job_bytes=0, max_bytes=2**20,
                       buffer_bytes=8 * 2**20) == 1


def test_job_size_is_an_average_of_recent_batches() -> None:
    size = JobSize()
    assert size.bytes == 0
    size.learn(1000, 10)
    assert size.bytes == 100, "the first batch is taken as it is"
    size.learn(2000, 10)
    assert size.bytes == pytest.approx(0.8 * 100 + 0.2 * 200)
    size.learn(120, 1)
    assert size.bytes == pytest.approx(0.8 * 120 + 0.2 * 120)


# -- the exchange and the handout: leases, acknowledgements, failures ---------------------------


@pytest.mark.parametrize(("jobs", "window", "sizes"), [
    # Unknown job size: FIRST_BATCH_JOBS at a time; the 50 over wait, as under a quarter
    # of the window (`lease_for`).
    (250, 250, [100, 100]),
    (250, 30, [30]),
    (250, 100, [100]),
    (10, 25, [10]),  # less work than room: the slave waits for more
])
def test_a_joined_slave_gets_its_window_in_batches(tmp_path: Path, jobs: int, window: int,
                                                   sizes: list[int]) -> None:
    parts = Parts(tmp_path, jobs=jobs, secret=SECRET)
    sent = join_at(parts, SLAVE, window, T0, concurrency=4)
    assert [len(b.jobs) for b in sent] == sizes
    assert flat(sent) == list(range(sum(sizes))), "jobs go out in stream order"
    assert not any(b.isolate for b in sent)
    assert sorted(b.bid for b in sent) == sorted(parts.ledger.leases)
    assert len({b.bid for b in sent}) == len(sent)
    assert parts.ledger.held_by(SLAVE) == sum(sizes)
    slave = parts.registry.get(SLAVE)
    assert slave is not None and slave.window == window and slave.concurrency == 4
    assert (SLAVE in parts.registry.waiting) == (window > jobs)
    assert parts.handout.job_size.bytes > 0, "the first batch shows how large a job is"


def test_an_ack_counts_the_batch_finished_and_tops_the_slave_up(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=1000, secret=SECRET)
    first, second = join_at(parts, SLAVE, 150, T0)
    assert (len(first.jobs), len(second.jobs)) == (100, 50)
    answer = deliver(parts, SLAVE, ack(done(first.bid), window=150), T0 + 1)
    assert parts.ledger.stats.finished == 100
    assert first.bid not in parts.ledger.leases and second.bid in parts.ledger.leases
    # Credit is the window less what it still holds; the job size is known now, so the
    # top-up is one batch, not FIRST_BATCH_JOBS at a time.
    [top_up] = jobs_to(answer, SLAVE)
    assert top_up.jobs == list(range(150, 250))
    assert parts.ledger.held_by(SLAVE) == 150
    assert parts.checkpointer.build(parts.ledger).resume_seq == 100
    # A larger window in the ACK: everything that is left, in one batch of up to
    # MAX_BATCH_JOBS.
    [rest] = jobs_to(deliver(parts, SLAVE, ack(window=1000), T0 + 2), SLAVE)
    assert rest.jobs == list(range(250, 1000))
    slave = parts.registry.get(SLAVE)
    assert slave is not None and slave.last_seen == T0 + 2 and slave.window == 1000
    assert SLAVE in parts.registry.waiting, "room is left and nothing to give it"


def test_large_jobs_go_out_in_byte_bounded_batches_once_their_size_is_known(
        tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=0, size=100)
    big = [bytes([i]) * 200_000 for i in range(60)]  # distinct: pickle would share copies
    parts.ledger.feed(list(big), exhausted=True)  # the ledger takes the list it is fed
    [first] = join_at(parts, SLAVE, 30, T0, concurrency=2)
    assert len(first.jobs) == 30, "the size of a job is not known before the first batch"
    answer = deliver(parts, SLAVE, ack(done(first.bid), window=30), T0 + 1)
    # ~200 KB a job: WINDOW_BYTES holds 20 of them, BATCH_BYTES 5.
    sent = jobs_to(answer, SLAVE)
    assert [len(b.jobs) for b in sent] == [5] * 4
    assert flat(sent) == big[30:50]
    assert parts.ledger.held_by(SLAVE) == 20


def test_even_the_first_batch_of_large_jobs_fits_in_a_message_a_slave_accepts(
        tmp_path: Path) -> None:
    # The first batch, while a job's size is unknown, once went out whole whatever its
    # size: 100 jobs of 700 KB made a message over the limit, refused by the slave, forever.
    parts = Parts(tmp_path, jobs=0, size=FIRST_BATCH_JOBS)
    job_bytes = MAX_MESSAGE_BYTES // FIRST_BATCH_JOBS + 30_000  # ~700 KB
    parts.ledger.feed([bytes([i]) * job_bytes for i in range(FIRST_BATCH_JOBS)], exhausted=True)
    join_at(parts, SLAVE, FIRST_BATCH_JOBS, T0, concurrency=FIRST_BATCH_JOBS)
    _, frames = parts.wire.sent[-1]
    assert frames[0] == p.JOBS
    # What the slave's decode (and its socket's MAXMSGSIZE) allows.
    assert len(frames[p.BODY_FRAME]) <= MAX_MESSAGE_BYTES


def test_failed_jobs_are_retried_after_their_backoff_then_recorded_with_their_seq(
        tmp_path: Path, t0: float) -> None:
    parts = Parts(tmp_path, jobs=10, secret=SECRET, max_retries=1)
    [batch] = join_at(parts, SLAVE, 10, t0)
    answer = deliver(parts, SLAVE, ack(done(batch.bid, 3, 7), window=10), t0 + 1)
    stats = parts.ledger.stats
    assert (stats.finished, stats.retried, stats.failed) == (8, 2, 0)
    assert parts.ledger.requeued == 2
    assert answer == [], "a retry waits for its backoff"
    assert SLAVE in parts.registry.waiting
    assert not parts.failures_path.exists()
    assert parts.checkpointer.build(parts.ledger).resume_seq == 3

    # After the backoff (RETRY_BACKOFF_BASE_S) the retries go out, one job a batch (this
    # slave is the only one, so they may go back to it).
    retries = jobs_to(deliver(parts, SLAVE, ack(window=10), t0 + 2), SLAVE)
    assert [b.jobs for b in retries] == [[3], [7]]
    assert parts.ledger.requeued == 0
    # They fail again: that is their last attempt, recorded before it counts as failed.
    for retry in retries:
        deliver(parts, SLAVE, ack(done(retry.bid, 0), window=10), t0 + 3)
    assert (stats.finished, stats.failed, parts.ledger.recording) == (8, 2, 0)
    parts.checkpointer.failures.close()
    recs = records(parts.failures_path)
    assert [r["seq"] for r in recs] == [3, 7]
    assert [decode_job(r["job"]) for r in recs] == [3, 7]
    assert {(r["exception"], r["message"], r["attempts"], r["slave"]) for r in recs} == {
        ("ValueError", "boom", 2, SLAVE.decode())}
    assert all(r["traceback"] == ERR.traceback for r in recs)
    assert parts.ledger.complete
    cp = parts.checkpointer.build(parts.ledger)
    assert (cp.complete, cp.finished, cp.failed, cp.resume_seq) == (True, 8, 2, 10)


def test_a_failure_record_keeps_the_jobs_sequence_number_in_the_run_it_came_from(
        tmp_path: Path) -> None:
    # A retry of recorded failures feeds jobs with the numbers they had in their run.
    parts = Parts(tmp_path, jobs=0, size=10, max_retries=0)
    parts.ledger.feed(["a", "b", "c"], exhausted=True, origins=[40, 41, 45])
    [batch] = join_at(parts, SLAVE, 3, T0)
    deliver(parts, SLAVE, ack(done(batch.bid, 2, 0), window=3), T0 + 1)
    parts.checkpointer.failures.close()
    recs = records(parts.failures_path)
    assert sorted((r["seq"], decode_job(r["job"]), r["attempts"]) for r in recs) == [
        (40, "a", 1), (45, "c", 1)]
    assert parts.ledger.stats.failed == 2 and parts.ledger.complete


@pytest.mark.parametrize("blocker", ["path-is-a-directory", "parent-is-a-file"])
def test_failure_records_that_cannot_be_written_pause_the_run_until_they_can(
        tmp_path: Path, blocker: str) -> None:
    """A job is settled only once its record is written: until then it holds the resume
    point, nothing new goes out (the run is paused), and the write is tried again; once the
    file can be written the records land, whole and once, and the run goes on by itself."""
    failures = tmp_path / "a-file" / "run.failures.jsonl"
    parts = Rig(tmp_path, jobs=10, secret=SECRET, max_retries=0, failures_path=failures)
    first, *_ = join_at(parts, SLAVE, 5, T0)
    assert first.jobs == [0, 1, 2, 3, 4]
    if blocker == "path-is-a-directory":
        failures.mkdir(parents=True)
    else:
        failures.parent.write_text("not a directory")
    # The slave finished the batch, job 2 failing: an acknowledgement tops it up, normally.
    answer = deliver(parts, SLAVE, ack(done(first.bid, 2), window=5), T0 + 1)
    assert jobs_to(answer, SLAVE) == [], "work went out while its failure could not be recorded"
    ledger, ck = parts.ledger, parts.checkpointer
    assert ck.blocked and failures in ck.trouble
    assert ledger.recording == 1, "the failed job is neither settled nor forgotten"
    assert (ledger.stats.failed, ledger.stats.finished) == (0, 4)
    assert ck.failed(ledger) == 0 and not ledger.complete
    cp = ck.build(ledger)
    assert (cp.resume_seq, cp.last_job, cp.has_last) == (2, 2, True), \
        "the resume point went past a job that is not recorded"
    assert ck.save(ledger)
    loaded = parts.state.load()
    assert loaded is not None and loaded.resume_seq == 2
    ck.retry(ledger)  # the tick tries again: still no good
    assert ck.blocked and ledger.recording == 1 and SLAVE in parts.registry.waiting

    # The user makes room: the next try writes the record, the run goes on.
    if blocker == "path-is-a-directory":
        failures.rmdir()
    else:
        failures.parent.unlink()
        failures.parent.mkdir()
    ck.retry(ledger)
    assert not ck.blocked and ledger.recording == 0 and ledger.stats.failed == 1
    assert [json.loads(line)["seq"] for line in failures.read_text().splitlines()] == [2]
    parts.handout.serve_waiting()
    assert flat(jobs_to(parts.wire.messages(parts.key)[-1:], SLAVE)) == [5, 6, 7, 8, 9]
    assert parts.unsettled() + ledger.stats.finished + ledger.stats.failed == 10


def test_a_bye_hands_back_batches_that_go_to_a_waiting_slave(tmp_path: Path, t0: float) -> None:
    parts = Parts(tmp_path, jobs=300, secret=SECRET)
    b1, b2, b3 = join_at(parts, SLAVE, 300, t0)
    assert join_at(parts, OTHER, 50, t0) == [], "nothing left for the second slave"
    assert OTHER in parts.registry.waiting
    # A BYE names only the sender's own batches: OTHER cannot hand back SLAVE's.
    deliver(parts, OTHER, p.Bye((b1.bid,)), t0)
    assert parts.ledger.held_by(SLAVE) == 300
    assert parts.registry.get(OTHER) is None, "a leaving slave that holds nothing is forgotten"

    join_at(parts, THIRD, 50, t0)
    answer = deliver(parts, SLAVE, p.Bye((b2.bid, b3.bid)), t0 + 1)
    slave = parts.registry.get(SLAVE)
    assert slave is not None and slave.leaving and slave.window == 0, \
        "a leaving slave that still holds a batch stays until it comes back"
    assert parts.ledger.held_by(SLAVE) == 100
    assert parts.ledger.stats.redispatched == 200
    # The waiting slave is served at once: a handed-back batch goes out whole.
    [(to, given)] = answer
    assert to == THIRD and isinstance(given, p.Jobs) and given.jobs == b2.jobs
    assert not given.isolate
    assert parts.ledger.requeued == 100  # b3, for whoever has room next

    # Its last batch done, the leaving slave is forgotten, and given nothing more.
    answer = deliver(parts, SLAVE, ack(done(b1.bid), window=300), t0 + 2)
    assert answer == []
    assert parts.registry.get(SLAVE) is None
    assert parts.ledger.stats.finished == 100


def test_a_bye_handing_back_everything_forgets_the_slave_at_once(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=10)
    [batch] = join_at(parts, SLAVE, 10, T0)
    assert deliver(parts, SLAVE, p.Bye((batch.bid,)), T0 + 1) == []
    assert parts.registry.get(SLAVE) is None and SLAVE not in parts.registry.waiting
    assert (parts.ledger.leased, parts.ledger.requeued) == (0, 10)
    # Whoever comes next gets the batch back whole and uncharged.
    [again] = join_at(parts, OTHER, 10, T0 + 2)
    assert again.jobs == batch.jobs and not again.isolate
    assert [b.deaths for b in parts.ledger.leases.values()] == [0]


def test_a_heartbeat_that_omits_a_lease_it_must_hold_reclaims_it(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=300, secret=SECRET)
    b1, b2 = join_at(parts, SLAVE, 200, T0)
    ledger, last = parts.ledger, counter_of(parts)
    # Written before the batches arrived (however late it is read: after a pause of the
    # master's, say): it says nothing of them.
    deliver(parts, SLAVE, heartbeat(SLAVE, set(), seen=last - 2), T0 + 100)
    assert ledger.held_by(SLAVE) == 200, "a lease the slave had not received yet was taken"
    deliver(parts, SLAVE, heartbeat(SLAVE, None, seen=last), T0 + 100)
    assert ledger.held_by(SLAVE) == 200, "a heartbeat that says nothing of its batches"
    # The slave sent something (an acknowledgement?) the master has not read yet.
    deliver(parts, SLAVE, heartbeat(SLAVE, set(), seen=last, sent=100), T0 + 100)
    assert ledger.held_by(SLAVE) == 200, "a lease whose acknowledgement may be on its way"
    deliver(parts, SLAVE + HEARTBEAT_SUFFIX,
            heartbeat(SLAVE, {b2.bid}, beat=True, seen=last), T0 + 1)
    assert b1.bid not in ledger.leases, "a lease the slave does not hold was kept"
    assert b2.bid in ledger.leases, "a lease the slave holds was taken back"
    assert ledger.stats.redispatched == 100
    slave = parts.registry.get(SLAVE)
    assert slave is not None and slave.last_seen == T0 + 1
    assert parts.exchange.dropped == 0
    assert parts.unsettled() == 300


@pytest.mark.parametrize("why", ["leaving", "stopping"])
def test_no_lease_is_reclaimed_from_a_leaving_slave_nor_while_the_master_stops(
        tmp_path: Path, why: str) -> None:
    parts = Parts(tmp_path, jobs=300, secret=SECRET)
    b1, b2 = join_at(parts, SLAVE, 200, T0)
    if why == "leaving":
        deliver(parts, SLAVE, p.Bye((b2.bid,)), T0 + 1)
    else:
        parts.handout.closed = True
    deliver(parts, SLAVE, heartbeat(SLAVE, set()), T0 + 100)
    assert b1.bid in parts.ledger.leases
    assert parts.ledger.stats.redispatched == (100 if why == "leaving" else 0)


def test_jobs_reclaimed_from_a_slave_go_out_again_to_the_slave_with_room(
        tmp_path: Path, t0: float) -> None:
    """A lone slave whose leases were all lost in transit holds nothing and so acknowledges
    nothing: the reclaim itself must offer it the jobs (it once did not, and the run stalled)."""
    parts = Parts(tmp_path, jobs=10, secret=SECRET)
    [lost] = join_at(parts, SLAVE, 10, t0)
    # The batch was lost on the way (a dropped connection): the slave holds nothing, so it
    # will never acknowledge anything; it only beats.
    answer = deliver(parts, SLAVE, heartbeat(SLAVE, set(), seen=counter_of(parts)), t0 + 31)
    assert parts.ledger.requeued == 0 or SLAVE in parts.registry.waiting, \
        "the reclaimed jobs were neither handed out nor is anyone waiting to be given them"
    assert flat(jobs_to(answer, SLAVE)) == lost.jobs


def test_a_heartbeat_records_what_the_slave_started_and_spares_the_rest_once(
        tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=250, secret=SECRET)
    b1, b2 = join_at(parts, SLAVE, 200, T0)
    last = counter_of(parts)
    deliver(parts, SLAVE, heartbeat(SLAVE, {b1.bid, b2.bid}, {b1.bid}, seen=last), T0 + 2)
    slave = parts.registry.get(SLAVE)
    assert slave is not None and slave.started == {b1.bid} and slave.started_seen == last
    parts.handout.lose(slave, "silent")
    assert parts.registry.get(SLAVE) is None
    # b1 was started when the slave died: its jobs come back one by one, each a suspect;
    # b2 was not: it goes out again whole, uncharged.
    sent = join_at(parts, OTHER, 300, T0 + 3)
    suspects = [b for b in sent if b.isolate]
    assert len(suspects) == 1 and len(suspects[0].jobs) == 1
    assert suspects[0].jobs[0] in b1.jobs
    whole = [b for b in sent if not b.isolate]
    assert whole[0].jobs == b2.jobs
    assert flat(whole[1:]) == list(range(200, 250))
    assert parts.ledger.requeued == 99


@pytest.mark.parametrize("max_deaths", [1, 3])
def test_batches_never_sent_go_out_again_whole_and_not_as_suspects(
        tmp_path: Path, max_deaths: int) -> None:
    """A fixed defect: batches never sent (a send that fails) were charged to the slave as
    deaths. With max_deaths=1 a charge records them as failed; with 3 they come back as
    suspects, one job at a time."""
    parts = Parts(tmp_path, jobs=250, secret=SECRET, max_deaths=max_deaths)
    welcome = welcome_of(knock(parts, SLAVE, T0), SLAVE)
    parts.wire.connected = False
    deliver(parts, SLAVE, p.Ready(welcome.session, 300, 1, "host", 7), T0)
    ledger = parts.ledger
    assert parts.registry.get(SLAVE) is None, "a slave we cannot send to is lost"
    assert SLAVE not in parts.registry.waiting
    assert (ledger.leased, ledger.requeued, ledger.recording) == (0, 250, 0)
    assert (ledger.stats.failed, ledger.stats.redispatched) == (0, 250)
    assert not parts.failures_path.exists()

    parts.wire.connected = True
    sent = join_at(parts, OTHER, 300, T0 + 1)
    assert [len(b.jobs) for b in sent] == [100, 100, 50], "the unsent batches, whole"
    assert flat(sent) == list(range(250))
    assert not any(b.isolate for b in sent)
    assert [b.deaths for b in ledger.leases.values()] == [0, 0, 0]


def test_when_a_send_fails_midway_the_sent_batch_is_charged_and_the_unsent_ones_are_not(
        tmp_path: Path) -> None:
    wire = FlakyWire()
    parts = Rig(tmp_path, wire=wire, jobs=250, secret=SECRET, max_deaths=1)
    welcome = welcome_of(knock(parts, SLAVE, T0), SLAVE)
    wire.budget[SLAVE] = 1  # the first batch goes out, the second send fails
    deliver(parts, SLAVE, p.Ready(welcome.session, 300, 1, "host", 7), T0)
    [(_, sent_one)] = parts.wire.messages(parts.key)[1:]
    assert isinstance(sent_one, p.Jobs) and sent_one.jobs == list(range(100))
    ledger = parts.ledger
    # It gets nothing more; what it holds is taken back once its last words had time to come.
    assert parts.registry.get(SLAVE).leaving  # type: ignore[union-attr]
    assert (ledger.requeued, ledger.leased) == (150, 100)
    parts.handout.settle_departed(T0 + GONE_GRACE_S / 2, GONE_GRACE_S)
    assert ledger.leased == 100, "taken back before its grace"
    parts.handout.settle_departed(T0 + GONE_GRACE_S, GONE_GRACE_S)
    assert parts.registry.get(SLAVE) is None
    # The batch that went out may have killed its slave: with max_deaths=1 its jobs are
    # recorded as failed. The two never sent are not charged at all.
    assert (ledger.stats.failed, ledger.requeued, ledger.leased) == (100, 150, 0)
    parts.checkpointer.failures.close()
    recs = records(parts.failures_path)
    assert sorted(r["seq"] for r in recs) == list(range(100))
    assert {r["exception"] for r in recs} == {"SlaveDied"}

    sent = join_at(parts, OTHER, 300, T0 + 1)
    assert [b.jobs for b in sent] == [list(range(100, 200)), list(range(200, 250))]
    assert not any(b.isolate for b in sent)


def test_a_batch_that_goes_out_after_a_failed_send_is_a_suspect_only_if_it_was_sent(
        tmp_path: Path) -> None:
    wire = FlakyWire()
    parts = Rig(tmp_path, wire=wire, jobs=250, secret=SECRET, max_deaths=3)
    welcome = welcome_of(knock(parts, SLAVE, T0), SLAVE)
    wire.budget[SLAVE] = 1
    deliver(parts, SLAVE, p.Ready(welcome.session, 300, 1, "host", 7), T0)
    parts.handout.settle_departed(T0 + GONE_GRACE_S, GONE_GRACE_S)
    assert parts.ledger.requeued == 250 and parts.ledger.stats.failed == 0
    sent = join_at(parts, OTHER, 300, T0 + GONE_GRACE_S + 1)
    # One suspect at a time from the batch that was sent; the unsent ones whole, uncharged.
    assert [(len(b.jobs), b.isolate) for b in sent] == [(1, True), (100, False), (50, False)]
    assert sent[0].jobs[0] in range(100)
    assert flat(sent[1:]) == list(range(100, 250))
    deaths = {len(b.jobs): b.deaths for b in parts.ledger.leases.values()}
    assert deaths == {1: 1, 100: 0, 50: 0}
    assert parts.ledger.requeued == 99


def test_a_slave_whose_send_fails_hands_its_batches_to_a_waiting_slave(tmp_path: Path,
                                                                        t0: float) -> None:
    wire = FlakyWire()
    parts = Rig(tmp_path, wire=wire, jobs=10, secret=SECRET)
    [first] = join_at(parts, OTHER, 20, t0)
    assert first.jobs == list(range(10)) and OTHER in parts.registry.waiting
    parts.ledger.feed(list(range(10, 20)), exhausted=True)  # nobody has been served yet
    welcome = welcome_of(knock(parts, SLAVE, t0), SLAVE)
    wire.budget[SLAVE] = 0
    answer = deliver(parts, SLAVE, p.Ready(welcome.session, 10, 1, "h", 1), t0)
    # SLAVE is lost, and the batch it never got goes at once, whole, to the slave waiting.
    assert parts.registry.get(SLAVE) is None
    [again] = jobs_to(answer, OTHER)
    assert again.jobs == list(range(10, 20)) and not again.isolate
    assert parts.ledger.held_by(OTHER) == 20 and OTHER not in parts.registry.waiting
    assert parts.ledger.stats.failed == 0


def test_an_unpicklable_job_stops_the_run_and_its_batch_is_handed_back(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=0, size=10, secret=SECRET)
    parts.ledger.feed([1, 2, lambda: 3, 4], exhausted=True)
    assert join_at(parts, SLAVE, 4, T0) == []
    [error] = parts.stops
    assert isinstance(error, UserCodeError)
    assert "job #2" in str(error) and "cannot be pickled" in str(error)
    assert (parts.ledger.leased, parts.ledger.requeued) == (0, 4)
    assert parts.registry.get(SLAVE) is not None, "the slave did nothing wrong"


def test_a_closed_handout_leases_nothing(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=10)
    parts.handout.closed = True
    assert join_at(parts, SLAVE, 10, T0) == []
    assert parts.ledger.leased == 0


def test_serve_waiting_gives_work_to_waiting_slaves_as_it_comes(tmp_path: Path,
                                                                t0: float) -> None:
    parts = Parts(tmp_path, jobs=0, size=100)
    assert join_at(parts, SLAVE, 10, t0) == []
    assert SLAVE in parts.registry.waiting
    parts.ledger.feed(list(range(5)))
    parts.handout.serve_waiting()
    assert parts.ledger.held_by(SLAVE) == 5 and SLAVE in parts.registry.waiting
    parts.ledger.feed(list(range(5, 30)))
    parts.handout.serve_waiting()
    assert parts.ledger.held_by(SLAVE) == 10 and SLAVE not in parts.registry.waiting
    [(_, first), (_, second)] = parts.wire.messages(parts.key)[1:]
    assert isinstance(first, p.Jobs) and isinstance(second, p.Jobs)
    assert first.jobs + second.jobs == list(range(10))


def test_a_lost_slave_cannot_rejoin_with_its_old_session(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=10, secret=SECRET, max_deaths=1)
    welcome = welcome_of(knock(parts, SLAVE, T0), SLAVE)
    old = p.Ready(welcome.session, 10, 1, "host", 7)
    deliver(parts, SLAVE, old, T0)
    slave = parts.registry.get(SLAVE)
    assert slave is not None
    parts.handout.lose(slave, "silent")
    # Its ten jobs died with it (max_deaths=1): recorded, as failed.
    assert parts.ledger.stats.failed == 10
    assert deliver(parts, SLAVE, old, T0 + 1) == []
    assert parts.registry.get(SLAVE) is None
    again = welcome_of(knock(parts, SLAVE, T0 + 1, nonce="second"), SLAVE)
    assert again.session != welcome.session and again.nonce == "second"
    deliver(parts, SLAVE, p.Ready(again.session, 10, 1, "host", 7), T0 + 1)
    assert parts.registry.get(SLAVE) is not None


def test_a_ready_from_a_member_sets_its_window_anew(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=50, secret=SECRET)
    welcome = welcome_of(knock(parts, SLAVE, T0), SLAVE)
    [first] = jobs_to(deliver(parts, SLAVE, p.Ready(welcome.session, 10, 1, "h", 1), T0),
                      SLAVE)
    assert len(first.jobs) == 10
    # The same session again (the member's READY was repeated): no second member, but the
    # window it names counts, and the member is topped up to it.
    [more] = jobs_to(deliver(parts, SLAVE, p.Ready(welcome.session, 25, 1, "h", 1), T0 + 1),
                     SLAVE)
    assert more.jobs == list(range(10, 25))
    slave = parts.registry.get(SLAVE)
    assert slave is not None and slave.window == 25 and slave.last_seen == T0 + 1
    assert len(parts.registry) == 1


def test_a_knock_from_the_heartbeat_socket_is_welcomed_on_the_slaves_own(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=5, secret=SECRET)
    welcome = welcome_of(knock(parts, SLAVE, T0, nonce="n1", sender=SLAVE + HEARTBEAT_SUFFIX),
                         SLAVE)
    assert welcome.nonce == "n1"
    # Knocks just after it, from either socket, are not answered.
    assert knock(parts, SLAVE, T0 + 0.1, nonce="n2") == []
    assert knock(parts, SLAVE, T0 + 0.2, nonce="n3", sender=SLAVE + HEARTBEAT_SUFFIX) == []
    [batch] = jobs_to(deliver(parts, SLAVE, p.Ready(welcome.session, 5, 1, "h", 1), T0), SLAVE)
    assert batch.jobs == [0, 1, 2, 3, 4]


def test_a_member_is_alive_as_long_as_its_own_sockets_beat(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=5, secret=SECRET)
    join_at(parts, SLAVE, 5, T0)
    slave = parts.registry.get(SLAVE)
    assert slave is not None
    deliver(parts, SLAVE + HEARTBEAT_SUFFIX, heartbeat(SLAVE, None, beat=True), T0 + 5)
    assert slave.last_seen == T0 + 5
    deliver(parts, OTHER, heartbeat(SLAVE, None), T0 + 9)
    assert slave.last_seen == T0 + 5, "another peer kept it alive"
    assert parts.exchange.dropped == 1
    assert parts.registry.silent(T0 + 40, 30) == [slave]


def test_a_ping_goes_only_to_members_that_had_no_message_from_us_for_an_interval(
        tmp_path: Path, t0: float) -> None:
    """Any message says the master lives and moves what the slave has ``seen`` on: a slave
    just sent jobs needs no PING, and one that hears nothing else gets one an interval on."""
    parts = Parts(tmp_path, jobs=10, secret=SECRET)
    [batch] = join_at(parts, SLAVE, 10, t0)  # every job, sent at t0
    assert join_at(parts, OTHER, 10, t0) == []  # nothing left for it: it waits

    def pinged(now: float) -> list[bytes]:
        mark = len(parts.wire.sent)
        parts.handout.ping(now)
        answer = parts.wire.messages(parts.key)[mark:]
        assert all(isinstance(m, p.Ping) for _, m in answer), answer
        return [to for to, _ in answer]

    assert pinged(t0 + 0.1) == [OTHER], "a member that never heard from us"
    assert pinged(t0 + 0.5) == []
    assert pinged(t0 + HEARTBEAT_INTERVAL_S) == [SLAVE], "its jobs are an interval old"
    assert pinged(t0 + HEARTBEAT_INTERVAL_S + 0.15) == [OTHER]
    assert pinged(t0 + HEARTBEAT_INTERVAL_S + 0.5) == []
    knock(parts, THIRD, t0 + 3)  # a stranger that knocks is answered, never pinged
    assert pinged(t0 + 3) == [SLAVE, OTHER]
    # The batch never arrived (a dropped connection): the PING after it is what shows so.
    assert batch.bid in parts.ledger.leases
    deliver(parts, SLAVE + HEARTBEAT_SUFFIX,
            heartbeat(SLAVE, set(), beat=True, seen=counter_of(parts)), t0 + 3.2)
    assert batch.bid not in parts.ledger.leases and parts.ledger.stats.redispatched == 10


def test_a_slave_holding_nothing_is_pinged_only_as_often_as_its_patience_needs(
        tmp_path: Path, t0: float) -> None:
    """A PING to a slave that holds nothing only says the master lives: every `IDLE_PING_S`
    for a patient slave, every quarter of a short --master-timeout, never more often than
    the heartbeat interval; one that holds jobs is pinged each interval as before."""
    parts = Parts(tmp_path, jobs=5, secret=SECRET)
    assert len(join_at(parts, SLAVE, 10, t0, patience_ms=300_000)) == 1  # it holds all 5
    assert join_at(parts, OTHER, 10, t0, patience_ms=300_000) == []
    assert join_at(parts, THIRD, 10, t0, patience_ms=2_000) == []  # quarter: 0.5 s, so 1 s
    fourth = b"fourth-slave:4:6789ab"
    assert join_at(parts, fourth, 10, t0, patience_ms=12_000) == []  # a quarter: 3 s
    pings: dict[bytes, list[float]] = {}
    for tick in range(1, 121):  # 12 s, in ticks of 0.1 s
        now = t0 + tick / 10
        mark = len(parts.wire.sent)
        parts.handout.ping(now)
        for to, msg in parts.wire.messages(parts.key)[mark:]:
            assert isinstance(msg, p.Ping)
            pings.setdefault(to, []).append(round(now - t0, 1))
    # The three that got no jobs have heard nothing from us yet: a PING at once, then one
    # every interval of theirs.
    assert pings[SLAVE] == [float(s) for s in range(1, 13)], "it holds jobs"
    assert pings[OTHER] == [0.1, 0.1 + IDLE_PING_S, 0.1 + 2 * IDLE_PING_S]
    assert pings[THIRD] == [s + 0.1 for s in range(12)]
    assert pings[fourth] == [0.1, 3.1, 6.1, 9.1]


def test_after_the_run_a_knock_is_answered_with_done_and_its_nonce(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=5, secret=SECRET)
    [batch] = join_at(parts, SLAVE, 5, T0)
    # A stranger welcomed just before the run ended.
    late = welcome_of(knock(parts, OTHER, T0), OTHER)
    deliver(parts, SLAVE, ack(done(batch.bid), window=5), T0 + 1)
    assert parts.ledger.complete
    parts.exchange.farewell = p.Done(5, 0)

    assert knock(parts, THIRD, T0 + 2, nonce="n-3") == [(THIRD, p.Done(5, 0, "n-3"))]
    assert knock(parts, SLAVE, T0 + 2, nonce="n-5") == [], "a member knows already"
    answer = deliver(parts, OTHER, p.Ready(late.session, 5, 1, "h", 1), T0 + 2)
    assert answer == [(OTHER, p.Done(5, 0))]
    assert parts.registry.get(OTHER) is None and parts.registry.get(THIRD) is None
    assert parts.exchange.dropped == 0


def test_messages_of_an_earlier_run_are_ignored_and_not_counted_as_drops(
        tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=20, secret=SECRET)
    [batch] = join_at(parts, SLAVE, 10, T0)
    ledger = parts.ledger
    slave = parts.registry.get(SLAVE)
    assert slave is not None
    assert deliver(parts, SLAVE, ack(done(batch.bid), window=20), T0 + 1, epoch=OLD_EPOCH) == []
    assert deliver(parts, SLAVE, p.Bye((batch.bid,)), T0 + 2, epoch=OLD_EPOCH) == []
    deliver(parts, SLAVE, heartbeat(SLAVE, set()), T0 + 100, epoch=OLD_EPOCH)
    assert ledger.held_by(SLAVE) == 10 and ledger.stats.finished == 0
    assert not slave.leaving and slave.last_seen == T0 and slave.window == 10
    # A READY of an earlier run does not join, nor use up the session offered.
    welcome = welcome_of(knock(parts, OTHER, T0), OTHER)
    assert deliver(parts, OTHER, p.Ready(welcome.session, 5, 1, "h", 1), T0,
                   epoch=OLD_EPOCH) == []
    assert parts.registry.get(OTHER) is None
    deliver(parts, OTHER, p.Ready(welcome.session, 5, 1, "h", 1), T0)
    assert parts.registry.get(OTHER) is not None
    assert parts.exchange.dropped == 0 and parts.exchange.last_drop == ""
    # The same ACK of this run's epoch counts.
    deliver(parts, SLAVE, ack(done(batch.bid), window=20), T0 + 3)
    assert ledger.stats.finished == 10


def test_an_ack_naming_jobs_a_batch_does_not_hold_is_dropped_and_the_rest_counts(
        tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=250, secret=SECRET)
    b1, b2 = join_at(parts, SLAVE, 200, T0)
    answer = deliver(parts, SLAVE, ack(done(b1.bid, 100), done(b2.bid), window=200), T0 + 1)
    assert parts.exchange.dropped == 1 and "does not hold" in parts.exchange.last_drop
    assert b1.bid in parts.ledger.leases, "the mismatched batch stays leased"
    assert b2.bid not in parts.ledger.leases and parts.ledger.stats.finished == 100
    assert flat(jobs_to(answer, SLAVE)) == list(range(200, 250))


def test_a_stale_ack_is_counted_as_stale_and_moves_nothing(tmp_path: Path) -> None:
    parts = Parts(tmp_path, jobs=20, secret=SECRET)
    [batch] = join_at(parts, SLAVE, 10, T0)
    join_at(parts, OTHER, 5, T0)
    deliver(parts, OTHER, ack(done(batch.bid), window=5), T0 + 1)  # not OTHER's batch
    deliver(parts, SLAVE, ack(done(batch.bid + 1000), window=10), T0 + 1)  # no such batch
    stats = parts.ledger.stats
    assert (stats.stale_acks, stats.finished, parts.exchange.dropped) == (2, 0, 0)
    assert parts.ledger.held_by(SLAVE) == 10
    deliver(parts, SLAVE, ack(done(batch.bid), window=10), T0 + 2)
    deliver(parts, SLAVE, ack(done(batch.bid), window=10), T0 + 3)  # twice
    assert (stats.stale_acks, stats.finished) == (3, 10)


# -- the checkpointer --------------------------------------------------------------------------


def checkpointer(tmp_path: Path, start: Checkpoint | None = None) -> Checkpointer:
    return Checkpointer(StateFile(tmp_path / "run.tmstate"),
                        FailureLog(tmp_path / "run.failures.jsonl"), start, IDENTITY)


def fed(jobs: list[Any], *, first_seq: int = 0, exhausted: bool = True) -> Ledger:
    ledger = Ledger(100, first_seq=first_seq, policy=Redelivery(max_retries=0))
    ledger.feed(jobs, exhausted=exhausted)
    return ledger


def run_batch(ck: Checkpointer, ledger: Ledger, n: int, *failed: int) -> None:
    """Lease the next ``n`` jobs as one batch and acknowledge it, ``failed`` failing."""
    [batch] = ledger.take(SLAVE, n, T0, max_batch=n)
    ck.record(ledger, ledger.ack(SLAVE, batch.bid, tuple((i, ERR) for i in failed), T0))


def test_build_on_a_fresh_ledger_keeps_the_start(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    assert ck.build(Ledger(10)) == Checkpoint(identity=IDENTITY)
    assert list(tmp_path.iterdir()) == [], "building a checkpoint wrote something"


def test_build_mid_run_names_the_earliest_unsettled_job(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    ledger = fed(list(range(100, 110)))  # the jobs are not their numbers
    cp = ck.build(ledger)
    assert (cp.resume_seq, cp.last_seq, cp.last_job, cp.has_last) == (0, 0, 100, True)
    run_batch(ck, ledger, 4, 1)  # 0-3, job 1 failed for good
    [held] = ledger.take(SLAVE, 2, T0, max_batch=2)  # 4, 5: out on a slave
    run_batch(ck, ledger, 2)  # 6, 7
    cp = ck.build(ledger)
    assert (cp.resume_seq, cp.last_seq, cp.last_job, cp.has_last, cp.complete) == (
        4, 4, 104, True, False)
    assert (cp.finished, cp.failed, cp.failed_before) == (5, 1, 1)
    assert cp.identity == IDENTITY
    ck.record(ledger, ledger.ack(SLAVE, held.bid, ((0, ERR),), T0))  # 4 fails, 5 is done
    cp = ck.build(ledger)
    assert (cp.resume_seq, cp.last_job, cp.finished, cp.failed, cp.failed_before) == (
        8, 108, 6, 2, 2)


def test_build_after_every_job_pulled_is_settled_resumes_after_the_last(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    ledger = fed(list(range(5)), exhausted=False)
    run_batch(ck, ledger, 5, 4)
    cp = ck.build(ledger)
    assert (cp.resume_seq, cp.last_seq, cp.last_job, cp.has_last, cp.complete) == (
        5, 4, 4, True, False)
    assert (cp.finished, cp.failed, cp.failed_before) == (4, 1, 1)


def test_build_of_a_complete_run(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    ledger = fed(list(range(10)))
    run_batch(ck, ledger, 6, 2, 5)
    run_batch(ck, ledger, 4)
    assert ledger.complete
    assert ck.build(ledger) == Checkpoint(resume_seq=10, finished=8, failed=2, failed_before=2,
                                          complete=True, identity=IDENTITY)


def test_totals_count_each_job_once_across_a_restart(tmp_path: Path) -> None:
    # The run before: jobs 0-99 settled, 3 of them failed; it had done more beyond its
    # resume point (102 finished, 4 failed), which runs again now and is counted again.
    start = Checkpoint(resume_seq=100, last_seq=99, last_job=99, has_last=True, finished=102,
                       failed=4, failed_before=3, identity=IDENTITY)
    ck = checkpointer(tmp_path, start)
    assert ck.resumed is start
    assert (ck.base_finished, ck.base_failed) == (97, 3)
    ledger = fed(list(range(100, 110)), first_seq=100)
    assert (ck.finished(ledger), ck.failed(ledger)) == (97, 3)
    run_batch(ck, ledger, 5, 0)  # 100-104, job 100 fails
    cp = ck.build(ledger)
    assert (cp.resume_seq, cp.last_job, cp.finished, cp.failed, cp.failed_before) == (
        105, 105, 101, 4, 4)
    run_batch(ck, ledger, 5)
    cp = ck.build(ledger)
    assert (cp.complete, cp.resume_seq, cp.finished, cp.failed, cp.failed_before) == (
        True, 110, 106, 4, 4)
    assert cp.finished + cp.failed == 110, "a job counted twice, or not at all"


def test_a_restart_that_has_pulled_nothing_yet_resumes_where_it_started(tmp_path: Path) -> None:
    start = Checkpoint(resume_seq=100, last_seq=99, last_job=("row", 99), has_last=True,
                       finished=102, failed=4, failed_before=3, identity=IDENTITY)
    ck = checkpointer(tmp_path, start)
    cp = ck.build(Ledger(10, first_seq=100))
    assert (cp.resume_seq, cp.last_seq, cp.last_job, cp.has_last, cp.complete) == (
        100, 99, ("row", 99), True, False)
    assert (cp.finished, cp.failed, cp.failed_before) == (97, 3, 3)
    assert start.finished == 102, "the start checkpoint itself is not changed"


def test_a_start_without_a_resume_point_counts_from_zero(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path, Checkpoint(resume_seq=0, has_last=False, identity=IDENTITY))
    assert (ck.base_finished, ck.base_failed) == (0, 0)


def test_save_writes_only_when_the_checkpoint_changed_or_when_forced(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    path = ck.state.path
    ledger = fed(list(range(10)))
    assert ck.save(ledger)
    loaded = ck.state.load()
    assert loaded is not None and (loaded.resume_seq, loaded.has_last) == (0, True)
    path.unlink()  # what a save writes from now on shows
    assert ck.save(ledger), "the file holds it already"
    assert not path.exists(), "an unchanged checkpoint was written again"
    assert ck.save(ledger, force=True)
    assert path.exists()
    path.unlink()
    run_batch(ck, ledger, 3)
    assert ck.save(ledger)
    loaded = ck.state.load()
    assert loaded is not None and (loaded.resume_seq, loaded.finished) == (3, 3)
    path.unlink()
    ledger.take(SLAVE, 2, T0, max_batch=2)  # leased: the checkpoint is the same
    assert ck.save(ledger) and not path.exists()
    run_batch(ck, ledger, 5, 0)  # 5-9; a failure beyond the resume point still changes it
    assert ck.save(ledger)
    loaded = ck.state.load()
    assert loaded is not None and (loaded.resume_seq, loaded.finished, loaded.failed) == (
        3, 7, 1)


def local_object() -> Any:
    class Local:
        pass

    return Local()


@pytest.mark.parametrize("unpicklable", [
    pytest.param(lambda: (lambda: 0), id="lambda"),
    pytest.param(threading.Lock, id="lock"),
    pytest.param(lambda: local_object(), id="local-class"),
    # Pickling this raises ValueError: any error of pickling is the job's, not a crash.
    pytest.param(lambda: ctypes.pointer(ctypes.c_int(1)), id="ctypes-pointer"),
])
def test_an_unpicklable_resume_job_keeps_the_previous_checkpoint(
        tmp_path: Path, unpicklable: Callable[[], Any]) -> None:
    ck = checkpointer(tmp_path)
    ledger = fed([0, unpicklable(), 2])
    assert ck.save(ledger)
    run_batch(ck, ledger, 1)  # the resume point is now the job that cannot be pickled
    assert not ck.save(ledger)
    assert not ck.save(ledger, force=True)
    loaded = ck.state.load()
    assert loaded is not None
    assert (loaded.resume_seq, loaded.last_job, loaded.finished) == (0, 0, 0)
    assert not list(tmp_path.glob(".*.tmp")), "a half-written checkpoint was left behind"
    run_batch(ck, ledger, 2)  # past it: the run is complete, and that can be written
    assert ck.save(ledger)
    loaded = ck.state.load()
    assert loaded is not None and loaded.complete and loaded.resume_seq == 3


def test_record_writes_failures_before_they_are_settled(tmp_path: Path) -> None:
    ck = checkpointer(tmp_path)
    ledger = fed(list(range(5)))
    ck.record(ledger, [])
    assert not ck.failures.path.exists(), "no failure, no file"
    [batch] = ledger.take(SLAVE, 5, T0, max_batch=5)
    final = ledger.ack(SLAVE, batch.bid, ((1, ERR), (3, ERR)), T0)
    assert ledger.recording == 2 and ledger.stats.failed == 0
    assert ck.build(ledger).resume_seq == 1
    ck.record(ledger, final)
    assert ledger.recording == 0 and ledger.stats.failed == 2
    ck.close()
    assert [r["seq"] for r in records(ck.failures.path)] == [1, 3]
    assert ck.build(ledger).complete


# -- Checkpointer.open: the lock, --reset, another run's state file ----------------------------


def config(tmp_path: Path, *, spec: str = "jobs", reset: bool = False,
           **kwargs: str) -> MasterConfig:
    return MasterConfig(Target.parse(spec, "get_jobs"), kwargs={"count": "10", **kwargs},
                        state_path=tmp_path / "run.tmstate", reset=reset)


def a_run_that_got_somewhere(cfg: MasterConfig) -> None:
    ck = Checkpointer.open(cfg)
    try:
        ledger = fed(list(range(10)))
        run_batch(ck, ledger, 4, 1)
        assert ck.save(ledger)
    finally:
        ck.close()


def test_open_reads_where_the_run_is_and_resumes_its_totals(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    assert cfg.failures_path == tmp_path / "run.failures.jsonl"
    ck = Checkpointer.open(cfg)
    assert ck.resumed is None and ck.identity == cfg.identity
    ck.close()
    a_run_that_got_somewhere(cfg)
    ck = Checkpointer.open(cfg)
    try:
        assert ck.resumed is not None
        assert (ck.resumed.resume_seq, ck.resumed.last_job) == (4, 4)
        assert ck.resumed.identity == cfg.identity
        assert (ck.base_finished, ck.base_failed) == (3, 1)
    finally:
        ck.close()


def test_open_holds_the_lock_until_close(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    ck = Checkpointer.open(cfg)
    with pytest.raises(StateError, match="in use by another master"):
        Checkpointer.open(cfg)
    ck.close()
    Checkpointer.open(cfg).close()


def test_open_with_reset_forgets_the_state_and_the_failures(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    a_run_that_got_somewhere(cfg)
    assert cfg.state_path.exists() and cfg.failures_path.exists()
    ck = Checkpointer.open(config(tmp_path, reset=True))
    try:
        assert ck.resumed is None and ck.start == Checkpoint()
        assert (ck.base_finished, ck.base_failed) == (0, 0)
        assert not cfg.state_path.exists() and not cfg.failures_path.exists()
    finally:
        ck.close()
    # --reset also starts over a state file that is another run's.
    a_run_that_got_somewhere(cfg)
    ck = Checkpointer.open(config(tmp_path, reset=True, count="20"))
    assert ck.resumed is None
    ck.close()


@pytest.mark.parametrize(("other", "says"), [
    ({"count": "20"}, "kwargs was count=10, now count=20"),
    ({"size": "3"}, "kwargs was count=10, now count=10 size=3"),
    ({"spec": "other_jobs"}, "target was jobs:get_jobs, now other_jobs:get_jobs"),
])
def test_open_refuses_another_runs_state_file_naming_what_differs(
        tmp_path: Path, other: dict[str, str], says: str) -> None:
    cfg = config(tmp_path)
    a_run_that_got_somewhere(cfg)
    before = cfg.state_path.read_bytes()
    with pytest.raises(StateError) as e:
        Checkpointer.open(config(tmp_path, **other))
    message = str(e.value)
    assert says in message, message
    assert str(cfg.state_path) in message and "--reset" in message
    assert cfg.state_path.read_bytes() == before, "the other run's state was touched"
    # The refusal let go of the lock: the run it belongs to opens it.
    ck = Checkpointer.open(cfg)
    assert ck.resumed is not None and ck.resumed.resume_seq == 4
    ck.close()


# -- a slave whose process is gone --------------------------------------------------------------


def gone_slave(tmp_path: Path, *, bye: bool) -> tuple[Parts, list[p.Jobs]]:
    """A member holding two batches of 10 (max_deaths=1: one death records a job), both
    reported started by its heartbeat thread, and (``bye``) having said goodbye."""
    parts = Parts(tmp_path, jobs=10, size=100, secret=SECRET, max_deaths=1)
    batches = join_at(parts, SLAVE, 20, T0)
    parts.ledger.feed(list(range(10, 20)))
    parts.handout.serve_waiting()
    batches += [m for _, m in parts.wire.messages(parts.key)[-1:] if isinstance(m, p.Jobs)]
    assert [b.jobs for b in batches] == [list(range(10)), list(range(10, 20))]
    bids = {b.bid for b in batches}
    deliver(parts, SLAVE + HEARTBEAT_SUFFIX,
            heartbeat(SLAVE, bids, bids, beat=True, seen=counter_of(parts)), T0)
    if bye:
        deliver(parts, SLAVE, p.Bye(()), T0)
    return parts, batches


def test_a_slave_gone_after_its_goodbye_is_charged_nothing(tmp_path: Path) -> None:
    """Recycled (exit 75) after BYE: what it held goes out again, uncharged, once its last
    messages had GONE_GRACE_S to come in; the acknowledgement that does come counts."""
    parts, (b1, b2) = gone_slave(tmp_path, bye=True)
    slave = parts.registry.get(SLAVE)
    assert slave is not None
    parts.handout.gone(slave, EXIT_REPLACE, None, T0 + 1)
    assert parts.ledger.held_by(SLAVE) == 20, "taken back before its last words were read"
    assert join_at(parts, OTHER, 20, T0 + 1) == [], "a gone slave's jobs went out at once"
    # Its acknowledgement of the first batch, sent before it exited, is read after the news.
    deliver(parts, SLAVE, ack(done(b1.bid), window=0), T0 + 1.5)
    parts.handout.settle_departed(T0 + 1 + GONE_GRACE_S, GONE_GRACE_S)
    assert parts.registry.get(SLAVE) is None
    assert parts.ledger.stats.finished == 10 and parts.ledger.stats.failed == 0
    again = parts.wire.messages(parts.key)[-1][1]
    assert isinstance(again, p.Jobs) and again.jobs == b2.jobs and not again.isolate


@pytest.mark.parametrize(("bye", "code"), [(False, EXIT_REPLACE), (True, 3), (False, None)],
                         ids=["exit-75-without-goodbye", "killed-while-leaving", "died"])
def test_a_slave_gone_without_leaving_in_order_is_charged_a_death(
        tmp_path: Path, bye: bool, code: int | None) -> None:
    """A job that calls os._exit(75) is no recycling, nor is a death while the slave was
    finishing its jobs to leave: each batch it had started is charged (and with
    max_deaths=1, recorded)."""
    parts, _ = gone_slave(tmp_path, bye=bye)
    slave = parts.registry.get(SLAVE)
    assert slave is not None
    parts.handout.gone(slave, code, None, T0 + 1)
    parts.handout.settle_departed(T0 + 1 + GONE_GRACE_S, GONE_GRACE_S)
    assert parts.registry.get(SLAVE) is None
    assert parts.ledger.leased == 0 and parts.ledger.stats.failed == 20
