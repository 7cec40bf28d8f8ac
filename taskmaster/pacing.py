"""How fast a slave is, and what it asks for from that: pure estimates, updated as jobs run.

A slave asks the master for as many jobs as keep its greenlets busy for `SLAVE_WORK_AHEAD_S`:
thousands for jobs that take microseconds, a few for jobs that take seconds. It cuts each batch
into pieces of about `PIECE_S` of work, one piece per turn of a worker greenlet, so that a turn
is long enough to cost nothing and short enough to let the others (and the socket) run.
"""

from __future__ import annotations

from .config import MAX_WINDOW_JOBS, PIECE_S, SLAVE_WORK_AHEAD_S


class Pacing:
    """Running estimates of one job's time and of how many pieces run at once."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.job_s = 0.001
        self.overlap = 1.0
        self.window = 2 * concurrency
        """Jobs to ask the master to hold for us."""
        self.timed = 0
        """Pieces finished so far: until there are as many as greenlets, each is one job."""

    def started(self, running: int) -> None:
        """A piece started, with ``running`` pieces now in progress (it included)."""
        self.overlap = 0.8 * self.overlap + 0.2 * running

    def finished(self, elapsed_s: float, jobs: int) -> None:
        """A piece of ``jobs`` jobs took ``elapsed_s``."""
        # Weighted toward the recent past: a stream whose jobs change speed is followed
        # within a few pieces.
        self.timed += 1
        self.job_s = max(1e-7, 0.7 * self.job_s + 0.3 * elapsed_s / jobs)
        # Greenlets overlap only jobs that wait (I/O, sleeps): a CPU-bound piece never
        # yields, so it always runs alone. The window follows what really overlaps, or a
        # CPU-bound slave would ask for ten times what it can do and starve the others.
        ahead = SLAVE_WORK_AHEAD_S * self.overlap / self.job_s
        if self.timed >= self.concurrency:
            # (Not before: the batches that come meanwhile are cut into single jobs.)
            self.window = int(min(MAX_WINDOW_JOBS, max(2 * self.concurrency, ahead)))

    def piece_size(self, jobs: int, alone: bool) -> int:
        """Jobs per piece for a batch of ``jobs`` (a suspect runs one job at a time).

        Each greenlet's first turn is one job: a piece cut by the first guess, before any job
        was timed, could give one greenlet most of the first batch while the others wait (100
        jobs of 10 ms in two pieces of 50: half a second with 98 of 100 greenlets idle)."""
        if alone or self.timed < self.concurrency:
            return 1
        return max(1, min(jobs, int(PIECE_S / self.job_s)))
