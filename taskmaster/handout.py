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
from collections import deque
from collections.abc import Callable

from . import protocol as p
from .checkpointer import Checkpointer
from .config import DEFAULT_MAX_MESSAGE_BYTES, HEARTBEAT_INTERVAL_S
from .digest import FailureDigest
from .dispatch import JobSize, lease_for
from .errors import (
    EXIT_OK,
    EXIT_REPLACE,
    EXIT_SIGINT,
    EXIT_SIGTERM,
    TaskmasterError,
    UserCodeError,
)
from .ledger import Batch, Ledger
from .limits import TokenBucket
from .progress import plural
from .registry import Registry, SlaveInfo
from .state import safe_repr

log = logging.getLogger(__name__)

LEFT_IN_ORDER = frozenset({EXIT_OK, EXIT_REPLACE, EXIT_SIGINT, EXIT_SIGTERM})
"""Exit statuses of a slave that chose to leave (the run done, recycling, a stop signal)."""

Send = Callable[[bytes, list[bytes]], bool]
"""Queue frames to one slave; False when it is not connected."""


class Handout:
    """Hands the ledger's work to the registry's slaves over ``send``."""

    def __init__(self, ledger: Ledger, registry: Registry, checkpointer: Checkpointer,
                 send: Send, seal: p.Seal, *, stop: Callable[[TaskmasterError], None],
                 room_freed: Callable[[], None],
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 rate: float | None = None) -> None:
        self.ledger = ledger
        self.registry = registry
        self.checkpointer = checkpointer
        self._send = send
        self.seal = seal
        self._stop = stop
        self.room_freed = room_freed
        """Tell the stream that jobs have left the master's hands."""
        self.max_message_bytes = max_message_bytes
        self.job_size = JobSize()
        self.digest = FailureDigest(log)
        self.closed = False
        """No new leases (the run is stopping)."""
        self.paused = False
        """No new leases until resumed (tm-ctl pause)."""
        self.bucket = TokenBucket(rate, time.monotonic())
        """At most so many jobs a second go out (--rate, tm-ctl rate)."""

    def send(self, ident: bytes, message: p.Message) -> bool:
        sent = self._send(ident, self.seal(message))
        if sent and (slave := self.registry.get(ident)) is not None:
            slave.last_sent = time.monotonic()
        return sent

    def broadcast(self, message: p.Message) -> None:
        for slave in self.registry:
            self.send(slave.ident, message)

    def ping(self, now: float) -> None:
        """PING the members that have had no message from us for `HEARTBEAT_INTERVAL_S`, or
        for their `idle_ping_s` while they hold nothing.

        A slave takes any message as a sign of life (it gives up on a master silent for
        --master-timeout), and the counter of the last one it received, which its heartbeat
        reports as ``seen``, is what shows a batch lost on the way (`Ledger.reclaim`): any
        message does both as well as a PING, so one sent within the interval makes the PING
        redundant. A slave holding nothing has no batch to lose, and needs only the first:
        a thousand idle slaves (a paused run) cost a fifth of the PINGs. Asked every tick, so
        no slave waits longer than its interval and a tick.
        """
        for slave in self.registry.slaves.values():
            interval = (HEARTBEAT_INTERVAL_S if self.ledger.held_by(slave.ident)
                        else slave.idle_ping_s)
            if slave.last_sent <= now - interval and self._send(slave.ident,
                                                                   self.seal(p.Ping())):
                slave.last_sent = now

    def offer(self, slave: SlaveInfo, now: float) -> None:
        """Lease ``slave`` what it may hold now, and send it."""
        if slave.leaving or self.closed:
            return
        if self.checkpointer.blocked or self.paused:
            # A file cannot be written, or an operator paused the run: nothing new goes out
            # until it can (the master offers work to those waiting then).
            self.registry.waiting.add(slave.ident)
            return
        lease = lease_for(slave.window, self.ledger.held_by(slave.ident), slave.concurrency,
                          self.job_size.bytes)
        credit = lease.credit
        if credit <= 0:
            self.registry.waiting.discard(slave.ident)
            return
        # Under a rate limit, only the jobs the bucket holds; the slave waits for the rest
        # (the master's tick serves those waiting as the bucket fills).
        allowed = min(credit, self.bucket.available(now))
        if self.bucket.rate is not None and allowed:
            # Shared out: the first slave to ask would otherwise take every token each time.
            allowed = max(1, min(allowed, allowed // max(1, self.registry.takers()) + 1))
        batches = deque(self.ledger.take(slave.ident, allowed, now, max_batch=lease.max_batch,
                                         alone=self.registry.takers() <= 1)) if allowed else deque()
        took = bool(batches)
        if took:
            self.bucket.spend(sum(len(b.jobs) for b in batches))
        while batches:
            sent = self._send_batch(slave, batches.popleft(), batches, now)
            if sent is None:
                return
            credit -= sent
        if credit <= 0:
            self.registry.waiting.discard(slave.ident)
        elif took:
            self.registry.waiting.requeue(slave.ident)
        else:
            self.registry.waiting.add(slave.ident)
        if took:
            self.room_freed()

    def _send_batch(self, slave: SlaveInfo, batch: Batch, rest: deque[Batch],
                    now: float) -> int | None:
        """Send one leased batch; the jobs sent, or None when the slave is lost or the run
        must stop (``rest``, the batches still to send, are then handed back). A batch too
        big for one message is cut in halves put first in ``rest``."""
        try:
            frames = self.seal(p.Jobs(batch.bid, batch.jobs, batch.isolate))
        except Exception:  # noqa: BLE001 - a job that cannot be pickled is the user's error
            self.ledger.hand_back(slave.ident, [b.bid for b in (batch, *rest)])
            self._stop(_unpicklable(batch))
            return None
        size = len(frames[p.BODY_FRAME])
        self.job_size.learn(size, len(batch.jobs))
        limit = min(self.max_message_bytes, slave.max_bytes or self.max_message_bytes)
        if size > limit:
            if len(batch.jobs) > 1:
                rest.extendleft(reversed(self.ledger.split(slave.ident, batch.bid)))
            else:
                self._too_big(slave, batch, size, limit)
            return 0
        self.ledger.sent(slave.ident, batch.bid, self.seal.counter)
        slave.last_sent = now
        if not self._send(slave.ident, frames):
            # Never sent, so never started: they go out again uncharged, before the slave's
            # other leases are charged with its death.
            self.ledger.hand_back(slave.ident, [b.bid for b in (batch, *rest)])
            self.departed(slave, None, "disconnected", now)
            return None
        return len(batch.jobs)

    def _too_big(self, slave: SlaveInfo, batch: Batch, size: int, limit: int) -> None:
        mib = 1024 * 1024
        message = (f"the job pickles to {size / mib:.1f} MiB, over the {limit / mib:.0f} MiB "
                   "a message may hold; raise --max-message-mb (on the master and every "
                   "slave) to send it")
        log.error("job #%d %s cannot be sent: %s; recorded as failed", batch.origin(0),
                  safe_repr(batch.jobs[0], 200), message)
        self.checkpointer.record(self.ledger, self.ledger.reject(
            slave.ident, batch.bid, p.JobError("JobTooLarge", message)))

    def serve_waiting(self) -> None:
        """Offer work to the slaves that wait for it, in their turn, while there is some."""
        if self.closed or self.paused or self.checkpointer.blocked:
            return  # nothing would go out: no need to go down the line
        waiting, now = self.registry.waiting, time.monotonic()
        # Each once at most: one that takes nothing (a retry not yet due, or not for it) goes
        # to the back, and so does one served that still has room.
        for _ in range(len(waiting)):
            if not waiting or not self.ledger.has_work() or not self.bucket.available(now):
                break
            ident = waiting.first()
            waiting.discard(ident)
            slave = self.registry.get(ident)
            if slave is not None:
                self.offer(slave, now)

    def departed(self, slave: SlaveInfo, code: int | None, why: str, now: float) -> None:
        """``slave``'s process is gone (``code``: its exit status, if known). Nothing more
        goes to it; its leases are taken back once its last messages have had
        `GONE_GRACE_S` to come in (see `settle_departed`)."""
        slave.leaving, slave.window = True, 0
        self.registry.waiting.discard(slave.ident)
        if slave.gone is None:
            slave.gone = (now, code, why)
        elif slave.gone[1] is None and code is not None:
            slave.gone = (slave.gone[0], code, why)  # how it ended, learnt later
        if not self.ledger.held_by(slave.ident):
            self.registry.forget(slave.ident)
        self.serve_waiting()  # what it handed back, or was never sent, goes to others now

    def settle_departed(self, now: float, grace_s: float) -> None:
        """Take back the leases of slaves gone for ``grace_s``: uncharged when the slave left
        in order (it said goodbye and exited as a slave that leaves does), else each batch
        it had started is charged with its death."""
        for slave in self.registry.departed(now, grace_s):
            assert slave.gone is not None
            _, code, why = slave.gone
            in_order = slave.said_bye and (code is None or code in LEFT_IN_ORDER)
            self.lose(slave, why, charge=not in_order)

    def lose(self, slave: SlaveInfo, why: str, charge: bool = True) -> None:
        """``slave`` is gone: its leases go out again, as the redelivery policy says (or, when
        not ``charge``, all of them uncharged)."""
        held = self.ledger.held_by(slave.ident)
        self.registry.forget(slave.ident)
        if not charge:
            log.info("slave %s left (%s); %s it did not finish %s out again", slave.name, why,
                     plural(held, "leased job"), "goes" if held == 1 else "go")
            self.ledger.release(slave.ident)
            self.serve_waiting()
            return
        log.warning("slave %s lost (%s); %s %s out again", slave.name, why,
                    plural(held, "leased job"), "goes" if held == 1 else "go")
        final = self.ledger.lose(slave.ident, slave.started, slave.started_seen)
        for f in final:
            self.digest.failed(f.error, f"job #{f.origin} {safe_repr(f.job, 80)}", final=True)
        self.checkpointer.record(self.ledger, final)
        self.serve_waiting()


    def gone(self, slave: SlaveInfo, code: int | None,
             timed_out: tuple[int, int, p.JobError] | None, now: float) -> None:
        """``slave`` is gone, as its supervisor or its own watchdog says: at once, rather than
        after its silence. A job that ran past its time is charged as a failed attempt."""
        if timed_out is None:
            self.departed(slave, code, "its process died" if code is None else
                          f"its process exited with {code}", now)
            return
        bid, index, error = timed_out
        log.warning("slave %s is being replaced: a job ran past its --job-timeout; its %d "
                    "leased jobs go out again", slave.name, self.ledger.held_by(slave.ident))
        self.registry.forget(slave.ident)
        self.checkpointer.record(self.ledger, self.ledger.time_out(slave.ident, bid, index,
                                                                   error, now))
        self.serve_waiting()


def _unpicklable(batch: Batch) -> UserCodeError:
    for i, job in enumerate(batch.jobs):
        try:
            pickle.dumps(job, p.PICKLE_PROTOCOL)
        except Exception as e:  # noqa: BLE001
            return UserCodeError(
                f"job #{batch.origin(i)} {safe_repr(job, 200)} cannot be pickled "
                f"({type(e).__name__}: {e}); get_jobs must yield picklable values")
    return UserCodeError(f"batch from job #{batch.start} cannot be pickled", "")
