"""The ledger's containers: a `Batch` of consecutive jobs, the `Buffer` of fresh ones, the
`LeaseTable` of what each slave holds, the `Comebacks` that go out again, and the `Stats` of
it all. Pure, like the ledger that uses them."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any


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
    sent: int = 0
    """The counter of the message that carried it to its slave (0: not sent yet)."""
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

    def part(self, lo: int, hi: int) -> Batch:
        """Its jobs ``lo`` to ``hi`` (excluded) as a batch of their own."""
        return Batch(0, self.start + lo, self.jobs[lo:hi], self.attempts, self.deaths,
                     origins=self.origins[lo:hi] if self.origins else None)

    def single(self, index: int, **changes: Any) -> Batch:
        """The job at ``index`` as a batch of its own."""
        return Batch(0, self.start + index, [self.jobs[index]],
                     changes.get("attempts", self.attempts), changes.get("deaths", self.deaths),
                     not_before=changes.get("not_before", 0.0), avoid=changes.get("avoid"),
                     origins=[self.origins[index]] if self.origins else None)


@dataclass(slots=True)
class Stats:
    """What the ledger has counted; callers read these, only the ledger (and its `Settling`)
    writes them."""

    finished: int = 0
    failed: int = 0
    retried: int = 0
    redispatched: int = 0
    stale_acks: int = 0


class Buffer:
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
        if len(head.jobs) == n or (len(head.jobs) < n and len(self.chunks) == 1):
            self.chunks.popleft()  # the common cases: a whole chunk, no copy
            self.jobs -= len(head.jobs)
            return head
        start = head.start
        jobs: list[Any] = []
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


class LeaseTable:
    """Batches out on slaves, by id, with what each slave holds."""

    def __init__(self) -> None:
        self.by_bid: dict[int, Batch] = {}
        self.jobs = 0
        # Each slave's batches (in the order leased) and their jobs: a heartbeat a second from
        # each of a thousand slaves asks what it holds, and a walk of every lease for each
        # would grow with slaves times leases.
        self._of: dict[bytes, dict[int, Batch]] = {}
        self._held: dict[bytes, int] = {}
        self._suspect_holders: set[bytes] = set()  # slaves holding a job that killed a slave

    def add(self, batch: Batch, bid: int, slave: bytes, now: float) -> None:
        batch.bid, batch.slave, batch.leased_at, batch.sent = bid, slave, now, 0
        self._of.setdefault(slave, {})[bid] = batch
        self._held[slave] = self._held.get(slave, 0) + len(batch.jobs)
        if batch.isolate:
            # One suspect per slave: if that slave dies too, no other job was held hostage
            # beside the suspect (jobs queued behind it would be charged with its death).
            self._suspect_holders.add(slave)
        self.by_bid[bid] = batch
        self.jobs += len(batch.jobs)

    def remove(self, batch: Batch) -> None:
        del self.by_bid[batch.bid]
        self.jobs -= len(batch.jobs)
        slave = batch.slave
        if slave is not None:
            mine = self._of[slave]
            del mine[batch.bid]
            if mine:
                self._held[slave] -= len(batch.jobs)
            else:
                del self._of[slave], self._held[slave]
            if batch.isolate:
                self._suspect_holders.discard(slave)
        batch.slave = None

    def get(self, bid: int, slave: bytes) -> Batch | None:
        """The batch leased to ``slave`` under ``bid``, if it still is."""
        batch = self.by_bid.get(bid)
        return batch if batch is not None and batch.slave == slave else None

    def of(self, slave: bytes) -> list[Batch]:
        """The batches leased to ``slave``, in the order they were leased."""
        mine = self._of.get(slave)
        return list(mine.values()) if mine else []

    def held_by(self, slave: bytes) -> int:
        return self._held.get(slave, 0)

    def holds_suspect(self, slave: bytes) -> bool:
        return slave in self._suspect_holders

    def __bool__(self) -> bool:
        return bool(self.by_bid)


class Comebacks:
    """Jobs that go out again, before any fresh job: retries once their backoff is over,
    orphans of a dead slave (one suspect at a time per slave), and batches handed back."""

    def __init__(self) -> None:
        self.ready: deque[Batch] = deque()
        self.suspects: deque[Batch] = deque()
        self.retrying: list[Batch] = []
        self._queued = 0  # jobs in ready and suspects

    @property
    def jobs(self) -> int:
        return self._queued + len(self.retrying)

    def __bool__(self) -> bool:
        return bool(self.ready or self.suspects or self.retrying)

    def __iter__(self) -> Iterator[Batch]:
        return itertools.chain(self.ready, self.suspects, self.retrying)

    def push(self, batch: Batch) -> None:
        """Out again as soon as a slave has room (alone, if a slave died running it)."""
        (self.suspects if batch.isolate else self.ready).append(batch)
        self._queued += len(batch.jobs)

    def pop(self, suspect: bool) -> Batch:
        batch = (self.suspects if suspect else self.ready).popleft()
        self._queued -= len(batch.jobs)
        return batch

    def due(self, slave: bytes, credit: int, now: float, alone: bool,
            may_take_suspect: bool) -> list[Batch]:
        """Retries ``slave`` may take now, up to ``credit`` jobs (each is one): not before
        their time, not back to the slave they failed on unless ``alone``."""
        taken: list[Batch] = []
        keep: list[Batch] = []
        for batch in self.retrying:
            if (len(taken) < credit and batch.not_before <= now
                    and (alone or batch.avoid != slave)
                    and (may_take_suspect or not batch.isolate)):
                taken.append(batch)
                may_take_suspect = may_take_suspect and not batch.isolate
            else:
                keep.append(batch)
        self.retrying = keep
        return taken
