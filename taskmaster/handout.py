"""Leasing jobs to slaves and sending them; taking leases back from slaves that are gone.

The master's outbound side. A slave is offered work whenever it may hold more (after READY,
after each ACK) and, when there was nothing to give it, it waits in the registry until the
stream or a retry brings some. Nothing here blocks: sends are queued by ZeroMQ, and a send that
fails means the slave's connection is gone.
"""

from __future__ import annotations

import logging
import pickle
import time
import traceback
from collections.abc import Callable

from . import protocol as p
from .checkpointer import Checkpointer
from .dispatch import JobSize, lease_for
from .errors import TaskmasterError, UserCodeError
from .ledger import Batch, Ledger
from .registry import Registry, SlaveInfo
from .state import safe_repr

log = logging.getLogger(__name__)

Send = Callable[[bytes, list[bytes]], bool]
"""Queue frames to one slave; False when it is not connected."""


class Handout:
    """Hands the ledger's work to the registry's slaves over ``send``."""

    def __init__(self, ledger: Ledger, registry: Registry, checkpointer: Checkpointer,
                 send: Send, seal: p.Seal, *, stop: Callable[[TaskmasterError], None],
                 room_freed: Callable[[], None]) -> None:
        self.ledger = ledger
        self.registry = registry
        self.checkpointer = checkpointer
        self._send = send
        self.seal = seal
        self._stop = stop
        self._room_freed = room_freed
        self.job_size = JobSize()
        self.closed = False
        """No new leases (the run is stopping)."""

    def send(self, ident: bytes, message: p.Message) -> bool:
        return self._send(ident, self.seal(message))

    def broadcast(self, message: p.Message) -> None:
        for slave in self.registry:
            self.send(slave.ident, message)

    def offer(self, slave: SlaveInfo, now: float) -> None:
        """Lease ``slave`` what it may hold now, and send it."""
        if slave.leaving or self.closed:
            return
        lease = lease_for(slave.window, self.ledger.held_by(slave.ident), slave.concurrency,
                          self.job_size.bytes)
        credit = lease.credit
        if credit <= 0:
            self.registry.waiting.discard(slave.ident)
            return
        batches = self.ledger.take(slave.ident, credit, now, max_batch=lease.max_batch,
                                   alone=self.registry.takers() <= 1)
        for i, batch in enumerate(batches):
            credit -= len(batch.jobs)
            if not self._send_batch(slave, batch, unsent=batches[i + 1:]):
                return
        if credit > 0:
            self.registry.waiting.add(slave.ident)
        else:
            self.registry.waiting.discard(slave.ident)
        if batches:
            self._room_freed()

    def _send_batch(self, slave: SlaveInfo, batch: Batch, unsent: list[Batch]) -> bool:
        try:
            frames = self.seal(p.Jobs(batch.bid, batch.jobs, batch.isolate))
        except Exception:  # noqa: BLE001 - a job that cannot be pickled is the user's error
            self.ledger.hand_back(slave.ident, [b.bid for b in (batch, *unsent)])
            self._stop(_unpicklable(batch))
            return False
        self.job_size.learn(len(frames[p.BODY_FRAME]), len(batch.jobs))
        if not self._send(slave.ident, frames):
            # Never sent, so never started: they go out again uncharged, before the slave's
            # other leases are charged with its death.
            self.ledger.hand_back(slave.ident, [b.bid for b in (batch, *unsent)])
            self.lose(slave, "disconnected")
            return False
        return True

    def serve_waiting(self) -> None:
        """Offer work to the slaves that wait for it, while there is some."""
        now = time.monotonic()
        for ident in list(self.registry.waiting):
            slave = self.registry.get(ident)
            if slave is None:
                self.registry.waiting.discard(ident)
            elif self.ledger.has_work():
                self.offer(slave, now)
            else:
                break

    def lose(self, slave: SlaveInfo, why: str) -> None:
        """``slave`` is gone: its leases go out again, as the redelivery policy says."""
        log.warning("slave %s lost (%s); %d leased jobs go out again", slave.name, why,
                    self.ledger.held_by(slave.ident))
        self.registry.forget(slave.ident)
        final = self.ledger.lose(slave.ident, slave.started, slave.reported_at)
        for f in final:
            log.error("job #%d %s recorded as failed: %s", f.origin, safe_repr(f.job, 200),
                      f.error.message)
        self.checkpointer.record(self.ledger, final)
        self.serve_waiting()


def _unpicklable(batch: Batch) -> UserCodeError:
    for i, job in enumerate(batch.jobs):
        try:
            pickle.dumps(job, p.PICKLE_PROTOCOL)
        except Exception as e:  # noqa: BLE001
            return UserCodeError(
                f"job #{batch.origin(i)} {safe_repr(job, 200)} cannot be pickled "
                f"({type(e).__name__}: {e}); get_jobs must yield picklable values",
                traceback.format_exc())
    return UserCodeError(f"batch from job #{batch.start} cannot be pickled", "")
