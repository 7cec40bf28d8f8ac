"""What a slave holds: its batches, the pieces queued to run, and what is done but unreported.

Pure bookkeeping (no sockets, no greenlets), read by the heartbeat thread through `snapshot`.
A batch is acknowledged as a whole once its last piece is done, and acknowledgements may be
held back a moment to go several to a message; until then the master counts the whole batch as
ours, so the window we report adds back the jobs already done in it (`window`), or a batch
held open by one slow job would keep us from getting any more work.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .config import ACK_ERROR_CHARS
from .messages import BatchDone, JobError

Failures = list[tuple[int, JobError]]


@dataclass(eq=False)
class HeldBatch:
    """A batch from the master, as the slave keeps track of it."""

    bid: int
    epoch: bytes
    size: int
    pieces_left: int = 0
    started: bool = False
    failures: Failures = field(default_factory=list)


@dataclass(eq=False, slots=True)
class Piece:
    """Jobs of one batch that one greenlet runs in one turn."""

    batch: HeldBatch
    offset: int
    jobs: list[Any]
    alone: bool
    remaining: Iterator[Any] | None = None
    """While it runs: the iterator over `jobs` its greenlet takes them from."""
    since: float = 0.0
    """When it started to run (time.monotonic())."""


class Holdings:
    """Everything this slave holds for the master, and what it has done."""

    def __init__(self) -> None:
        self.batches: dict[int, HeldBatch] = {}
        self.queue: deque[Piece] = deque()
        self.held = 0
        """Jobs here, queued or running."""
        self.done = 0
        self.failed_attempts = 0
        self.report_due: float | None = None
        """Since when something done waits to be acknowledged."""
        self._unacked_done = 0  # jobs done in batches the master still counts as ours
        self._unreported: list[HeldBatch] = []  # finished batches, acknowledgement held back

    def add(self, bid: int, epoch: bytes, jobs: list[Any], alone: bool, piece: int) -> None:
        """A batch arrived: queue it in pieces of ``piece`` jobs."""
        n = len(jobs)
        self.held += n
        batch = self.batches[bid] = HeldBatch(bid, epoch, n)
        for offset in range(0, n, piece):
            self.queue.append(Piece(batch, offset, jobs[offset:offset + piece] if piece < n
                                    else jobs, alone))
            batch.pieces_left += 1

    def next_piece(self) -> Piece | None:
        """The next piece to run, now marked started; None when the queue is empty."""
        if not self.queue:
            return None
        piece = self.queue.popleft()
        piece.batch.started = True
        return piece

    def split(self, piece: Piece) -> Piece | None:
        """Take the jobs of a running ``piece`` that its greenlet has not reached yet, as a new
        piece (None if there are none). The list it iterates is cut short where it stands, so
        its loop ends after the job it is in, and the index of that job stays right."""
        assert piece.remaining is not None
        cut = len(piece.jobs) - operator.length_hint(piece.remaining)
        if cut >= len(piece.jobs):
            return None
        rest = piece.jobs[cut:]
        del piece.jobs[cut:]
        piece.batch.pieces_left += 1
        return Piece(piece.batch, piece.offset + cut, rest, piece.alone)

    def finish(self, piece: Piece, failures: Failures, epoch: bytes, now: float) -> None:
        """``piece`` ran; ``failures`` are (index in its batch, error) of the jobs that raised.
        ``epoch`` is the master's now: a batch of an earlier one is not acknowledged."""
        batch, n = piece.batch, len(piece.jobs)
        self.held -= n
        self.done += n - len(failures)
        self.failed_attempts += len(failures)
        batch.failures.extend(failures)
        batch.pieces_left -= 1
        if batch.epoch != epoch:
            # A lease the master has given up on: it sent these jobs out again.
            if batch.pieces_left <= 0:
                self.batches.pop(batch.bid, None)
            return
        self._unacked_done += n
        if batch.pieces_left <= 0:
            self._unreported.append(batch)
        if self.report_due is None:
            self.report_due = now

    def report(self) -> list[BatchDone]:
        """The finished batches to acknowledge now, forgotten here."""
        done, self._unreported, self.report_due = self._unreported, [], None
        for batch in done:
            # Held in `batches` until now so that heartbeats still name it: a lease missing
            # from a heartbeat is one the master takes back.
            self.batches.pop(batch.bid, None)
            self._unacked_done -= batch.size
        chars = sum(len(e.message) + len(e.traceback) for b in done for _, e in b.failures)
        if chars <= ACK_ERROR_CHARS:
            return [BatchDone(b.bid, tuple(b.failures)) for b in done]
        # Too much to say in one message: each failure says an equal share of it.
        share = ACK_ERROR_CHARS // sum(len(b.failures) for b in done)
        return [BatchDone(b.bid, tuple((i, e.cut(share)) for i, e in b.failures)) for b in done]

    def window(self, asked: int) -> int:
        """The window to report when we would hold ``asked`` jobs: the master subtracts all
        it has leased to us, which includes jobs done in batches not yet acknowledged."""
        return asked + self._unacked_done

    def unstarted(self) -> list[int]:
        """The ids of the batches not started yet (safe from another thread, as `snapshot`)."""
        return [bid for bid, batch in list(self.batches.items()) if not batch.started]

    def hand_back(self) -> list[int]:
        """Drop every batch not started yet; returns their ids, for the master."""
        back = [b.bid for b in self.batches.values() if not b.started]
        kept: deque[Piece] = deque()
        for piece in self.queue:
            if piece.batch.started:
                kept.append(piece)
            else:
                self.held -= len(piece.jobs)
        self.queue = kept
        for bid in back:
            del self.batches[bid]
        return back

    def forget(self, stale_epoch: bytes) -> None:
        """A new master (or one that lost track of us): drop every queued piece; running ones
        finish but are not acknowledged (marked with ``stale_epoch``), since their lease is
        one the master has given up on and handed out again."""
        for piece in self.queue:
            self.held -= len(piece.jobs)
            piece.batch.pieces_left -= 1
        self.queue.clear()
        self._unacked_done = 0
        self._unreported.clear()
        self.report_due = None
        for bid, batch in list(self.batches.items()):
            if batch.pieces_left <= 0:
                del self.batches[bid]
            else:
                batch.epoch = stale_epoch

    def snapshot(self) -> tuple[frozenset[int], frozenset[int]]:
        """(held, started) batch ids, for a heartbeat. Safe from another thread: list() of a
        dict's items runs without releasing the GIL."""
        batches = list(self.batches.items())
        return (frozenset(bid for bid, _ in batches),
                frozenset(bid for bid, batch in batches if batch.started))
