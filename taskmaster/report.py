"""What a person reads when a run ends: how it ended, and what to do next."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from .errors import Outcome
from .ledger import Stats
from .state import Checkpoint

log = logging.getLogger("taskmaster.master")


def report_end(outcome: Outcome, stats: Stats, *, dropped: int, elapsed_s: float,
               failures_path: Path, saved: bool,
               on_disk: tuple[Checkpoint, float] | None) -> None:
    """Log the end of a run (not an already complete one: that says so at its start).
    ``saved``: the final checkpoint was written; ``on_disk``: what the state file holds."""
    if outcome.error is not None:
        trace = getattr(outcome.error, "user_traceback", "").rstrip()
        log.error("%s%s", outcome.error, "\n" + trace if trace else "")
        log.error("run stopped; %s", _state(saved, on_disk))
    elif outcome.signal is not None:
        log.warning("stopped by %s; %s", signal.Signals(outcome.signal).name,
                    _state(saved, on_disk))
    else:
        log.info("run complete: %d finished, %d failed in %.1fs (%d retries, %d jobs sent "
                 "again, %d stale acknowledgements, %d messages dropped)", outcome.finished,
                 outcome.failed, elapsed_s, stats.retried, stats.redispatched,
                 stats.stale_acks, dropped)
        if outcome.failed:
            log.error("%d jobs failed; see %s (rerun them with --retry-failures)",
                      outcome.failed, failures_path)


def _state(saved: bool, on_disk: tuple[Checkpoint, float] | None) -> str:
    """What a restart will find, in words: true, whether or not the last save went well."""
    if saved:
        return "state saved: restart to resume"
    if on_disk is None:
        return "no state was saved: a restart starts from the beginning"
    cp, at = on_disk
    where = f"at job #{cp.resume_seq}" if cp.has_last else "from the beginning"
    return (f"the state could not be saved now; the state file holds the one of "
            f"{time.strftime('%H:%M:%S', time.localtime(at))}: a restart resumes {where}")
