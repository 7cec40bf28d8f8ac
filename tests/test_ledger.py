"""Bookkeeping rules, without sockets: batches, leases, retries, deaths, the resume point."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taskmaster.ledger import AckMismatchError, Batch, Ledger, ResumePoint
from taskmaster.protocol import JobError
from taskmaster.redelivery import GiveUp, Redelivery, Retry, Spare, backoff_s

A, B = b"slave-a", b"slave-b"
ERR = JobError("ValueError", "x", "tb")
BIG = 100_000


def fed(n: int, size: int = 100, max_retries: int = 3, max_deaths: int = 3) -> Ledger:
    ledger = Ledger(size, policy=Redelivery(max_retries, max_deaths))
    ledger.feed(list(range(n)), exhausted=True)
    return ledger


def take(ledger: Ledger, slave: bytes, credit: int, now: float = 0, max_batch: int = BIG,
         alone: bool = False) -> list[Batch]:
    return ledger.take(slave, credit, now, max_batch=max_batch, alone=alone)


def unsettled(ledger: Ledger) -> int:
    return ledger.buffered + ledger.requeued + ledger.leased + ledger.recording


def test_resume_point_names_the_earliest_unsettled_job_or_the_last_one_fed() -> None:
    ledger = Ledger(10)
    assert ledger.resume_point() is None  # nothing fed: the run's start still is
    ledger.feed([0, 1, 2])
    assert ledger.buffered == 3  # nothing is held back: every job can go out at once
    assert ledger.resume_point() == ResumePoint(0, 0, 0)
    take(ledger, A, 10)
    for bid in list(ledger.leases):
        ledger.ack(A, bid, (), now=0)
    # Everything pulled is done, but the stream is not over: resume after the last job fed,
    # from it (get_jobs(last=2) yields 2 first, which a restart skips).
    assert ledger.resume_point() == ResumePoint(3, 2, 2)
    assert not ledger.complete
    ledger.feed([], exhausted=True)
    assert ledger.complete


def test_falsy_jobs_are_jobs() -> None:
    ledger = Ledger(10)
    ledger.feed([0, "", {}, None], exhausted=True)
    batches = take(ledger, A, 10)
    assert [j for b in batches for j in b.jobs] == [0, "", {}, None]
    assert ledger.resume_point() == ResumePoint(0, 0, 0)


def test_take_respects_credit_and_batch_size_across_chunks() -> None:
    ledger = Ledger(100)
    for start in range(0, 25, 5):  # five chunks of five, as the feeder may hand them over
        ledger.feed(list(range(start, start + 5)), exhausted=start == 20)
    batches = take(ledger, A, 23, max_batch=10)
    assert [(b.start, b.jobs) for b in batches] == [
        (0, list(range(10))), (10, list(range(10, 20))), (20, [20, 21, 22])]
    assert ledger.leased == 23 and ledger.buffered == 2


def test_resume_point_is_earliest_unfinished_across_leases() -> None:
    ledger = fed(30)
    first, second, third = take(ledger, A, 30, max_batch=10)
    ledger.ack(A, second.bid, (), now=0)
    ledger.ack(A, third.bid, (), now=0)
    assert ledger.resume_point() == ResumePoint(0, 0, 0)
    ledger.ack(A, first.bid, (), now=0)
    assert ledger.complete
    assert ledger.stats.finished == 30


def test_ack_from_the_wrong_slave_or_twice_is_stale() -> None:
    ledger = fed(5)
    (batch,) = take(ledger, A, 5)
    assert ledger.ack(B, batch.bid, (), now=0) == []
    ledger.ack(A, batch.bid, (), now=0)
    ledger.ack(A, batch.bid, (), now=0)
    assert ledger.stats.stale_acks == 2 and ledger.stats.finished == 5


@pytest.mark.parametrize("failures", [((5, ERR),), ((0, ERR), (0, ERR))],
                         ids=["outside the batch", "twice"])
def test_ack_naming_jobs_it_does_not_hold_changes_nothing(failures: tuple) -> None:
    ledger = fed(5)
    (batch,) = take(ledger, A, 5)
    with pytest.raises(AckMismatchError):
        ledger.ack(A, batch.bid, failures, now=0)
    assert ledger.leased == 5 and ledger.stats.finished == 0


def test_failed_job_is_retried_with_backoff_elsewhere_then_recorded() -> None:
    ledger = fed(3, max_retries=2)
    (batch,) = take(ledger, A, 3)
    assert ledger.ack(A, batch.bid, ((1, ERR),), now=0) == []
    assert ledger.stats.finished == 2 and ledger.resume_point() == ResumePoint(1, 1, 1)
    assert take(ledger, B, 10) == []  # backoff not over yet
    assert take(ledger, A, 10, now=10) == []  # prefers another slave
    (retry,) = take(ledger, B, 10, now=10)
    assert (retry.start, retry.jobs, retry.attempts) == (1, [1], 1)
    ledger.ack(B, retry.bid, ((0, ERR),), now=10)
    (retry,) = take(ledger, A, 10, now=100, alone=True)  # the only slave left gets it
    final = ledger.ack(A, retry.bid, ((0, ERR),), now=100)
    assert [(f.seq, f.job, f.attempts, f.error) for f in final] == [(1, 1, 3, ERR)]


def test_a_final_failure_is_settled_only_once_recorded() -> None:
    ledger = fed(3, max_retries=0)
    (batch,) = take(ledger, A, 3)
    final = ledger.ack(A, batch.bid, ((0, ERR),), now=0)
    # Not recorded yet (say the disk is full): it holds the resume point and the run is open.
    assert ledger.recording == 1 and ledger.stats.failed == 0
    assert ledger.resume_point() == ResumePoint(0, 0, 0)
    assert not ledger.complete and ledger.room() == 99
    ledger.settle(final)
    assert ledger.complete and ledger.stats.failed == 1 and ledger.failed_before(3) == 1
    ledger.settle(final)  # settling twice counts once
    assert ledger.stats.failed == 1


def test_lost_slave_jobs_go_out_again_one_by_one_until_max_deaths() -> None:
    ledger = fed(3, max_deaths=2)
    take(ledger, A, 3)
    assert ledger.lose(A) == []
    # Each job is now a suspect, and a slave holds one suspect at a time.
    (first,) = take(ledger, B, 10)
    assert (first.start, first.isolate) == (0, True)
    assert take(ledger, B, 10) == []
    ledger.ack(B, first.bid, (), now=0)
    (second,) = take(ledger, B, 10)
    (third,) = take(ledger, A, 10)
    assert (second.start, third.start) == (1, 2)
    ledger.ack(A, third.bid, (), now=0)
    final = ledger.lose(B)  # job 1 killed a second slave
    assert [(f.seq, f.error.type) for f in final] == [(1, "SlaveDied")]
    ledger.settle(final)
    assert ledger.complete and ledger.stats.failed == 1 and ledger.stats.finished == 2


def test_a_suspect_does_not_hold_up_fresh_work() -> None:
    ledger = Ledger(100)
    ledger.feed([0, 1])
    take(ledger, A, 1)
    ledger.lose(A)
    ledger.feed(list(range(2, 10)), exhausted=True)
    batches = take(ledger, B, 100)
    assert [(b.start, b.isolate) for b in batches] == [(0, True), (1, False)]


def test_handed_back_batches_go_out_first_with_new_ids() -> None:
    ledger = fed(20)
    first, _ = take(ledger, A, 20, max_batch=10)
    old = first.bid
    assert ledger.hand_back(A, [old]) == 10
    (again,) = take(ledger, B, 10)
    assert again.start == 0 and again.bid != old and not again.isolate
    assert ledger.ack(A, old, (), now=0) == [] and ledger.stats.stale_acks == 1


def test_buffer_room_is_bounded_and_counts_jobs_waiting_to_go_out_again() -> None:
    ledger = Ledger(5)
    ledger.feed(list(range(5)))
    assert ledger.room() == 0
    take(ledger, A, 5)
    assert ledger.room() == 5
    ledger.lose(A)
    assert ledger.room() == 0 and ledger.requeued == 5


def test_backoff_doubles_and_caps() -> None:
    assert backoff_s(1) < backoff_s(2) < backoff_s(3)
    assert backoff_s(100) == backoff_s(200)


def sent(ledger: Ledger, slave: bytes, batches: list[Batch], first: int = 1) -> None:
    """The batches went out in messages with counters first, first + 1, ..."""
    for counter, batch in enumerate(batches, first):
        ledger.sent(slave, batch.bid, counter)


def test_leases_a_live_slave_does_not_hold_are_reclaimed_once_it_must_have_them() -> None:
    ledger = fed(30)
    first, second, third = take(ledger, A, 30, max_batch=10)
    sent(ledger, A, [first, second, third])  # counters 1, 2, 3
    # It has seen our messages up to 1 only: the later two may still be on their way.
    assert ledger.reclaim(A, frozenset({first.bid}), seen=1) == 0
    # It has seen 3, yet holds neither the second nor the third: those were lost.
    assert ledger.reclaim(A, frozenset({first.bid, third.bid}), seen=3) == 10
    (again,) = take(ledger, B, 10, now=6)
    assert again.start == second.start and not again.isolate
    assert ledger.ack(A, second.bid, (), now=6) == [] and ledger.stats.stale_acks == 1


def test_a_lease_never_sent_is_not_reclaimed() -> None:
    ledger = fed(10)
    take(ledger, A, 10)
    assert ledger.reclaim(A, frozenset(), seen=100) == 0


def test_batches_a_dead_slave_never_started_are_spared_once() -> None:
    ledger = fed(30)
    batches = take(ledger, A, 30, max_batch=10)
    sent(ledger, A, batches)
    # A reported, having seen all three, that it had started only the first, then died.
    assert ledger.lose(A, started=frozenset({batches[0].bid}), seen=3) == []
    out = take(ledger, B, 30, now=2)
    assert [(b.start, len(b.jobs), b.isolate) for b in out] == [(0, 1, True), (10, 10, False),
                                                               (20, 10, False)]
    # Spared once: if B dies before starting them too, they are charged this time.
    sent(ledger, B, out, first=4)
    ledger.lose(B, started=frozenset(), seen=10)
    assert all(b.isolate for b in take(ledger, A, 100, now=4))


def test_many_suspects_cost_one_step_per_take() -> None:
    ledger = fed(20_001, size=50_000)
    take(ledger, A, 20_000, max_batch=20_000)
    ledger.lose(A)
    assert len(take(ledger, B, 1)) == 1
    # One suspect at a time, found without a scan; the last fresh job still goes out.
    assert [(b.start, b.isolate) for b in take(ledger, B, 10)] == [(20_000, False)]


def test_recorded_jobs_keep_their_original_sequence_numbers() -> None:
    """A run of recorded failures numbers its jobs 0, 1, 2 but records the numbers they had."""
    ledger = Ledger(10, policy=Redelivery(max_retries=0, max_deaths=1))
    ledger.feed(["a", "b"], origins=[17, 40])
    ledger.feed(["c"], exhausted=True, origins=[99])
    (batch,) = take(ledger, A, 10)
    assert batch.jobs == ["a", "b", "c"]
    final = ledger.ack(A, batch.bid, ((1, ERR), (2, ERR)), now=0)
    assert [(f.seq, f.origin, f.job) for f in final] == [(1, 40, "b"), (2, 99, "c")]
    ledger.settle(final)
    assert ledger.complete
    # A death keeps them too.
    ledger = Ledger(10, policy=Redelivery(max_retries=0, max_deaths=1))
    ledger.feed(["a", "b"], exhausted=True, origins=[17, 40])
    take(ledger, A, 1)
    assert [f.origin for f in ledger.lose(A)] == [17]


def test_the_books_balance_through_every_kind_of_event() -> None:
    ledger = fed(50, max_retries=1, max_deaths=1)
    first, second, third, _ = take(ledger, A, 40, max_batch=10)
    ledger.ack(A, first.bid, ((3, ERR),), now=0)  # a retry
    ledger.hand_back(A, [second.bid])
    sent(ledger, A, [third])
    settled = ledger.lose(A, started=frozenset({third.bid}), seen=1)  # spared or failed
    assert unsettled(ledger) + ledger.stats.finished + ledger.stats.failed == 50
    ledger.settle(settled)
    assert unsettled(ledger) + ledger.stats.finished + ledger.stats.failed == 50


LEASE_EVENTS = ("take", "ack", "fail", "hand back", "split", "lose", "release", "reclaim",
                "time out", "reject")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(LEASE_EVENTS), st.sampled_from([A, B, b"slave-c"]),
                          st.integers(0, 40)), max_size=40))
def test_what_each_slave_holds_is_indexed_as_the_leases_say(
        events: list[tuple[str, bytes, int]]) -> None:
    """The per-slave index of leases (what heartbeats and losses read) never goes stale:
    after every kind of event, it names the batches a walk of every lease finds, in order."""
    ledger = fed(300, size=300, max_retries=1, max_deaths=2)
    for now, (event, slave, n) in enumerate(events, 1):
        mine = [b for b in ledger.leases.values() if b.slave == slave]
        batch = mine[n % len(mine)] if mine else None
        if event == "take":
            take(ledger, slave, n + 1, now, max_batch=7)
        elif batch is None:
            pass
        elif event == "ack":
            ledger.ack(slave, batch.bid, (), now)
        elif event == "fail":
            ledger.settle(ledger.ack(slave, batch.bid, ((0, ERR),), now))
        elif event == "hand back":
            ledger.hand_back(slave, [batch.bid])
        elif event == "split":
            ledger.split(slave, batch.bid)
        elif event == "lose":
            ledger.settle(ledger.lose(slave))
        elif event == "release":
            ledger.release(slave)
        elif event == "reclaim":
            ledger.sent(slave, batch.bid, now)
            ledger.reclaim(slave, frozenset(), seen=now)
        elif event == "time out":
            ledger.settle(ledger.time_out(slave, batch.bid, 0, ERR, now))
        else:
            ledger.settle(ledger.reject(slave, batch.bid, ERR))
        for s in (A, B, b"slave-c"):
            walk = [b for b in ledger.leases.values() if b.slave == s]
            assert [id(b) for b in ledger._leases.of(s)] == [id(b) for b in walk], event
            assert ledger.held_by(s) == sum(len(b.jobs) for b in walk), event
        assert unsettled(ledger) + ledger.stats.finished + ledger.stats.failed == 300


# -- the redelivery policy on its own -----------------------------------------------------


def test_policy_retries_with_backoff_then_gives_up() -> None:
    policy = Redelivery(max_retries=2, max_deaths=3)
    assert policy.after_error(1, ERR, now=10) == Retry(10 + backoff_s(1))
    assert policy.after_error(2, ERR, now=10) == Retry(10 + backoff_s(2))
    assert policy.after_error(3, ERR, now=10) == GiveUp(ERR)


def test_policy_spares_an_unstarted_batch_once_and_charges_deaths() -> None:
    policy = Redelivery(max_retries=2, max_deaths=2)
    batch = Batch(7, 0, [1, 2], sent=5)
    assert policy.after_death(batch, frozenset(), seen=5) == Spare()
    assert policy.after_death(batch, frozenset({7}), seen=5) == Retry()  # started
    # The report was made before the batch arrived: it says nothing of it.
    assert policy.after_death(batch, frozenset(), seen=4) == Retry()
    assert policy.after_death(batch, None, seen=5) == Retry()  # never reported
    assert policy.after_death(Batch(7, 0, [1, 2]), frozenset(), seen=5) == Retry()  # unsent
    batch.spared = True
    assert policy.after_death(batch, frozenset(), seen=5) == Retry()  # spared before
    batch.deaths = 1
    verdict = policy.after_death(batch, None, 0)
    assert isinstance(verdict, GiveUp) and verdict.error.type == "SlaveDied"
