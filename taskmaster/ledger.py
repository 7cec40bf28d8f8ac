"""Pure bookkeeping of a run: sequence numbers, the buffer, leases, retries, the resume point.

No I/O and no clocks of its own (callers pass ``now``), so every rule here is tested without
sockets. The unit of work in flight is a `Batch`: a run of consecutive jobs leased to one slave
and acknowledged as a whole. Work never needs per-job bookkeeping on the fast path, which is
what lets one master feed many slaves.

The resume point is the earliest job not known to be finished: the smallest sequence number
among buffered, leased, retrying and handed-back jobs, or the next job the stream will yield
(held back as the *peek* so that its value is known even when everything else is done).
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .config import MAX_BATCH_JOBS, RETRY_BACKOFF_BASE_S, RETRY_BACKOFF_MAX_S


@dataclass(slots=True)
class Batch:
    """Consecutive jobs ``start, start+1, ...`` handed out and acknowledged together."""

    bid: int
    start: int
    jobs: list[Any]
    attempts: int = 0
    """Failed attempts so far (retries travel alone, so this is per job)."""
    deaths: int = 0
    """Slaves that died holding this job (likewise alone once it has happened)."""
    slave: bytes | None = None
    not_before: float = 0.0
    avoid: bytes | None = None
    leased_at: float = 0.0
    spared: bool = False
    """Once out on a slave that died before starting it (see `Ledger.lose`)."""

    @property
    def isolate(self) -> bool:
        """Run alone on its slave, so that if the slave dies again we know whose fault it was."""
        return self.deaths > 0


@dataclass(slots=True)
class Failure:
    """A job that used up its attempts, to be recorded durably."""

    seq: int
    job: Any
    attempts: int
    slave: bytes | None
    error: dict[str, str] = field(default_factory=dict)


def backoff_s(attempts: int) -> float:
    """Delay before retry number ``attempts``: doubling from the base, capped."""
    return min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S * 2 ** max(0, attempts - 1))


class Ledger:
    """Where every job of the run is, from the stream to finished."""

    def __init__(self, size: int, *, first_seq: int = 0, max_retries: int = 3,
                 max_deaths: int = 3, max_batch: int = MAX_BATCH_JOBS, first_bid: int = 1) -> None:
        self.size = size
        self.max_retries = max_retries
        self.max_deaths = max_deaths
        self.max_batch = max_batch
        self.next_seq = first_seq
        self.exhausted = False
        self.finished = 0
        self.failed = 0
        self.retried = 0
        self.redispatched = 0
        self.stale_acks = 0
        self._failed_seqs: list[int] = []  # a heap of failures the resume point has not passed
        self._failed_passed = 0
        self._bids = itertools.count(first_bid)
        self._peek: list[Any] = []  # zero or one job: the next one the stream yields
        self._buffer: deque[Batch] = deque()  # fresh jobs, in stream order
        self.buffered = 0
        self._ready: deque[Batch] = deque()  # handed back by a slave; served first
        self._suspects: deque[Batch] = deque()  # single jobs whose slave died; run alone
        self._ready_jobs = 0
        self._retrying: list[Batch] = []  # failed once or more, waiting for their backoff
        self.leases: dict[int, Batch] = {}
        self._held: dict[bytes, int] = {}  # jobs leased to each slave
        self._suspect_holders: set[bytes] = set()  # slaves holding a job that killed a slave
        self.leased = 0

    # -- the stream side -------------------------------------------------------------------

    def room(self) -> int:
        """How many more jobs the stream may add: retrying and handed-back jobs take room too,
        so memory stays bounded however fast jobs fail."""
        return self.size - self.buffered - len(self._retrying) - self._ready_jobs

    def feed(self, jobs: list[Any], exhausted: bool = False) -> None:
        """Take jobs just pulled from the stream, in order; ``exhausted`` once it has ended.

        The last job is held back as the peek until the next feed, so the resume point always
        names a real job while the stream still has one.
        """
        if self._peek:
            jobs = self._peek + jobs
            self._peek = []
        if jobs and not exhausted:
            self._peek.append(jobs.pop())
        if jobs:
            self._buffer.append(Batch(0, self.next_seq, jobs))
            self.next_seq += len(jobs)
            self.buffered += len(jobs)
        self.exhausted = exhausted

    # -- the slave side --------------------------------------------------------------------

    def take(self, slave: bytes, credit: int, now: float, *, alone: bool = False,
             max_batch: int | None = None) -> list[Batch]:
        """Lease up to ``credit`` jobs to ``slave``: retries that are due, then handed-back
        jobs, then fresh ones, cut in batches of at most ``max_batch`` (default: the ledger's).
        ``alone`` says no other slave could take a retry instead."""
        out: list[Batch] = []
        if self._retrying:
            credit = self._take_retries(slave, credit, now, alone, out)
        if credit > 0 and self._suspects and slave not in self._suspect_holders:
            self._ready_jobs -= 1
            credit -= self._lease(self._suspects.popleft(), slave, out, now)
        while credit > 0 and self._ready:
            batch = self._ready.popleft()
            self._ready_jobs -= len(batch.jobs)
            credit -= self._lease(batch, slave, out, now)
        while credit > 0 and self._buffer:
            batch = self._cut(min(credit, max_batch or self.max_batch))
            credit -= self._lease(batch, slave, out, now)
        return out

    def _cut(self, n: int) -> Batch:
        """The next ``n`` buffered jobs (or fewer) as one batch: chunks are consecutive, so a
        batch may span several."""
        start = self._buffer[0].start
        jobs: list[Any] = []
        while len(jobs) < n and self._buffer:
            head = self._buffer[0]
            want = n - len(jobs)
            if want >= len(head.jobs):
                self._buffer.popleft()
                jobs += head.jobs
            else:
                jobs += head.jobs[:want]
                del head.jobs[:want]
                head.start += want
        self.buffered -= len(jobs)
        return Batch(0, start, jobs)

    def _take_retries(self, slave: bytes, credit: int, now: float, alone: bool,
                      out: list[Batch]) -> int:
        keep: list[Batch] = []
        for batch in self._retrying:
            if (credit > 0 and batch.not_before <= now and (alone or batch.avoid != slave)
                    and not (batch.isolate and slave in self._suspect_holders)):
                credit -= self._lease(batch, slave, out, now)
            else:
                keep.append(batch)
        self._retrying = keep
        return credit

    def _lease(self, batch: Batch, slave: bytes, out: list[Batch], now: float) -> int:
        # A fresh id on every lease: an acknowledgement of an earlier lease of the same jobs
        # (from a slave we gave up on) is then recognisably stale.
        batch.bid = next(self._bids)
        batch.slave = slave
        batch.leased_at = now
        self._held[slave] = self._held.get(slave, 0) + len(batch.jobs)
        if batch.isolate:
            # One suspect per slave: if that slave dies too, no other job was held hostage
            # beside the suspect (jobs queued behind it would be charged with its death).
            self._suspect_holders.add(slave)
        self.leases[batch.bid] = batch
        self.leased += len(batch.jobs)
        out.append(batch)
        return len(batch.jobs)

    def ack(self, slave: bytes, bid: int, failures: list[tuple[int, dict[str, str]]],
            now: float) -> list[Failure]:
        """A slave finished a batch; ``failures`` are (index in batch, error) for jobs that
        raised. Returns the failures that are now final, for the caller to record."""
        batch = self.leases.get(bid)
        if batch is None or batch.slave != slave:
            self.stale_acks += 1
            return []
        indices = {index for index, _error in failures}
        if len(indices) != len(failures) or not all(0 <= i < len(batch.jobs) for i in indices):
            raise ValueError(f"acknowledgement of batch {bid} names jobs it does not hold")
        self._unlease(batch)
        self.finished += len(batch.jobs) - len(failures)
        final: list[Failure] = []
        for index, error in failures:
            attempts = batch.attempts + 1
            seq, job = batch.start + index, batch.jobs[index]
            if attempts > self.max_retries:
                self._fail(Failure(seq, job, attempts, slave, error), final)
            else:
                self.retried += 1
                self._retrying.append(Batch(0, seq, [job], attempts, batch.deaths,
                                            not_before=now + backoff_s(attempts), avoid=slave))
        return final

    def hand_back(self, slave: bytes, bids: list[int]) -> None:
        """A leaving slave returns batches it never started: they go out again first."""
        for bid in bids:
            batch = self.leases.get(bid)
            if batch is not None and batch.slave == slave:
                self._unlease(batch)
                self._requeue(batch)
                self.redispatched += len(batch.jobs)

    def reclaim(self, slave: bytes, held: set[int], leased_before: float) -> int:
        """A live slave says which batches it holds; leases it does not hold, handed out long
        enough ago to have arrived, were lost on the way (a dropped connection loses queued
        messages silently) and go out again. Returns the number of jobs reclaimed."""
        lost = [b for b in self.leases.values()
                if b.slave == slave and b.bid not in held and b.leased_at < leased_before]
        for batch in lost:
            self._unlease(batch)
            self._requeue(batch)
            self.redispatched += len(batch.jobs)
        return sum(len(b.jobs) for b in lost)

    def lose(self, slave: bytes, started: set[int] | None = None,
             known_at: float = 0.0) -> list[Failure]:
        """A slave died or went silent holding leases. Its jobs go out again one by one, each
        charged with a death; a job charged ``max_deaths`` times is returned as failed.

        Batches the slave reported as not started (in ``started``'s report, made at
        ``known_at``) are spared once and go out whole: the report may be up to a heartbeat
        old, so a batch spared once is charged the next time its slave dies.
        """
        final: list[Failure] = []
        for batch in [b for b in self.leases.values() if b.slave == slave]:
            self._unlease(batch)
            if (started is not None and batch.bid not in started
                    and batch.leased_at < known_at and not batch.spared and not batch.deaths):
                batch.spared = True
                self._requeue(batch)
                self.redispatched += len(batch.jobs)
                continue
            for i, job in enumerate(batch.jobs):
                single = Batch(0, batch.start + i, [job], batch.attempts, batch.deaths + 1)
                if single.deaths >= self.max_deaths:
                    self._fail(Failure(single.start, job, single.attempts + 1, slave, {
                        "type": "SlaveDied",
                        "message": f"its slave died while running it ({single.deaths} times)",
                        "traceback": "",
                    }), final)
                else:
                    self._requeue(single)
                    self.redispatched += 1
        return final

    def _requeue(self, batch: Batch) -> None:
        (self._suspects if batch.isolate else self._ready).append(batch)
        self._ready_jobs += len(batch.jobs)

    def held_by(self, slave: bytes) -> int:
        """Jobs leased to ``slave`` now."""
        return self._held.get(slave, 0)

    def _fail(self, failure: Failure, final: list[Failure]) -> None:
        self.failed += 1
        heapq.heappush(self._failed_seqs, failure.seq)
        final.append(failure)

    def failed_before(self, seq: int) -> int:
        """Failures recorded so far with a sequence number below ``seq`` (which only grows)."""
        while self._failed_seqs and self._failed_seqs[0] < seq:
            heapq.heappop(self._failed_seqs)
            self._failed_passed += 1
        return self._failed_passed

    def _unlease(self, batch: Batch) -> None:
        del self.leases[batch.bid]
        self.leased -= len(batch.jobs)
        if batch.slave is not None:
            left = self._held[batch.slave] - len(batch.jobs)
            if left:
                self._held[batch.slave] = left
            else:
                del self._held[batch.slave]
            if batch.isolate:
                self._suspect_holders.discard(batch.slave)
        batch.slave = None

    # -- the checkpoint side ---------------------------------------------------------------

    @property
    def retrying(self) -> int:
        return len(self._retrying)

    @property
    def pending(self) -> int:
        """Jobs known to the ledger and not finished (the peek included)."""
        return (self.buffered + self.leased + self._ready_jobs + len(self._retrying)
                + len(self._peek))

    def has_work(self) -> bool:
        """Something could be handed out right now or after a retry's backoff."""
        return bool(self._buffer or self._ready or self._suspects or self._retrying)

    def resume_point(self) -> tuple[int, Any] | None:
        """(sequence number, job) of the earliest unfinished job; None once all are done."""
        best: Batch | None = None
        for batch in itertools.chain(self.leases.values(), self._ready, self._suspects,
                                     self._retrying,
                                     itertools.islice(self._buffer, 1)):
            if best is None or batch.start < best.start:
                best = batch
        if best is not None:
            return best.start, best.jobs[0]
        if self._peek:
            return self.next_seq, self._peek[0]
        return None

    @property
    def complete(self) -> bool:
        """The stream ended and every job in it is finished (succeeded or recorded failed)."""
        return self.exhausted and self.resume_point() is None
