"""Limits an operator sets on a run: a rate of jobs handed out, and a bound on failures.

Both are pure (callers pass ``now`` and counts), so their arithmetic is tested alone.

`TokenBucket`: at most ``rate`` jobs a second across all slaves. Tokens accrue with time up to
one second's worth, so a short pause in demand does not lose rate, and a long one does not
save up a burst; batches are cut to the tokens there are, so a rate of 5 on 20 slaves is 5.

`FailureBrake`: ``--max-failures N`` stops the run once N jobs of this session failed for good;
``--max-failures P%`` once more than P % of the last `FAILURE_WINDOW_JOBS` settled jobs failed
(judged only after `FAILURE_MIN_JOBS`). Settled jobs come by the thousand in one
acknowledgement, so the window is kept as runs of (jobs, failed) rather than one entry a job.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .config import FAILURE_MIN_JOBS, FAILURE_WINDOW_JOBS
from .errors import ConfigError
from .messages import MOST_RATE


def check_rate(rate: float | None, what: str) -> float | None:
    """``rate`` if it is one (None: no limit), else a ConfigError naming ``what`` it is."""
    if rate is not None and not 0 < rate <= MOST_RATE:  # NaN fails this too
        raise ConfigError(f"{what} must be a positive number of jobs per second (at most "
                          f"{MOST_RATE:g}), got {rate:g}")
    return rate


class TokenBucket:
    """Jobs that may go out now, at ``rate`` a second (None: no limit)."""

    def __init__(self, rate: float | None, now: float) -> None:
        self.rate: float | None = None
        self._tokens = 0.0
        self._at = now
        self.set(rate, now)

    def set(self, rate: float | None, now: float) -> None:
        """A new rate (None: none), from now on."""
        check_rate(rate, "a rate")
        self._refill(now)
        self.rate = rate
        self._tokens = min(self._tokens, self._capacity())

    def available(self, now: float) -> int:
        """How many jobs may go out now (a large number when there is no limit)."""
        if self.rate is None:
            return 1 << 62
        self._refill(now)
        return int(self._tokens)

    def spend(self, jobs: int) -> None:
        if self.rate is not None:
            self._tokens -= jobs

    def _capacity(self) -> float:
        # One second's worth, and at least one job: a rate under 1/s still hands out jobs.
        return max(1.0, self.rate or 0.0)

    def _refill(self, now: float) -> None:
        if self.rate is not None:
            self._tokens = min(self._capacity(), self._tokens + (now - self._at) * self.rate)
        self._at = now


@dataclass(frozen=True, slots=True)
class MaxFailures:
    """--max-failures as given: a count of jobs, or a percentage of recent ones."""

    count: int | None = None
    percent: float | None = None

    @classmethod
    def parse(cls, text: str) -> MaxFailures:
        """``N`` (at least 1) or ``P%`` (above 0, at most 100)."""
        value = text.strip()
        try:
            if value.endswith("%"):
                percent = float(value[:-1])
                if 0 < percent <= 100:
                    return cls(percent=percent)
            else:
                count = int(value)
                if count >= 1:
                    return cls(count=count)
        except ValueError:
            pass
        raise ConfigError(f"--max-failures must be a number of jobs (at least 1) or a "
                          f"percentage such as 5%, got {text!r}")

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else str(self.count)


class FailureBrake:
    """Says when failures of this session pass the bound (``why`` says how, once they do)."""

    def __init__(self, bound: MaxFailures) -> None:
        self.bound = bound
        self._runs: deque[tuple[int, int]] = deque()  # (jobs, of them failed), oldest first
        self._jobs = 0
        self._failed = 0
        self.failed_total = 0

    def settled(self, finished: int, failed: int) -> None:
        """More jobs settled: ``finished`` well, ``failed`` for good."""
        self.failed_total += failed
        if self.bound.percent is None:
            return
        for jobs, bad in ((finished, 0), (failed, failed)):
            if jobs:
                self._runs.append((jobs, bad))
                self._jobs += jobs
                self._failed += bad
        while self._jobs > FAILURE_WINDOW_JOBS:  # trim the oldest, part of a run if need be
            jobs, bad = self._runs[0]
            cut = min(jobs, self._jobs - FAILURE_WINDOW_JOBS)
            cut_bad = cut if bad else 0
            self._jobs -= cut
            self._failed -= cut_bad
            if cut == jobs:
                self._runs.popleft()
            else:
                self._runs[0] = (jobs - cut, bad - cut_bad)

    def why(self) -> str:
        """Why the run must stop now, or ""."""
        if self.bound.count is not None and self.failed_total >= self.bound.count:
            return (f"{self.failed_total} jobs failed for good this session "
                    f"(--max-failures {self.bound})")
        if (self.bound.percent is not None and self._jobs >= FAILURE_MIN_JOBS
                and self._failed * 100 > self.bound.percent * self._jobs):
            return (f"{self._failed} of the last {self._jobs} settled jobs failed "
                    f"({100 * self._failed / self._jobs:.0f}%, --max-failures {self.bound})")
        return ""
