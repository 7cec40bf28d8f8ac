"""What a person reads when a run ends: how it ended, and what to do next."""

from __future__ import annotations

import logging
import signal
from pathlib import Path

from .errors import Outcome
from .ledger import Stats

log = logging.getLogger("taskmaster.master")


def report_end(outcome: Outcome, stats: Stats, *, dropped: int, elapsed_s: float,
               failures_path: Path) -> None:
    """Log the end of a run (not an already complete one: that says so at its start)."""
    if outcome.error is not None:
        trace = getattr(outcome.error, "user_traceback", "").rstrip()
        log.error("%s%s", outcome.error, "\n" + trace if trace else "")
        log.error("run stopped; state saved: restart to resume")
    elif outcome.signal is not None:
        log.warning("stopped by %s; state saved: restart to resume",
                    signal.Signals(outcome.signal).name)
    else:
        log.info("run complete: %d finished, %d failed in %.1fs (%d retries, %d jobs sent "
                 "again, %d stale acknowledgements, %d messages dropped)", outcome.finished,
                 outcome.failed, elapsed_s, stats.retried, stats.redispatched,
                 stats.stale_acks, dropped)
        if outcome.failed:
            log.error("%d jobs failed; see %s (rerun them with --retry-failures)",
                      outcome.failed, failures_path)
