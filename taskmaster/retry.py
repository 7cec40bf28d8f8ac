"""Running a run's failed jobs again, round after round, until none is left.

``--retry-failures F`` runs the jobs recorded in F again. Those that fail again are recorded in
the retry's own failures file, beside its state file: for ``run.failures.jsonl``, the retry's
state is ``run.retry.tmstate`` and its failures ``run.retry.failures.jsonl``. Fix the cause
and start the same command again: a new round runs the jobs still failed (the last round's
records, moved aside as ``run.retry.previous.jsonl``, are its source) and so on, until a round
records none; the same command then says that nothing is left, and exits 0. F itself is never
changed. A round resumes mid-way like any run (by position in its source), and naming the
retry's own files instead of F is the same chain of rounds: no name ever grows a suffix.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .records import count_failures
from .state import Checkpoint, StateFile
from .target import FAILURES_SUFFIX, STATE_SUFFIX

log = logging.getLogger(__name__)

RETRY = ".retry"
PREVIOUS_SUFFIX = RETRY + ".previous.jsonl"


@dataclass(frozen=True)
class Rounds:
    """The files of the retries of one failures file."""

    original: Path
    """The failures file the first round retried."""

    @classmethod
    def of(cls, path: Path) -> Rounds:
        """The rounds that ``path`` (a failures file, or one of a retry's own) belongs to."""
        name = path.name
        for suffix in (RETRY + FAILURES_SUFFIX, PREVIOUS_SUFFIX):
            if name.endswith(suffix):
                base = name.removesuffix(suffix)
                named = path.with_name(base + FAILURES_SUFFIX)
                # The original was named base.failures.jsonl, or (given a name of its own
                # by --failures-file) base itself.
                bare = path.with_name(base)
                return cls(bare if bare.exists() and not named.exists() else named)
        return cls(path)

    @property
    def _base(self) -> str:
        return self.original.name.removesuffix(FAILURES_SUFFIX)

    @property
    def state(self) -> Path:
        return self.original.with_name(self._base + RETRY + STATE_SUFFIX)

    @property
    def failures(self) -> Path:
        """What the round now running records (the default --failures-file of a retry)."""
        return self.original.with_name(self._base + RETRY + FAILURES_SUFFIX)

    @property
    def previous(self) -> Path:
        """What the last round recorded: the source of the round after it."""
        return self.original.with_name(self._base + PREVIOUS_SUFFIX)

    @property
    def stamp(self) -> Path:
        """The size and time of ``original`` when the rounds began: if it changes (its run
        went on and recorded more), the rounds start over from it."""
        return self.original.with_name(self._base + RETRY + ".source")

    @property
    def files(self) -> tuple[Path, ...]:
        return (self.state, self.failures, self.previous, self.stamp)

    def begin(self, state: StateFile, cp: Checkpoint | None) -> tuple[Path, Checkpoint | None]:
        """With ``state`` locked and read (``cp``): when the last round is over and left
        failures, start the next one (its state forgotten, its records moved aside to be its
        source); when the original has changed since the rounds began, start them over.
        Returns the file the round now running retries, and the checkpoint it starts from."""
        if self._changed():
            log.warning("%s has changed since its retries began: they start over from it "
                        "(the files of the earlier rounds are kept as *.old)", self.original)
            for path in self.files:
                if path.exists():
                    path.replace(path.with_name(path.name + ".old"))
            cp = None  # its state went aside with the rest
        if not self.stamp.exists():
            self.stamp.write_text(_fingerprint(self.original))
        left = _records(self.failures)
        if cp is not None and cp.complete and left:
            state.remove()
            cp = None
        if cp is None and left:
            # Also when a round ended just before its records were moved: they are the jobs
            # still failed, whichever way we got here.
            os.replace(self.failures, self.previous)
            log.info("a new round of retries: the %d jobs still failed, recorded in %s", left,
                     self.previous)
        return (self.previous if self.previous.exists() else self.original), cp

    def _changed(self) -> bool:
        try:
            return self.stamp.read_text() != _fingerprint(self.original)
        except FileNotFoundError:
            return False

    def still_failed(self) -> int | None:
        """How many jobs of ``original`` are still failed after its retries: None when no
        round has completed (all of them, then)."""
        state = StateFile(self.state)
        try:
            cp = state.load()
        except Exception:  # noqa: BLE001 - an unreadable retry state says nothing of them
            return None
        if cp is None or not cp.complete or self._changed():
            return None
        return _records(self.failures)


def _fingerprint(path: Path) -> str:
    st = path.stat()
    return f"{st.st_size} {st.st_mtime_ns}\n"


def _records(path: Path) -> int:
    return count_failures(path) if path.exists() else 0
