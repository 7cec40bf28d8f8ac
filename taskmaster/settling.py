"""What becomes of a leased job that did not simply finish, and of the jobs given up on.

The `Redelivery` policy decides; `Settling` carries the verdict out on the ledger's containers
(the leases ended so, and what goes out again):
out again (at once, after a backoff, alone after a death, or the whole batch spared), or given
up on, a `Failure` held here until the caller says its record is durable (`settle`). Pure, like
the ledger it serves, and counted in the ledger's `Stats`.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from .leases import Batch, Comebacks, LeaseTable, Stats
from .messages import JobError
from .redelivery import GiveUp, Redelivery, Spare


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


class Settling:
    """Jobs that failed an attempt or lost their slave, sent on their way by the policy."""

    def __init__(self, policy: Redelivery, leases: LeaseTable, again: Comebacks,
                 stats: Stats) -> None:
        self.policy = policy
        self._leases = leases
        self._again = again
        self._stats = stats
        self.recording: dict[int, Failure] = {}
        """Failed for good, record not yet durable: by sequence number."""
        self._settled = _Counted()

    def failed_attempt(self, batch: Batch, index: int, error: JobError, slave: bytes,
                       now: float) -> Failure | None:
        """Job ``index`` of ``batch`` failed once more: retried as the policy says (None), or
        given up on (the failure to record)."""
        attempts = batch.attempts + 1
        verdict = self.policy.after_error(attempts, error, now)
        if isinstance(verdict, GiveUp):
            return self.give_up(batch, index, attempts, slave, verdict.error)
        self._stats.retried += 1
        self._again.retrying.append(batch.single(index, attempts=attempts,
                                                 not_before=verdict.at, avoid=slave))
        return None

    def time_out(self, slave: bytes, bid: int, index: int, error: JobError,
                 now: float) -> list[Failure]:
        """Job ``index`` of lease ``bid`` ran past its time: a failed attempt of that job; the
        others go out again, uncharged. Returns the failure, if final, to record."""
        batch = self._leases.get(bid, slave)
        if batch is None or not 0 <= index < len(batch.jobs):
            return []
        self._leases.remove(batch)
        failure = self.failed_attempt(batch, index, error, slave, now)
        for part in (batch.part(0, index), batch.part(index + 1, len(batch.jobs))):
            if part.jobs:
                self._again.push(part)
        self._stats.redispatched += len(batch.jobs) - 1
        return [failure] if failure is not None else []

    def lose(self, slave: bytes, started: frozenset[int] | None, seen: int) -> list[Failure]:
        """``slave`` died holding leases: the failures that are final, to record."""
        final: list[Failure] = []
        for batch in self._leases.of(slave):
            self._leases.remove(batch)
            final += self._died(batch, slave, started, seen)
        return final

    def _died(self, batch: Batch, slave: bytes, started: frozenset[int] | None,
              seen: int) -> list[Failure]:
        """``batch``'s slave died holding it: spared, each job out again alone, or every job
        given up on (returned, to record)."""
        verdict = self.policy.after_death(batch, started, seen)
        if isinstance(verdict, GiveUp):
            return self.give_up_all(batch, slave, verdict.error)
        if isinstance(verdict, Spare):
            batch.spared = True
            self._again.push(batch)
        else:
            for i in range(len(batch.jobs)):
                self._again.push(batch.single(i, deaths=batch.deaths + 1))
        self._stats.redispatched += len(batch.jobs)
        return []

    def reject(self, slave: bytes, bid: int, error: JobError) -> list[Failure]:
        """Lease ``bid`` cannot be sent at all: its jobs fail for good, with ``error``."""
        batch = self._leases.get(bid, slave)
        if batch is None:
            return []
        self._leases.remove(batch)
        return self.give_up_all(batch, slave, error)

    def give_up(self, batch: Batch, index: int, attempts: int, slave: bytes,
                error: JobError) -> Failure:
        f = Failure(batch.start + index, batch.jobs[index], attempts, slave, error,
                    batch.origin(index))
        self.recording[f.seq] = f
        return f

    def give_up_all(self, batch: Batch, slave: bytes, error: JobError) -> list[Failure]:
        return [self.give_up(batch, i, batch.attempts + 1, slave, error)
                for i in range(len(batch.jobs))]

    def settle(self, failures: list[Failure]) -> None:
        """Their records are durable: these jobs are done with."""
        for f in failures:
            if self.recording.pop(f.seq, None) is not None:
                self._stats.failed += 1
                self._settled.add(f.seq)

    def failed_before(self, seq: int) -> int:
        """Failures settled so far with a sequence number below ``seq`` (which only grows)."""
        return self._settled.below(seq)

    def first(self) -> Failure | None:
        """The earliest job still waiting for its record."""
        seq = min(self.recording, default=None)
        return None if seq is None else self.recording[seq]


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
