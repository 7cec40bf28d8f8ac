"""What a person reads when a run starts (what runs, from where) and when it ends (how, and
what to do next)."""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

from .digest import FailureDigest
from .errors import Outcome
from .ledger import Stats
from .progress import plural
from .retry import Rounds
from .settings import MasterConfig
from .state import Checkpoint, safe_repr

log = logging.getLogger("taskmaster.master")


def report_start(cfg: MasterConfig, cp: Checkpoint | None) -> None:
    """Say what runs and where it starts (``cp``: the checkpoint it resumes from)."""
    args = ", ".join(f"{k}={v!r}" for k, v in cfg.kwargs.items())
    log.info("running %s(%s); state file: %s%s", cfg.target.identity, args, cfg.state_path,
             f" (resuming at job #{cp.resume_seq}: {safe_repr(cp.last_job, 80)})"
             if cp is not None and cp.has_last else " (from the start)")


def report_end(outcome: Outcome, stats: Stats, *, dropped: int, elapsed_s: float,
               state_path: Path, failures_path: Path, saved: bool,
               on_disk: tuple[Checkpoint, float] | None, digest: FailureDigest,
               retrying: bool = False, stopped_by: str = "") -> None:
    """Log the end of a run (not an already complete one: that says so at its start).
    ``stats`` are this session's, ``outcome`` the run's; ``saved``: the final checkpoint was
    written; ``on_disk``: what the state file holds; ``retrying``: a round of
    --retry-failures; ``stopped_by``: what asked for the stop, when not a signal's name."""
    digest.flush(force=True)
    if outcome.error is not None:
        trace = getattr(outcome.error, "user_traceback", "").rstrip()
        log.error("%s%s", outcome.error, "\n" + trace if trace else "")
        log.error("run stopped; %s", _state(saved, on_disk))
    elif outcome.signal is not None:
        log.warning("stopped by %s; %s", stopped_by or signal.Signals(outcome.signal).name,
                    _state(saved, on_disk))
    else:
        ran = stats.finished + stats.failed
        session = ""
        if (outcome.finished, outcome.failed) != (stats.finished, stats.failed):
            session = (f"; this session: {stats.finished} finished, {stats.failed} failed "
                       "(the run's counts include the sessions before it)")
        log.info("run complete: %d finished, %d failed in %.1fs (%s/s)%s; state file %s",
                 outcome.finished, outcome.failed, elapsed_s,
                 f"{ran / elapsed_s:,.0f}" if elapsed_s > 0 else "-", session, state_path)
        extra = [plural(stats.retried, "retry", "retries")] if stats.retried else []
        if stats.redispatched:
            extra.append(f"{plural(stats.redispatched, 'job')} sent out again (from slaves "
                         "lost or leaving)")
        if stats.stale_acks:
            extra.append(f"{plural(stats.stale_acks, 'job')} reported done too late to count "
                         "(they had been sent out again)")
        if dropped:
            extra.append(f"{plural(dropped, 'message')} dropped")
        if extra:
            log.info("on the way: %s", ", ".join(extra))
    if outcome.failed:
        kinds = digest.by_type()
        again = ("start the same command again: it runs the jobs still failed" if retrying
                 else f"run them again with --retry-failures {failures_path}")
        log.error("%s failed for good%s; their records, tracebacks included, are in %s: fix "
                  "the cause, then %s", plural(outcome.failed, "job"),
                  f" ({kinds})" if kinds else "", failures_path, again)


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


def already_complete(cfg: MasterConfig, cp: Checkpoint) -> Outcome:
    """What starting a run that is complete says, and its status: 1 while jobs of it are
    still failed (recorded, and not since run again without failing by --retry-failures)."""
    if cfg.retry_failures is not None:
        log.info("nothing left to retry: every job recorded in %s has run again without "
                 "failing (per %s)", cfg.retry_failures, cfg.state_path)
        return Outcome(cp.finished, 0, already_complete=True)
    failed = cp.failed
    if failed:
        still = Rounds.of(cfg.failures_path).still_failed()
        if still == 0:
            log.info("run already complete: %d finished, %d failed, and those have since run "
                     "again without failing (--retry-failures); --reset starts it over",
                     cp.finished, cp.failed)
            return Outcome(cp.finished, 0, already_complete=True)
        failed = failed if still is None else still
        log.error("run already complete, per %s: %d finished, %s still failed, recorded in "
                  "%s: fix the cause, then run them again with --retry-failures %s",
                  cfg.state_path, cp.finished, plural(failed, "job"), cfg.failures_path,
                  cfg.failures_path)
    else:
        log.info("run already complete, per %s: %d finished, 0 failed; --reset starts it over",
                 cfg.state_path, cp.finished)
    return Outcome(cp.finished, failed, already_complete=True)
