"""The durable side of a run: failure records, then the checkpoint built from the ledger.

Order matters. A job that failed for good is settled (and so may fall behind the resume point)
only once its record is on disk; the checkpoint is then built from the ledger as it stands, so
no checkpoint ever points past a job that has neither been acknowledged nor recorded.

A disk that will not take a write (full, gone read-only, a file removed under us) is not a
crash: the records wait, unsettled, and the run is `blocked` (the master hands out nothing new)
while every write is tried again, until the disk takes it and the run goes on by itself.

The totals a person sees count each job once across restarts: everything before the resume
point of the checkpoint we started from is settled, and is counted from it; everything after it
runs again in this session and is counted as it does.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import DISK_TROUBLE_LOG_INTERVAL_S
from .errors import StateError
from .ledger import Failure, Ledger
from .records import FailureLog
from .retry import Rounds
from .settings import MasterConfig
from .state import Checkpoint, StateFile, check_identity

log = logging.getLogger(__name__)


@dataclass
class Trouble:
    """A file that cannot be written, since when, and when we last said so."""

    path: Path
    error: str
    since: float
    said: float


class Checkpointer:
    """Records failures and writes checkpoints for one run; keeps its totals across restarts.
    ``start`` is the checkpoint the run starts from (None on a fresh run)."""

    @classmethod
    def open(cls, cfg: MasterConfig) -> Checkpointer:
        """Take the run's state file (locked until `close`), forgetting it first if --reset,
        and read where the run is; StateError if it is another run's."""
        state = StateFile(cfg.state_path)
        state.lock()
        try:
            if cfg.reset:
                _set_aside(cfg)
            start = state.load()
            if start is not None:
                check_identity(start, cfg.identity, state.path)
            source = None
            if cfg.retry_failures is not None:
                source, start = Rounds.of(cfg.retry_failures).begin(state, start)
        except BaseException:
            state.unlock()
            raise
        checkpointer = cls(state, FailureLog(cfg.failures_path), start, cfg.identity)
        checkpointer.retry_source = source
        return checkpointer

    def __init__(self, state: StateFile, failures: FailureLog, start: Checkpoint | None,
                 identity: dict[str, Any]) -> None:
        self.state = state
        self.failures = failures
        self.resumed = start
        self.start = start or Checkpoint()
        self.identity = identity
        self.base_failed = self.start.failed_before if self.start.has_last else 0
        self.base_finished = (self.start.resume_seq - self.base_failed if self.start.has_last
                              else 0)
        self.on_disk: tuple[Checkpoint, float] | None = (start, time.time()) if start else None
        """The last checkpoint the state file holds, and since when."""
        self.trouble: dict[Path, Trouble] = {}
        self.retry_source: Path | None = None
        """For a retry: the failures file whose jobs this round runs."""
        self._unwritten: list[Failure] = []  # failed for good, their records not written
        self._saved: tuple[Any, ...] | None = None

    def check(self) -> None:
        """Make sure both files can be written before anything runs: StateError otherwise
        (a full disk, a read-only place, a directory where the file should be)."""
        self.failures.check()
        try:
            self.state.save(self.resumed or Checkpoint(identity=self.identity))
        except OSError as e:
            raise StateError(f"cannot write state file {self.state.path}: {e.strerror}; "
                             "free some room, or choose another --state-file") from None

    def close(self) -> None:
        self.failures.close()
        self.state.unlock()

    @property
    def blocked(self) -> bool:
        """A file cannot be written: nothing new should go out until it can."""
        return bool(self.trouble)

    def finished(self, ledger: Ledger) -> int:
        """Jobs of the run that succeeded, each counted once across restarts."""
        return self.base_finished + ledger.stats.finished

    def failed(self, ledger: Ledger) -> int:
        return self.base_failed + ledger.stats.failed

    def record(self, ledger: Ledger, failures: list[Failure]) -> None:
        """Write the records of jobs that failed for good, then settle them; when the disk
        will not take them, they wait (unsettled) for the next `retry`."""
        self._unwritten += failures
        self._flush(ledger)

    def retry(self, ledger: Ledger) -> None:
        """Try again what could not be written."""
        self._flush(ledger)
        if self.state.path in self.trouble:
            self.save(ledger, force=True)

    def _flush(self, ledger: Ledger) -> None:
        if not self._unwritten:
            return
        try:
            self.failures.record(self._unwritten)
        except OSError as e:
            self._cannot(self.failures.path, e)
            return
        ledger.settle(self._unwritten)
        self._unwritten = []
        self._can(self.failures.path)

    def build(self, ledger: Ledger) -> Checkpoint:
        """The checkpoint for the ledger as it stands."""
        finished, failed = self.finished(ledger), self.failed(ledger)
        point = ledger.resume_point()
        if ledger.complete:
            return Checkpoint(resume_seq=ledger.next_seq, complete=True, finished=finished,
                              failed=failed, failed_before=failed, identity=self.identity)
        if point is None:
            # Nothing pulled from the stream yet: where we started is still where to resume.
            return dataclasses.replace(self.start, complete=False, finished=finished,
                                       failed=failed, identity=self.identity)
        return Checkpoint(resume_seq=point.seq, last_seq=point.last_seq, last_job=point.last_job,
                          has_last=True, finished=finished, failed=failed,
                          failed_before=self.base_failed + ledger.failed_before(point.seq),
                          identity=self.identity)

    def save(self, ledger: Ledger, force: bool = False) -> bool:
        """Write the checkpoint if it changed (or ``force``); True when the file holds it."""
        cp = self.build(ledger)
        key = (cp.resume_seq, cp.last_seq, cp.has_last, cp.finished, cp.failed, cp.complete)
        if key == self._saved and not force:
            return True
        try:
            self.state.save(cp)
        except pickle.PicklingError as e:
            # The resume job itself cannot be pickled (the dispatcher reports it as the run's
            # error); the last checkpoint written is still a safe resume point.
            log.debug("checkpoint not written: %s", e)
            return False
        except OSError as e:
            self._cannot(self.state.path, e)
            return False
        self._saved, self.on_disk = key, (cp, time.time())
        self._can(self.state.path)
        return True

    def _cannot(self, path: Path, e: OSError) -> None:
        now = time.monotonic()
        trouble = self.trouble.get(path)
        if trouble is None:
            self.trouble[path] = Trouble(path, e.strerror or str(e), now, now)
            log.error("cannot write %s: %s; the run is paused until it can be (no new jobs "
                      "go out; the slaves finish what they hold)", path, e.strerror)
        elif now - trouble.said >= DISK_TROUBLE_LOG_INTERVAL_S:
            trouble.said, trouble.error = now, e.strerror or str(e)
            log.error("still cannot write %s: %s; paused for %.0fs", path, e.strerror,
                      now - trouble.since)

    def _can(self, path: Path) -> None:
        trouble = self.trouble.pop(path, None)
        if trouble is not None:
            log.warning("%s can be written again, after %.0fs; the run goes on", path,
                        time.monotonic() - trouble.since)


def _set_aside(cfg: MasterConfig) -> None:
    """--reset: the run's files are kept beside, as ``*.old`` (an older one is replaced), and
    the run starts over."""
    paths = [cfg.state_path, cfg.failures_path]
    if cfg.retry_failures is not None:
        rounds = Rounds.of(cfg.retry_failures)
        paths += [rounds.previous, rounds.stamp]
    else:  # the retries of this run's failures are of the run set aside
        paths += Rounds(cfg.failures_path).files
    kept = []
    for path in paths:
        if path.exists():
            old = path.with_name(path.name + ".old")
            path.replace(old)
            kept.append(str(old))
    if kept:
        log.warning("--reset: starting over; kept the old files as %s", ", ".join(kept))
    else:
        log.info("--reset: starting over (there was nothing to set aside)")
