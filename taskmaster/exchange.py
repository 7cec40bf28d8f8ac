"""The master's inbound side: each message from a slave, decoded, checked and acted on.

What cannot be decoded (malformed, unsigned, oversized, replayed, or naming jobs its batch does
not hold) is dropped and counted, and logged at a bounded rate. Everything else is acted on
with no guard around it: a bug of ours here is a crash of the master, not a dropped message.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from . import protocol as p
from .checkpointer import Checkpointer
from .config import DROP_LOG_INTERVAL_S, MAX_MESSAGE_BYTES
from .fields import millis
from .handout import Handout
from .ledger import AckMismatchError, Failure, Ledger
from .progress import plural
from .registry import Registry, SlaveInfo
from .state import safe_repr

log = logging.getLogger(__name__)


class Exchange:
    """Acts on slaves' messages through the registry, the ledger and the handout."""

    def __init__(self, ledger: Ledger, registry: Registry, handout: Handout,
                 checkpointer: Checkpointer, *, key: bytes | None, epoch: bytes,
                 lease_timeout_s: float = 0.0) -> None:
        """``lease_timeout_s``: how long we wait on a silent slave, told to slaves that join
        (0: not told, and slaves beat every interval)."""
        self.ledger = ledger
        self.registry = registry
        self.handout = handout
        self.checkpointer = checkpointer
        self.key = key
        self.epoch = epoch
        self.lease_ms = millis(lease_timeout_s)
        self.dropped = 0
        self.last_drop = ""
        """Why the last dropped message was dropped."""
        self._drop_logged = float("-inf")
        self.farewell: p.Done | None = None
        """Once the run is complete: the answer to every slave that knocks or joins."""
        self.control: Callable[[bytes, p.Envelope, p.Control, float], bool] | None = None
        """Answers tm-ctl's requests (False: one not to act on)."""

    def handle(self, sender: bytes, frames: list[bytes], now: float) -> None:
        """Act on one message from ``sender``."""
        try:
            envelope = p.decode(frames, key=self.key, kinds=p.SLAVE_KINDS,
                                max_bytes=MAX_MESSAGE_BYTES)
        except p.ProtocolError as e:
            self.drop(sender, str(e))
            return
        if self.key is not None and not self.registry.fresh(sender, envelope.counter):
            self.drop(sender, "replayed message")
            return
        msg, current = envelope.message, envelope.epoch == self.epoch
        slave = self.registry.get(sender)
        if slave is not None and current:
            slave.last_counter = envelope.counter
        if isinstance(msg, p.Control):
            if self.control is None or not self.control(sender, envelope, msg, now):
                self.drop(sender, "control request not for this run")
        elif isinstance(msg, p.Gone):
            self._on_gone(msg, now)
        elif isinstance(msg, p.Heartbeat):
            self._on_heartbeat(sender, msg, current, now)
        elif isinstance(msg, p.Ready):
            if current:
                self._on_ready(sender, slave, msg, now)
        elif slave is None or not current:
            # From an earlier run, or a slave we gave up on: its heartbeat will be answered
            # with WELCOME, and then it starts afresh.
            pass
        elif isinstance(msg, p.Ack):
            slave.last_seen = now
            self._on_ack(slave, msg, now)
        elif isinstance(msg, p.Bye):
            slave.last_seen = now
            self._on_bye(slave, msg)

    def drop(self, sender: bytes, why: str) -> None:
        """Count a message we will not act on; say so now and then."""
        self.dropped += 1
        self.last_drop = why
        if self._drop_logged + DROP_LOG_INTERVAL_S <= (now := time.monotonic()):
            self._drop_logged = now
            log.warning("dropped a message from %r: %s (%d dropped so far)",
                        sender[:40], why, self.dropped)

    def _on_heartbeat(self, sender: bytes, msg: p.Heartbeat, current: bool, now: float) -> None:
        ident = self.registry.speaks_for(sender, msg.slave, msg.beat)
        if ident is None:
            self.drop(sender, "heartbeat names another slave")
            return
        slave = self.registry.get(ident)
        if slave is not None:
            if current:
                slave.last_seen = now
                if msg.started is not None:
                    slave.started, slave.started_seen = msg.started, msg.seen
                self._reconcile(slave, msg, now)
            return
        if self.farewell is not None:
            # A slave that knocks while we say goodbye learns that there is nothing left.
            self.handout.send(ident, p.Done(self.farewell.finished, self.farewell.failed,
                                            msg.nonce))
            return
        # A slave we do not know (new, from an earlier run, or one we gave up on): offer it a
        # session. It takes a WELCOME only if it echoes its latest nonce, so a late or replayed
        # one cannot reset it a second time.
        session = self.registry.offer(ident, now)
        if session is not None:
            self.handout.send(ident, p.Welcome(session, msg.nonce, self.lease_ms))

    def _reconcile(self, slave: SlaveInfo, beat: p.Heartbeat, now: float) -> None:
        if beat.held is None or slave.leaving or self.handout.closed:
            return
        if slave.last_counter < beat.sent:
            # What it sent before this heartbeat (an acknowledgement, say) is still on its way
            # on its other socket: what `held` leaves out may have been acknowledged.
            return
        jobs = self.ledger.reclaim(slave.ident, beat.held, beat.seen)
        if jobs:
            log.warning("slave %s does not hold %s it was sent before the last message it "
                        "received (lost in transit); sent out again", slave.name,
                        plural(jobs, "job"))
            # It has room again, but it is not waiting (its window was full), and with
            # nothing held it sends no acknowledgement that would be answered with work.
            self.handout.offer(slave, now)
            self.handout.serve_waiting()

    def _on_ready(self, ident: bytes, slave: SlaveInfo | None, msg: p.Ready, now: float) -> None:
        if slave is None:
            if not self.registry.accept(ident, msg):
                return
            if self.farewell is not None:
                # Welcomed just before the run ended, and so missed the goodbye to everyone.
                self.handout.send(ident, self.farewell)
                return
            slave = self.registry.join(ident, msg, now)
            log.info("slave %s joined (concurrency %d)", slave.name, slave.concurrency)
        slave.last_seen = now
        slave.window = msg.window
        self.handout.offer(slave, now)

    def _on_ack(self, slave: SlaveInfo, msg: p.Ack, now: float) -> None:
        finished = self.ledger.stats.finished
        for done in msg.done:
            try:
                final = self.ledger.ack(slave.ident, done.bid, done.failures, now)
            except AckMismatchError as e:
                self.drop(slave.ident, str(e))
                continue
            if done.failures:
                self._log_failures(slave, done.failures, final)
            self.checkpointer.record(self.ledger, final)
        slave.done += self.ledger.stats.finished - finished
        # Jobs done make room, in bytes too (leased jobs count against --max-buffer-mb): the
        # stream may be waiting for it with the buffer empty.
        self.handout.room_freed()
        if slave.leaving:
            if not self.ledger.held_by(slave.ident):
                self.registry.forget(slave.ident)
        else:
            slave.window = msg.window
            self.handout.offer(slave, now)

    def _on_gone(self, msg: p.Gone, now: float) -> None:
        slave = self.registry.get(msg.slave.encode("utf-8", "surrogateescape"))
        if slave is not None:
            self.ledger.hand_back(slave.ident, msg.handed_back)
            self.handout.gone(slave, msg.code, msg.timed_out, now)

    def _on_bye(self, slave: SlaveInfo, msg: p.Bye) -> None:
        self.ledger.hand_back(slave.ident, msg.handed_back)
        slave.leaving = slave.said_bye = True
        slave.window = 0
        log.info("slave %s leaving", slave.name)
        if not self.ledger.held_by(slave.ident):
            self.registry.forget(slave.ident)
        self.handout.serve_waiting()

    def _log_failures(self, slave: SlaveInfo, failures: tuple[tuple[int, p.JobError], ...],
                      final: list[Failure]) -> None:
        digest = self.handout.digest
        given_up = {id(f.error) for f in final}  # the policy hands on the error it was given
        for _index, error in failures:
            if id(error) not in given_up:
                digest.failed(error, f"a job on {slave.name}")
        for f in final:
            digest.failed(f.error, f"job #{f.origin} {safe_repr(f.job, 80)}", final=True)
