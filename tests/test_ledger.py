"""Bookkeeping rules, without sockets: batches, leases, retries, deaths, the resume point."""

from __future__ import annotations

from taskmaster.ledger import Ledger, backoff_s

A, B = b"slave-a", b"slave-b"


def fed(n: int, size: int = 100, **kw: int) -> Ledger:
    ledger = Ledger(size, **kw)
    ledger.feed(list(range(n)), exhausted=True)
    return ledger


def test_feed_holds_back_a_peek_so_the_resume_point_is_a_real_job() -> None:
    ledger = Ledger(10)
    ledger.feed([0, 1, 2])
    assert ledger.buffered == 2
    assert ledger.resume_point() == (0, 0)
    ledger.take(A, 10, now=0)
    for bid in list(ledger.leases):
        ledger.ack(A, bid, [], now=0)
    # Everything pulled is done, but the stream is not over: resume at the held-back job.
    assert ledger.resume_point() == (2, 2)
    assert not ledger.complete
    ledger.feed([], exhausted=True)
    assert ledger.resume_point() == (2, 2) and not ledger.complete


def test_falsy_jobs_are_jobs() -> None:
    ledger = Ledger(10)
    ledger.feed([0, "", {}, None], exhausted=True)
    batches = ledger.take(A, 10, now=0)
    assert [j for b in batches for j in b.jobs] == [0, "", {}, None]
    assert ledger.resume_point() == (0, 0)


def test_take_respects_credit_and_batch_size() -> None:
    ledger = fed(25, max_batch=10)
    batches = ledger.take(A, 23, now=0)
    assert [(b.start, len(b.jobs)) for b in batches] == [(0, 10), (10, 10), (20, 3)]
    assert ledger.leased == 23 and ledger.buffered == 2


def test_resume_point_is_earliest_unfinished_across_leases() -> None:
    ledger = fed(30, max_batch=10)
    first, second, third = ledger.take(A, 30, now=0)
    ledger.ack(A, second.bid, [], now=0)
    ledger.ack(A, third.bid, [], now=0)
    assert ledger.resume_point() == (0, 0)
    ledger.ack(A, first.bid, [], now=0)
    assert ledger.resume_point() is None and ledger.complete
    assert ledger.finished == 30


def test_ack_from_the_wrong_slave_or_twice_is_stale() -> None:
    ledger = fed(5)
    (batch,) = ledger.take(A, 5, now=0)
    assert ledger.ack(B, batch.bid, [], now=0) == []
    ledger.ack(A, batch.bid, [], now=0)
    ledger.ack(A, batch.bid, [], now=0)
    assert ledger.stale_acks == 2 and ledger.finished == 5


def test_failed_job_is_retried_with_backoff_elsewhere_then_recorded() -> None:
    ledger = fed(3, max_retries=2)
    (batch,) = ledger.take(A, 3, now=0)
    err = {"type": "ValueError", "message": "x", "traceback": "tb"}
    assert ledger.ack(A, batch.bid, [(1, err)], now=0) == []
    assert ledger.finished == 2 and ledger.resume_point() == (1, 1)
    assert ledger.take(B, 10, now=0) == []  # backoff not over yet
    assert ledger.take(A, 10, now=10) == []  # prefers another slave
    (retry,) = ledger.take(B, 10, now=10)
    assert (retry.start, retry.jobs, retry.attempts) == (1, [1], 1)
    ledger.ack(B, retry.bid, [(0, err)], now=10)
    (retry,) = ledger.take(A, 10, now=100, alone=True)  # the only slave left gets it
    final = ledger.ack(A, retry.bid, [(0, err)], now=100)
    assert [(f.seq, f.job, f.attempts) for f in final] == [(1, 1, 3)]
    assert ledger.failed == 1 and ledger.complete


