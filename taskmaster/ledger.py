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
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .protocol import JobError
from .redelivery import GiveUp, Redelivery, Retry, Spare


class AckMismatchError(ValueError):
    """An acknowledgement names jobs its batch does not hold: the slave's error, not ours."""


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
    """Once out on a slave that died before starting it (see `Redelivery.after_death`)."""
    origins: list[int] | None = None
    """For a run of recorded failures: each job's sequence number in the run it failed in."""

    @property
    def isolate(self) -> bool:
        """Run alone on its slave, so that if the slave dies again we know whose fault it was."""
        return self.deaths > 0

    def origin(self, index: int) -> int:
        """The sequence number a failure record gives the job at ``index``."""
        return self.origins[index] if self.origins else self.start + index

    def single(self, index: int, **changes: Any) -> Batch:
        """The job at ``index`` as a batch of its own."""
        return Batch(0, self.start + index, [self.jobs[index]],
                     changes.get("attempts", self.attempts), changes.get("deaths", self.deaths),
                     not_before=changes.get("not_before", 0.0), avoid=changes.get("avoid"),
                     origins=[self.origins[index]] if self.origins else None)


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


class _Buffer:
    """Fresh jobs in stream order, kept as the chunks they were fed in."""

    def __init__(self) -> None:
        self.chunks: deque[Batch] = deque()
        self.jobs = 0

    def add(self, batch: Batch) -> None:
        self.chunks.append(batch)
        self.jobs += len(batch.jobs)

    def cut(self, n: int) -> Batch:
        """The next ``n`` jobs (or fewer) as one batch: chunks are consecutive, so a batch may
        span several."""
        head = self.chunks[0]
        if len(head.jobs) <= n and (len(self.chunks) == 1 or len(head.jobs) == n):
            self.chunks.popleft()  # the common case: a whole chunk, no copy
            self.jobs -= len(head.jobs)
            return head
        start, jobs = head.start, []
        origins: list[int] | None = [] if head.origins is not None else None
        while len(jobs) < n and self.chunks:
            head = self.chunks[0]
            want = n - len(jobs)
            if want >= len(head.jobs):
                self.chunks.popleft()
                jobs += head.jobs
                if origins is not None and head.origins is not None:
                    origins += head.origins
            else:
                jobs += head.jobs[:want]
                del head.jobs[:want]
                if origins is not None and head.origins is not None:
                    origins += head.origins[:want]
                    del head.origins[:want]
                head.start += want
        self.jobs -= len(jobs)
        return Batch(0, start, jobs, origins=origins)


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
        self._buffer = _Buffer()
        self._ready: deque[Batch] = deque()  # handed back by a slave; served first
        self._suspects: deque[Batch] = deque()  # single jobs whose slave died; run alone
        self._requeued = 0  # jobs in _ready and _suspects
        self._retrying: list[Batch] = []  # failed once or more, waiting for their backoff
        self._recording: dict[int, Failure] = {}  # failed for good, record not yet durable
        self.leases: dict[int, Batch] = {}
        self._held: dict[bytes, int] = {}  # jobs leased to each slave
        self._suspect_holders: set[bytes] = set()  # slaves holding a job that killed a slave
        self.leased = 0

    # -- the stream side -------------------------------------------------------------------

    @property
    def buffered(self) -> int:
        """Fresh jobs not handed out yet."""
        return self._buffer.jobs

    @property
    def requeued(self) -> int:
        """Jobs waiting to go out again: handed back, orphaned by a dead slave, or retrying."""
        return self._requeued + len(self._retrying)

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
        if self._retrying:
            credit = self._take_retries(slave, credit, now, alone, out)
        if credit > 0 and self._suspects and slave not in self._suspect_holders:
            self._requeued -= 1
            credit -= self._lease(self._suspects.popleft(), slave, out, now)
        while credit > 0 and self._ready:
            batch = self._ready.popleft()
            self._requeued -= len(batch.jobs)
            credit -= self._lease(batch, slave, out, now)
        while credit > 0 and self._buffer.chunks:
            credit -= self._lease(self._buffer.cut(min(credit, max_batch)), slave, out, now)
        return out

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

    def ack(self, slave: bytes, bid: int, failures: tuple[tuple[int, JobError], ...],
            now: float) -> list[Failure]:
        """A slave finished a batch; ``failures`` are (index in batch, error) for jobs that
        raised. Returns the failures that are final, for the caller to record and `settle`.
        Raises AckMismatchError when ``failures`` name jobs the batch does not hold."""
        batch = self.leases.get(bid)
        if batch is None or batch.slave != slave:
            self.stats.stale_acks += 1
            return []
        indices = {index for index, _error in failures}
        if len(indices) != len(failures) or not all(0 <= i < len(batch.jobs) for i in indices):
            raise AckMismatchError(f"acknowledgement of batch {bid} names jobs it does not hold")
        self._unlease(batch)
        self.stats.finished += len(batch.jobs) - len(failures)
        final: list[Failure] = []
        for index, error in failures:
            attempts = batch.attempts + 1
            verdict = self.policy.after_error(attempts, error, now)
            if isinstance(verdict, GiveUp):
                final.append(self._give_up(batch, index, attempts, slave, verdict.error))
            else:
                self.stats.retried += 1
                self._retrying.append(batch.single(index, attempts=attempts,
                                                   not_before=verdict.at, avoid=slave))
        return final

    def hand_back(self, slave: bytes, bids: tuple[int, ...] | list[int]) -> int:
        """A slave returns batches it never started (or never got): they go out again first.
        Returns the number of jobs handed back."""
        jobs = 0
        for bid in bids:
            batch = self.leases.get(bid)
            if batch is not None and batch.slave == slave:
                self._unlease(batch)
                self._requeue(batch)
                jobs += len(batch.jobs)
        self.stats.redispatched += jobs
        return jobs

    def reclaim(self, slave: bytes, held: frozenset[int], leased_before: float) -> int:
        """A live slave says which batches it holds; leases it does not hold, handed out long
        enough ago to have arrived, were lost on the way (a dropped connection loses queued
        messages silently) and go out again. Returns the number of jobs reclaimed."""
        lost = [b.bid for b in self.leases.values()
                if b.slave == slave and b.bid not in held and b.leased_at < leased_before]
        return self.hand_back(slave, lost)

    def lose(self, slave: bytes, started: frozenset[int] | None = None,
             known_at: float = 0.0) -> list[Failure]:
        """A slave died or went silent holding leases. Each batch is spared or charged with a
        death as the policy decides; returns the jobs that failed for good, to record."""
        final: list[Failure] = []
        for batch in [b for b in self.leases.values() if b.slave == slave]:
            self._unlease(batch)
            verdict = self.policy.after_death(batch, started, known_at)
            if isinstance(verdict, Spare):
                batch.spared = True
                self._requeue(batch)
                self.stats.redispatched += len(batch.jobs)
            elif isinstance(verdict, Retry):
                for i in range(len(batch.jobs)):
                    self._requeue(batch.single(i, deaths=batch.deaths + 1))
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

    def _requeue(self, batch: Batch) -> None:
        (self._suspects if batch.isolate else self._ready).append(batch)
        self._requeued += len(batch.jobs)

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

    def held_by(self, slave: bytes) -> int:
        """Jobs leased to ``slave`` now."""
        return self._held.get(slave, 0)

    @property
    def retrying(self) -> int:
        return len(self._retrying)

    def has_work(self) -> bool:
        """Something could be handed out right now or after a retry's backoff."""
        return bool(self._buffer.chunks or self._ready or self._suspects or self._retrying)

    # -- the checkpoint side ---------------------------------------------------------------

    def failed_before(self, seq: int) -> int:
        """Failures settled so far with a sequence number below ``seq`` (which only grows)."""
        return self._failed_before.below(seq)

    def resume_point(self) -> ResumePoint | None:
        """Where to resume; None before anything was fed (the run's start still is)."""
        best: Batch | None = None
        for batch in itertools.chain(self.leases.values(), self._ready, self._suspects,
                                     self._retrying, itertools.islice(self._buffer.chunks, 1)):
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
        return (self.exhausted and not self.leases and not self.has_work()
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
