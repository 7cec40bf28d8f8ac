"""How much one slave gets, and in what batches: pure functions of what the master knows.

Credit is absolute, not incremental: what the slave asks to hold minus what it holds. A lost
message then cannot leave master and slave disagreeing for good. Windows and batches are bounded
in jobs and, once the size of a job is known, in bytes: what the master holds for each slave
(and copies into messages for it) stays a few megabytes whatever the size of a job.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import BATCH_BYTES, FIRST_BATCH_JOBS, MAX_BATCH_JOBS, MAX_WINDOW_JOBS, WINDOW_BYTES


@dataclass(frozen=True, slots=True)
class Lease:
    """What to hand one slave now: up to ``credit`` jobs, in batches of ``max_batch``."""

    credit: int
    max_batch: int


def lease_for(window: int, held: int, concurrency: int, job_bytes: float) -> Lease:
    """The lease for a slave that asks to hold ``window`` jobs and holds ``held``;
    ``job_bytes`` is the pickled size of a job, 0 while unknown."""
    window = min(window, MAX_WINDOW_JOBS)
    if not job_bytes:
        # Until one batch has shown how large a job pickles, a small one: 5 000 unknown jobs
        # could be more than a slave accepts in one message.
        max_batch = FIRST_BATCH_JOBS
    else:
        # Large jobs: bounded in bytes too, but never below a job per greenlet.
        window = min(window, max(concurrency, int(WINDOW_BYTES / job_bytes)))
        max_batch = max(1, min(MAX_BATCH_JOBS, int(BATCH_BYTES / job_bytes)))
    credit = window - held
    # No batch too small to be worth its message (one costs both sides as much as a full
    # one): credit beyond whole batches waits, unless it makes a quarter of the window.
    # With 1 KB jobs, 8 batches of 508 in a window of 4 076 left 12 jobs over, and each
    # acknowledgement of a full batch freed 520: a batch of 508 and one of 12, which, once
    # acknowledged, went out again: a quarter of all messages carried under 1 % of the jobs.
    # The slave still holds three quarters of its window, and asks again with each
    # acknowledgement. Never below a job per greenlet, though: large jobs make a window of
    # one each, where a remainder withheld would leave greenlets idle (500 of 16 KB: 52).
    least = min(max_batch, window // 4)
    if credit > 0 and (rest := credit % max_batch) < least and \
            held + credit - rest >= concurrency:
        credit -= rest
    return Lease(credit, max_batch)


class JobSize:
    """The pickled size of a job, averaged over recent batches (0 until the first)."""

    def __init__(self) -> None:
        self.bytes = 0.0

    def learn(self, body_bytes: int, jobs: int) -> None:
        size = body_bytes / jobs
        self.bytes = size if not self.bytes else 0.8 * self.bytes + 0.2 * size


def buffer_room(room: int, *, held: int, leased: int, job_bytes: float, max_bytes: int,
                buffer_bytes: int | None = None) -> int:
    """How many more jobs the stream may add: the ledger's ``room`` in jobs and, by the size of
    a job as far as it is known, the room in bytes (``held``: jobs buffered and leased, of
    which ``leased`` are leased); with ``buffer_bytes`` (the default --size's), the room in
    bytes of the buffer alone too."""

    def fits(max_bytes: int) -> int:
        # Before any job's size is known, one job, to learn it; and never less than one job
        # at a time, however big.
        return max(1, int(max_bytes // job_bytes)) if job_bytes else 1

    room = min(room, fits(max_bytes) - held)
    if buffer_bytes is not None:
        room = min(room, fits(buffer_bytes) - (held - leased))
    return room
