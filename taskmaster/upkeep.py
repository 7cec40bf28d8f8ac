"""The master's periodic work: one named step after another, every `MASTER_TICK_S`.

Some of what a run needs comes with time, not with a message: a slave falls silent, a retry's
backoff ends, a full disk makes room again, the checkpoint is due, the display moves on. Each
is a step here, in the order it runs; none blocks.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import gevent

from .checkpointer import Checkpointer
from .config import CHECKPOINT_INTERVAL_S, GONE_GRACE_S, MASTER_TICK_S
from .handout import Handout
from .ledger import Ledger
from .progress import Progress
from .registry import Registry

Step = Callable[[float], None]


class Upkeep:
    """The steps of the master's tick; `run` is the greenlet's body."""

    def __init__(self, *, lease_timeout_s: float, registry: Registry, ledger: Ledger,
                 handout: Handout, checkpointer: Checkpointer, progress: Progress,
                 check_complete: Callable[[], None], also: Sequence[Step] = ()) -> None:
        """``also``: steps of other parts, run after these."""
        self.lease_timeout_s = lease_timeout_s
        self.registry = registry
        self.ledger = ledger
        self.handout = handout
        self.checkpointer = checkpointer
        self.progress = progress
        self.check_complete = check_complete
        self.steps: list[Step] = [
            self.watch_slaves, handout.ping, self.mind_the_disk,
            self.serve_waiting, every(CHECKPOINT_INTERVAL_S, self.save_checkpoint),
            self.show_progress, handout.digest.flush, *also]
        self._last_tick = time.monotonic()

    def run(self) -> None:
        self._last_tick = time.monotonic()
        while True:
            gevent.sleep(MASTER_TICK_S)
            now = time.monotonic()
            for step in self.steps:
                step(now)

    def watch_slaves(self, now: float) -> None:
        """Give up on slaves silent for too long, unless we were the ones not listening (a
        stalled disk, a frozen process): silence from slaves then says nothing about them."""
        if now - self._last_tick > self.lease_timeout_s / 2:
            self.registry.excuse(now)
        self._last_tick = now
        for slave in self.registry.silent(now, self.lease_timeout_s):
            # A slave that said goodbye was finishing its jobs to leave: no death to charge.
            self.handout.lose(slave, f"silent for {now - slave.last_seen:.0f}s",
                              charge=not slave.said_bye)
        self.handout.settle_departed(now, GONE_GRACE_S)
        self.check_complete()

    def mind_the_disk(self, now: float) -> None:
        """Try again to write what a full or failing disk held up."""
        if self.checkpointer.blocked:
            self.checkpointer.retry(self.ledger)
            self.check_complete()

    def serve_waiting(self, now: float) -> None:
        # Retries come due with time, not with a message, and a disk makes room again: someone
        # has to look.
        if (self.registry.waiting and self.ledger.has_work() and not self.checkpointer.blocked
                and not self.handout.paused):
            self.handout.serve_waiting()

    def save_checkpoint(self, now: float) -> None:
        self.checkpointer.save(self.ledger)

    def show_progress(self, now: float) -> None:
        self.progress.update()


def every(interval_s: float, step: Step) -> Step:
    """``step``, run at most once per ``interval_s`` (and at the first call)."""
    last = float("-inf")

    def maybe(now: float) -> None:
        nonlocal last
        if now - last >= interval_s:
            last = now
            step(now)

    return maybe