def test_lost_slave_jobs_go_out_again_one_by_one_until_max_deaths() -> None:
    ledger = fed(3, max_deaths=2)
    ledger.take(A, 3, now=0)
    assert ledger.lose(A) == []
    # Each job is now a suspect, and a slave holds one suspect at a time.
    (first,) = ledger.take(B, 10, now=0)
    assert (first.start, first.isolate) == (0, True)
    assert ledger.take(B, 10, now=0) == []
    ledger.ack(B, first.bid, [], now=0)
    (second,) = ledger.take(B, 10, now=0)
    (third,) = ledger.take(A, 10, now=0)
    assert (second.start, third.start) == (1, 2)
    ledger.ack(A, third.bid, [], now=0)
    final = ledger.lose(B)  # job 1 killed a second slave
    assert [(f.seq, f.error["type"]) for f in final] == [(1, "SlaveDied")]
    assert ledger.complete and ledger.failed == 1 and ledger.finished == 2


def test_a_suspect_does_not_hold_up_fresh_work() -> None:
    ledger = Ledger(100)
    ledger.feed([0, 1])
    ledger.take(A, 1, now=0)
    ledger.lose(A)
    ledger.feed(list(range(2, 10)), exhausted=True)
    batches = ledger.take(B, 100, now=0)
    assert [(b.start, b.isolate) for b in batches] == [(0, True), (1, False)]


def test_handed_back_batches_go_out_first_with_new_ids() -> None:
    ledger = fed(20, max_batch=10)
    first, _ = ledger.take(A, 20, now=0)
    old = first.bid
    ledger.hand_back(A, [old])
    (again,) = ledger.take(B, 10, now=0)
    assert again.start == 0 and again.bid != old and not again.isolate
    assert ledger.ack(A, old, [], now=0) == [] and ledger.stale_acks == 1


def test_buffer_room_is_bounded() -> None:
    ledger = Ledger(5)
    ledger.feed(list(range(5)))
    assert ledger.buffered == 4 and ledger.room() == 1  # one is the held-back peek


def test_backoff_doubles_and_caps() -> None:
    assert backoff_s(1) < backoff_s(2) < backoff_s(3)
    assert backoff_s(100) == backoff_s(200)


def test_leases_a_live_slave_does_not_hold_are_reclaimed_once_old_enough() -> None:
    ledger = fed(30, max_batch=10)
    first, second, third = ledger.take(A, 30, now=0)
    assert ledger.reclaim(A, {first.bid}, leased_before=0) == 0  # too recent to judge
    assert ledger.reclaim(A, {first.bid, third.bid}, leased_before=5) == 10
    (again,) = ledger.take(B, 10, now=6)
    assert again.start == second.start and not again.isolate
    assert ledger.ack(A, second.bid, [], now=6) == [] and ledger.stale_acks == 1


def test_batches_a_dead_slave_never_started_are_spared_once() -> None:
    ledger = fed(30, max_batch=10)
    first, _, _ = ledger.take(A, 30, now=0)
    # A reported (at time 1) that it had started only the first batch, then died.
    assert ledger.lose(A, started={first.bid}, known_at=1) == []
    out = ledger.take(B, 30, now=2)
    assert [(b.start, len(b.jobs), b.isolate) for b in out] == [(0, 1, True), (10, 10, False),
                                                               (20, 10, False)]
    # Spared once: if B dies before starting them too, they are charged this time.
    ledger.lose(B, started=set(), known_at=3)
    assert all(b.isolate for b in ledger.take(A, 100, now=4))


def test_many_suspects_cost_one_step_per_take() -> None:
    ledger = fed(20_001, size=50_000, max_batch=20_000)
    ledger.take(A, 20_000, now=0)
    ledger.lose(A)
    assert len(ledger.take(B, 1, now=0)) == 1
    # One suspect at a time, found without a scan; the last fresh job still goes out.
    assert [(b.start, b.isolate) for b in ledger.take(B, 10, now=0)] == [(20_000, False)]
