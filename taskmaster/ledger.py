"""Pure bookkeeping of a run: sequence numbers, the buffer, leases, redelivery, the resume point.

No I/O and no clocks of its own (callers pass ``now``), so every rule here is tested without
sockets. The unit of work in flight is a `Batch`: a run of consecutive jobs leased to one slave
and acknowledged as a whole. Work never needs per-job bookkeeping on the fast path, which is
what lets one master feed many slaves.

A job is *settled* once a slave acknowledged it or its failure record is durable: a job that
failed for good is handed to the caller to record and stays unsettled until `settle` says the
record is written (`Settling` carries out what becomes of jobs that went wrong). The resume
point is the earliest unsettled job.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from .leases import Batch, Buffer, Comebacks, LeaseTable, Stats
from .messages import JobError
from .redelivery import Redelivery
from .settling import Failure, Settling

__all__ = ["AckMismatchError", "Batch", "Failure", "Ledger", "ResumePoint", "Stats"]


class AckMismatchError(ValueError):
    """An acknowledgement names jobs its batch does not hold: the slave's error, not ours."""


@dataclass(frozen=True, slots=True)
class ResumePoint:
    """Where a restarted run picks up: ``seq`` is the earliest unsettled job; get_jobs is
    called with ``last=last_job``, the job numbered ``last_seq``, which is that same job or,
    when it has not been yielded yet, the one just before it (already settled)."""

    seq: int
    last_seq: int
    last_job: Any


class Ledger:
    """Where every job of the run is, from the stream to settled."""

    def __init__(self, size: int, *, first_seq: int = 0, first_bid: int = 1,
                 policy: Redelivery | None = None) -> None:
        self.size = size
        self.stats = Stats()
        self.next_seq = first_seq
        self.exhausted = False
        self._last: tuple[int, Any] | None = None  # the last job fed: (seq, job)
        self._bids = itertools.count(first_bid)
        self._buffer = Buffer()
        self._again = Comebacks()
        self._leases = LeaseTable()
        self._settling = Settling(policy or Redelivery(), self._leases, self._again,
                                  self.stats)
        self._recording = self._settling.recording

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
        settling = self._settling
        return [f for index, error in failures
                if (f := settling.failed_attempt(batch, index, error, slave, now)) is not None]

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
        out: list[Batch] = []
        n, half = len(batch.jobs), len(batch.jobs) // 2
        for part in batch.part(0, half), batch.part(half, n):
            self._lease(part, slave, out, batch.leased_at)
        return out

    def reject(self, slave: bytes, bid: int, error: JobError) -> list[Failure]:
        """The single job of a lease cannot be sent at all (too big for any message): it
        fails for good, with ``error``. Returns it, to record."""
        return self._settling.reject(slave, bid, error)

    def time_out(self, slave: bytes, bid: int, index: int, error: JobError,
                 now: float) -> list[Failure]:
        """``slave`` is being replaced because the job at ``index`` of batch ``bid`` ran past
        its time: that is a failed attempt of that job; everything else it held goes out
        again, uncharged. Returns the failures that are final, to record."""
        final = self._settling.time_out(slave, bid, index, error, now)
        self.release(slave)
        return final

    def release(self, slave: bytes) -> int:
        """Everything ``slave`` holds goes out again, uncharged; returns the jobs."""
        return self.hand_back(slave, [b.bid for b in self._leases.of(slave)])

    def lose(self, slave: bytes, started: frozenset[int] | None = None,
             seen: int = 0) -> list[Failure]:
        """A slave died or went silent holding leases. Each batch is spared or charged with a
        death as the policy decides; returns the jobs that failed for good, to record."""
        return self._settling.lose(slave, started, seen)

    def settle(self, failures: list[Failure]) -> None:
        """Their records are durable: these jobs are done with."""
        self._settling.settle(failures)

    def held_by(self, slave: bytes) -> int:
        """Jobs leased to ``slave`` now."""
        return self._leases.held_by(slave)

    def has_work(self) -> bool:
        """Something could be handed out right now or after a retry's backoff."""
        return bool(self._buffer.chunks or self._again)

    # -- the checkpoint side ---------------------------------------------------------------

    def failed_before(self, seq: int) -> int:
        """Failures settled so far with a sequence number below ``seq`` (which only grows)."""
        return self._settling.failed_before(seq)

    def resume_point(self) -> ResumePoint | None:
        """Where to resume; None before anything was fed (the run's start still is)."""
        best: Batch | None = None
        for batch in itertools.chain(self.leases.values(), self._again,
                                     itertools.islice(self._buffer.chunks, 1)):
            if best is None or batch.start < best.start:
                best = batch
        f = self._settling.first()
        if f is not None and (best is None or f.seq < best.start):
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

