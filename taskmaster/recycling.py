"""When a slave should make way for a fresh process: after so many jobs, over so much memory,
or once a job ran out of memory. Leaving so is planned (`EXIT_REPLACE`), never a death."""

from __future__ import annotations

import os

from .config import MEMORY_CHECK_S


class Recycling:
    """The policy of one slave, from --max-jobs-per-slave and --max-memory."""

    def __init__(self, max_jobs: int | None, max_memory_mb: float | None) -> None:
        self.max_jobs = max_jobs
        self.max_memory_mb = max_memory_mb
        self._memory_checked = float("-inf")

    def window(self, asked: int, done: int) -> int:
        """How many jobs to hold, of the ``asked`` a slave that has run ``done`` would hold:
        never more than --max-jobs-per-slave leaves it. A slave that leaves still runs what it
        has begun, and a batch of instant jobs is begun whole (up to 50 000 of them)."""
        return asked if self.max_jobs is None else min(asked, max(0, self.max_jobs - done))

    def why(self, done: int, out_of_memory: bool, now: float) -> str:
        """Why the process should be replaced now, having run ``done`` jobs; "" if not."""
        if out_of_memory:
            return "a job ran out of memory"
        if self.max_jobs is not None and done >= self.max_jobs:
            return f"{done} jobs done (--max-jobs-per-slave {self.max_jobs})"
        # Reading /proc after every piece would cost fast jobs dearly: at most so often.
        if self.max_memory_mb is not None and now - self._memory_checked >= MEMORY_CHECK_S:
            self._memory_checked = now
            mb = resident_mb()
            if mb > self.max_memory_mb:
                return f"{mb:.0f} MB resident (--max-memory {self.max_memory_mb})"
        return ""


def resident_mb() -> float:
    """This process's resident memory, in MB (0 where /proc cannot tell)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0
