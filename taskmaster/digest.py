"""Failures said so that they inform instead of flooding the screen.

The first failure of each exception type is logged with its traceback; later ones of that type
are counted and said in one line at most every `FAILURE_SUMMARY_S` ("ValueError: 37 more in
the last 5s"). The end of a run lists them by type. Every traceback is in the failures file in
any case.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

from .config import FAILURE_SUMMARY_S
from .messages import JobError


class FailureDigest:
    """What has failed, by exception type, and what of it has been said."""

    def __init__(self, logger: logging.Logger) -> None:
        self.log = logger
        self.attempts: Counter[str] = Counter()
        """Failed attempts, by exception type."""
        self.final: Counter[str] = Counter()
        """Jobs failed for good, by exception type."""
        self._unsaid: Counter[str] = Counter()
        self._since = time.monotonic()

    def failed(self, error: JobError, job: str, *, final: bool = False) -> None:
        """``job`` (how to name it) failed with ``error``; ``final``: for good."""
        first = error.type not in self.attempts and error.type not in self.final
        (self.final if final else self.attempts)[error.type] += 1
        if first:
            outcome = "failed for good" if final else "failed (it will be retried)"
            self.log.warning("%s %s: %s: %s (the first %s; later ones are counted)\n%s", job,
                             outcome, error.type, error.message, error.type,
                             error.traceback.rstrip() or "(no traceback)")
        else:
            self._unsaid[error.type] += 1

    def flush(self, now: float | None = None, force: bool = False) -> None:
        """Say what was counted since the last time, if it is time (or ``force``)."""
        now = time.monotonic() if now is None else now
        if not self._unsaid or (not force and now - self._since < FAILURE_SUMMARY_S):
            return
        for kind, n in self._unsaid.most_common():
            self.log.warning("%s: %d more failures in the last %.0fs", kind, n,
                             now - self._since)
        self._unsaid.clear()
        self._since = now

    def by_type(self) -> str:
        """``ValueError 30, KeyError 2``: the jobs failed for good, most common first."""
        return ", ".join(f"{kind} {n:,}" for kind, n in self.final.most_common())
