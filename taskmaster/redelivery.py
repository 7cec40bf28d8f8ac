"""When a job that did not finish goes out again, and when it is given up on: one pure policy.

Two things make a job come back: its ``handle_job`` raised (an error: retried with a doubling
delay, then recorded), or its slave died holding it (a death: the job goes out again alone, so
that a second death names the job that caused it, and after ``max_deaths`` it is recorded as a
poison job). A batch its slave reported as not even started is spared, once: the report may be
a heartbeat old, so the next death is charged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from .config import (
    DEFAULT_MAX_DEATHS,
    DEFAULT_MAX_RETRIES,
    RETRY_BACKOFF_BASE_S,
    RETRY_BACKOFF_MAX_S,
)
from .messages import JobError

if TYPE_CHECKING:
    from .ledger import Batch


@dataclass(frozen=True, slots=True)
class Retry:
    """Send it again, not before ``at`` (alone, after a death)."""

    at: float = 0.0


@dataclass(frozen=True, slots=True)
class GiveUp:
    """Record it as failed, with this error."""

    error: JobError


@dataclass(frozen=True, slots=True)
class Spare:
    """Send the batch out again whole, uncharged."""


def backoff_s(attempts: int) -> float:
    """Delay before retry number ``attempts``: doubling from the base, capped."""
    return min(RETRY_BACKOFF_MAX_S, RETRY_BACKOFF_BASE_S * 2.0 ** max(0, attempts - 1))


@dataclass(frozen=True, slots=True)
class Redelivery:
    """The policy, with its two bounds."""

    max_retries: int = DEFAULT_MAX_RETRIES
    max_deaths: int = DEFAULT_MAX_DEATHS

    def after_error(self, attempts: int, error: JobError, now: float) -> Retry | GiveUp:
        """A job raised, for the ``attempts``-th time."""
        if attempts > self.max_retries:
            return GiveUp(error)
        return Retry(now + backoff_s(attempts))

    def after_death(self, batch: Batch, started: frozenset[int] | None,
                    seen: int) -> Spare | Retry | GiveUp:
        """``batch``'s slave died; ``started`` is what it last reported having begun, having
        received our messages up to the counter ``seen``; None when it never reported."""
        if (started is not None and batch.bid not in started and 0 < batch.sent <= seen
                and not batch.spared and not batch.deaths):
            return Spare()
        deaths = batch.deaths + 1
        if deaths >= self.max_deaths:
            return GiveUp(JobError("SlaveDied",
                                   f"its slave died while running it ({deaths} times)"))
        return Retry()
