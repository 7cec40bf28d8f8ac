"""Pure bookkeeping of a run: sequence numbers, the buffer, leases, redelivery, the resume point.

No I/O and no clocks of its own (callers pass ``now``), so every rule here is tested without
sockets. The unit of work in flight is a `Batch`: a run of consecutive jobs leased to one slave
and acknowledged as a whole. Work never needs per-job bookkeeping on the fast path, which is
what lets one master feed many slaves.

A job is *settled* once a slave acknowledged it or its failure record is durable: a job that
failed for good is handed to the caller to record and stays unsettled until `settle` says the
record is written. The resume point is the earliest unsettled job.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Any

from .leases import Batch, Buffer, Comebacks, LeaseTable
from .messages import JobError
from .redelivery import GiveUp, Redelivery, Retry, Spare

__all__ = ["AckMismatchError", "Batch", "Failure", "Ledger", "ResumePoint", "Stats"]


class AckMismatchError(ValueError):
    """An acknowledgement names jobs its batch does not hold: the slave's error, not ours."""


@dataclass(slots=True)
class Failure:
    """A job that used up its attempts: to be recorded durably, then settled."""

    seq: int
    job: Any
    attempts: int
    slave: bytes | None
    error: JobError
    origin: int = -1
    """Its sequence number in the record (see `Batch.origins`); ``seq`` when not set."""

    def __post_init__(self) -> None:
        if self.origin < 0:
            self.origin = self.seq


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a restarted run picks up: ``seq`` is the earliest unsettled job; get_jobs is
    called with ``last=last_job``, the job numbered ``last_seq``, which is that same job or,
    when it has not been yielded yet, the one just before it (already settled)."""

    seq: int
    last_seq: int
    last_job: Any


@dataclass(slots=True)
class Stats:
    """What the ledger has counted; callers read these, only the ledger writes them."""

    finished: int = 0
    failed: int = 0
    retried: int = 0
    redispatched: int = 0
    stale_acks: int = 0


class Ledger:
    """Where every job of the run is, from the stream to settled."""

    def __init__(self, size: int, *, first_seq: int = 0, first_bid: int = 1,
                 policy: Redelivery | None = None) -> None:
        self.size = size
        self.policy = policy or Redelivery()
        self.stats = Stats()
        self.next_seq = first_seq
        self.exhausted = False
        self._last: tuple[int, Any] | None = None  # the last job fed: (seq, job)
        self._failed_before = _Counted()
        self._bids = itertools.count(first_bid)
        self._buffer = Buffer()
        self._again = Comebacks()
        self._recording: dict[int, Failure] = {}  # failed for good, record not yet durable
        self._leases = LeaseTable()

    # -- the stream side -------------------------------------------------------------------

    @property
    def leases(self) -> dict[int, Batch]:
        """Batches out on slaves, by batch id."""
        return self._leases.by_bid

    @property
    def leased(self) -> int:
        """Jobs out on slaves."""
        return self._leases.jobs

    @property
    def buffered(self) -> int:
        """Fresh jobs not handed out yet."""
        return self._buffer.jobs

    @property
    def requeued(self) -> int:
        """Jobs waiting to go out again: handed back, orphaned by a dead slave, or retrying."""
        return self._again.jobs

    @property
    def recording(self) -> int:
        """Jobs that failed for good and wait for their record to be durable."""
        return len(self._recording)

    def room(self) -> int:
        """How many more jobs the stream may add: jobs waiting to go out again take room too,
        so memory stays bounded however fast jobs fail."""
        return self.size - self.buffered - self.requeued - self.recording

    def feed(self, jobs: list[Any], exhausted: bool = False,
             origins: list[int] | None = None) -> None:
        """Take jobs just pulled from the stream, in order; ``exhausted`` once it has ended."""
        if jobs:
            self._buffer.add(Batch(0, self.next_seq, jobs, origins=origins))
            self.next_seq += len(jobs)
            self._last = (self.next_seq - 1, jobs[-1])
        self.exhausted = exhausted

    # -- the slave side --------------------------------------------------------------------

    def take(self, slave: bytes, credit: int, now: float, *, max_batch: int,
             alone: bool = False) -> list[Batch]:
        """Lease up to ``credit`` jobs to ``slave``: retries that are due, then a suspect, then
        handed-back jobs, then fresh ones, cut in batches of at most ``max_batch``.
        ``alone`` says no other slave could take a retry instead."""
        out: list[Batch] = []
        again = self._again
        if again.retrying:
            for batch in again.due(slave, credit, now, alone,
                                   not self._leases.holds_suspect(slave)):
                credit -= self._lease(batch, slave, out, now)
        if credit > 0 and again.suspects and not self._leases.holds_suspect(slave):
            credit -= self._lease(again.pop(suspect=True), slave, out, now)
        while credit > 0 and again.ready:
            credit -= self._lease(again.pop(suspect=False), slave, out, now)
        while credit > 0 and self._buffer.chunks:
            credit -= self._lease(self._buffer.cut(min(credit, max_batch)), slave, out, now)
        return out

    def _lease(self, batch: Batch, slave: bytes, out: list[Batch], now: float) -> int:
        # A fresh id on every lease: an acknowledgement of an earlier lease of the same jobs
        # (from a slave we gave up on) is then recognisably stale.
        self._leases.add(batch, next(self._bids), slave, now)
        out.append(batch)
        return len(batch.jobs)

    def ack(self, slave: bytes, bid: int, failures: tuple[tuple[int, JobError], ...],
            now: float) -> list[Failure]:
        """A slave finished a batch; ``failures`` are (index in batch, error) for jobs that
        raised. Returns the failures that are final, for the caller to record and `settle`.
        Raises AckMismatchError when ``failures`` name jobs the batch does not hold."""
        batch = self._leases.get(bid, slave)
        if batch is None:
            self.stats.stale_acks += 1
            return []
        indices = {index for index, _error in failures}
        if len(indices) != len(failures) or not all(0 <= i < len(batch.jobs) for i in indices):
            raise AckMismatchError(f"acknowledgement of batch {bid} names jobs it does not hold")
        self._leases.remove(batch)
        self.stats.finished += len(batch.jobs) - len(failures)
        return [f for index, error in failures
                if (f := self._failed_attempt(batch, index, error, slave, now)) is not None]

    def _failed_attempt(self, batch: Batch, index: int, error: JobError, slave: bytes,
                        now: float) -> Failure | None:
        """Job ``index`` of ``batch`` failed once more: retried as the policy says, or given
        up on (the failure to record, returned)."""
        attempts = batch.attempts + 1
        verdict = self.policy.after_error(attempts, error, now)
        if isinstance(verdict, GiveUp):
            return self._give_up(batch, index, attempts, slave, verdict.error)
        self.stats.retried += 1
        self._again.retrying.append(batch.single(index, attempts=attempts,
                                                 not_before=verdict.at, avoid=slave))
        return None

    def hand_back(self, slave: bytes, bids: tuple[int, ...] | list[int]) -> int:
        """A slave returns batches it never started (or never got): they go out again before
        any fresh job. Returns the number of jobs handed back."""
        jobs = 0
        for bid in bids:
            batch = self._leases.get(bid, slave)
            if batch is not None:
                self._leases.remove(batch)
                self._again.push(batch)
                jobs += len(batch.jobs)
        self.stats.redispatched += jobs
        return jobs

    def sent(self, slave: bytes, bid: int, counter: int) -> None:
        """The batch went out to ``slave`` in the message with this counter."""
        batch = self._leases.get(bid, slave)
        if batch is not None:
            batch.sent = counter

    def reclaim(self, slave: bytes, held: frozenset[int], seen: int) -> int:
        """A live slave says which batches it holds, having received our messages up to the
        counter ``seen``; leases it does not hold that went out before that were lost on the
        way (a dropped connection loses queued messages silently) and go out again. Returns
        the number of jobs reclaimed."""
        lost = [b.bid for b in self._leases.of(slave)
                if b.bid not in held and 0 < b.sent <= seen]
        return self.hand_back(slave, lost)

    def split(self, slave: bytes, bid: int) -> list[Batch]:
        """Cut a lease in two halves, each a lease of its own (its message would be too big)."""
        batch = self._leases.get(bid, slave)
        if batch is None or len(batch.jobs) < 2:
            return []
        self._leases.remove(batch)
        half = len(batch.jobs) // 2
        parts = [batch.part(0, half), batch.part(half, len(batch.jobs))]
        now = batch.leased_at
        out: list[Batch] = []
        for part in parts:
            self._lease(part, slave, out, now)
        return out

    def reject(self, slave: bytes, bid: int, error: JobError) -> list[Failure]:
        """The single job of a lease cannot be sent at all (too big for any message): it
        fails for good, with ``error``. Returns it, to record."""
        batch = self._leases.get(bid, slave)
        if batch is None:
            return []
        self._leases.remove(batch)
        return [self._give_up(batch, i, batch.attempts + 1, slave, error)
                for i in range(len(batch.jobs))]

    def time_out(self, slave: bytes, bid: int, index: int, error: JobError,
                 now: float) -> list[Failure]:
        """``slave`` is being replaced because the job at ``index`` of batch ``bid`` ran past
        its time: that is a failed attempt of that job; everything else it held goes out
        again, uncharged. Returns the failures that are final, to record."""
        batch = self._leases.get(bid, slave)
        final: list[Failure] = []
        if batch is not None and 0 <= index < len(batch.jobs):
            self._leases.remove(batch)
            failure = self._failed_attempt(batch, index, error, slave, now)
            if failure is not None:
                final.append(failure)
            for part in (batch.part(0, index), batch.part(index + 1, len(batch.jobs))):
                if part.jobs:
                    self._again.push(part)
            self.stats.redispatched += len(batch.jobs) - 1
        self.release(slave)
        return final

    def release(self, slave: bytes) -> int:
        """Everything ``slave`` holds goes out again, uncharged; returns the jobs."""
        return self.hand_back(slave, [b.bid for b in self._leases.of(slave)])

    def lose(self, slave: bytes, started: frozenset[int] | None = None,
             seen: int = 0) -> list[Failure]:
        """A slave died or went silent holding leases. Each batch is spared or charged with a
        death as the policy decides; returns the jobs that failed for good, to record."""
        final: list[Failure] = []
        for batch in self._leases.of(slave):
            self._leases.remove(batch)
            verdict = self.policy.after_death(batch, started, seen)
            if isinstance(verdict, Spare):
                batch.spared = True
                self._again.push(batch)
                self.stats.redispatched += len(batch.jobs)
            elif isinstance(verdict, Retry):
                for i in range(len(batch.jobs)):
                    self._again.push(batch.single(i, deaths=batch.deaths + 1))
                self.stats.redispatched += len(batch.jobs)
            else:
                final += [self._give_up(batch, i, batch.attempts + 1, slave, verdict.error)
                          for i in range(len(batch.jobs))]
        return final

    def settle(self, failures: list[Failure]) -> None:
        """Their records are durable: these jobs are done with."""
        for f in failures:
            if self._recording.pop(f.seq, None) is not None:
                self.stats.failed += 1
                self._failed_before.add(f.seq)

    def _give_up(self, batch: Batch, index: int, attempts: int, slave: bytes,
                 error: JobError) -> Failure:
        f = Failure(batch.start + index, batch.jobs[index], attempts, slave, error,
                    batch.origin(index))
        self._recording[f.seq] = f
        return f

    def held_by(self, slave: bytes) -> int:
        """Jobs leased to ``slave`` now."""
        return self._leases.held_by(slave)

    def has_work(self) -> bool:
        """Something could be handed out right now or after a retry's backoff."""
        return bool(self._buffer.chunks or self._again)

    # -- the checkpoint side ---------------------------------------------------------------

    def failed_before(self, seq: int) -> int:
        """Failures settled so far with a sequence number below ``seq`` (which only grows)."""
        return self._failed_before.below(seq)

    def resume_point(self) -> ResumePoint | None:
        """Where to resume; None before anything was fed (the run's start still is)."""
        best: Batch | None = None
        for batch in itertools.chain(self.leases.values(), self._again,
                                     itertools.islice(self._buffer.chunks, 1)):
            if best is None or batch.start < best.start:
                best = batch
        first_failed = min(self._recording, default=None)
        if first_failed is not None and (best is None or first_failed < best.start):
            f = self._recording[first_failed]
            return ResumePoint(f.seq, f.seq, f.job)
        if best is not None:
            return ResumePoint(best.start, best.start, best.jobs[0])
        if self._last is not None:
            last_seq, last_job = self._last
            return ResumePoint(last_seq + 1, last_seq, last_job)
        return None

    @property
    def complete(self) -> bool:
        """The stream ended and every job in it is settled."""
        return (self.exhausted and not self._leases and not self.has_work()
                and not self._recording)


@dataclass(slots=True)
class _Counted:
    """Sequence numbers of settled failures, counted below a mark that only grows."""

    pending: list[int] = field(default_factory=list)  # a heap: not yet below the mark
    passed: int = 0

    def add(self, seq: int) -> None:
        heapq.heappush(self.pending, seq)

    def below(self, mark: int) -> int:
        while self.pending and self.pending[0] < mark:
            heapq.heappop(self.pending)
            self.passed += 1
        return self.passed
