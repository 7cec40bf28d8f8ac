"""The slave's side of its session with a master: joining, and which messages are ours.

A slave knocks with a fresh nonce until a master answers WELCOME to that nonce; the master's
epoch then names the run the slave is in, and its counter only grows. A message of another
epoch is for a run we have left; one whose counter does not grow is a replay (when signed).
"""

from __future__ import annotations

import logging
import time
import uuid

from . import protocol as p
from .config import HEARTBEAT_INTERVAL_S, IDLE_BEAT_S, JOIN_FAST_S

log = logging.getLogger(__name__)


class Session:
    """Who we are to the master, and what we have heard from it."""

    def __init__(self, name: str, key: bytes | None, max_message_bytes: int) -> None:
        self.name = name
        self.key = key
        self.max_message_bytes = max_message_bytes
        self.seal = p.Seal(key)
        self.number = 0
        self.nonce = uuid.uuid4().hex
        self.master_counter = 0
        """The counter of the master's last message we took."""
        self.idle_beat_s = HEARTBEAT_INTERVAL_S
        """How often to beat while we hold nothing: `IDLE_BEAT_S`, or a quarter of the
        master's lease timeout if its WELCOME said a shorter one."""
        # The beat schedule (`beat_due`, `reconnected`): only the heartbeat thread uses it.
        self._beat_at = float("-inf")  # when we last beat
        self._beat_seen = -1  # and the master's counter then
        self._eager_until = 0.0  # beat every tick until then

    @property
    def epoch(self) -> bytes:
        """The run we are in (`p.NO_EPOCH` before a master welcomed us)."""
        return self.seal.epoch

    @property
    def joined(self) -> bool:
        return self.seal.epoch != p.NO_EPOCH

    def accept(self, frames: list[bytes]) -> p.Envelope | None:
        """The master's message, if it is for us to act on."""
        try:
            envelope = p.decode(frames, key=self.key, kinds=p.MASTER_KINDS,
                                max_bytes=self.max_message_bytes)
        except p.ProtocolError as e:
            log.warning("dropped a message from the master: %s", e)
            return None
        msg = envelope.message
        if isinstance(msg, p.Welcome):
            return envelope  # judged by `join`
        if isinstance(msg, p.Done) and msg.nonce == self.nonce:
            return envelope  # the answer to our knock, from a master that has just finished
        if envelope.epoch != self.epoch:
            return None  # meant for a run we have left
        if self.key is not None and envelope.counter <= self.master_counter:
            log.warning("dropped a replayed message from the master")
            return None
        self.master_counter = envelope.counter
        return envelope

    def join(self, envelope: p.Envelope, welcome: p.Welcome) -> bool:
        """Take a WELCOME, if it answers our latest knock (else it is an earlier answer,
        already taken, or a replay)."""
        if welcome.nonce != self.nonce:
            return False
        if self.joined and envelope.epoch == self.epoch and welcome.session == self.number:
            # The same session offered again: our heartbeat (on its own socket) overtook our
            # READY, and the master asked again. We are in it already; starting over would
            # throw away the batches it has sent us since.
            return False
        if self.joined:
            log.warning("master restarted or lost track of this slave; rejoining")
        self.nonce = uuid.uuid4().hex
        self.seal.epoch = envelope.epoch
        self.number = welcome.session
        self.master_counter = envelope.counter
        self.idle_beat_s = p.idle_interval(welcome.lease_ms, IDLE_BEAT_S)
        return True

    def beat_due(self, holding: bool, now: float) -> bool:
        """Whether to beat on this tick (the heartbeat thread ticks every interval): always
        while we hold jobs or knock, and after any message from the master, whose ``seen``
        in our beat is how it finds a batch lost on the way to us; else, holding nothing, a
        beat only says we live, which the master needs every `idle_beat_s` (a thousand idle
        slaves beating each second cost a master more than all else it did then)."""
        # (Half a tick early rather than a tick late: the thread wakes once an interval.)
        quiet_s = self.idle_beat_s - HEARTBEAT_INTERVAL_S / 2
        if (not holding and self.joined and self.master_counter == self._beat_seen
                and now - self._beat_at < quiet_s and now >= self._eager_until):
            return False
        self._beat_at, self._beat_seen = now, self.master_counter
        return True

    def reconnected(self) -> None:
        """Our heartbeat socket (re)connected: perhaps to a master that restarted, which knows
        us only once we beat. Every tick for a while, then, even holding nothing (a beat sent
        while the connection was still being made is dropped)."""
        self._eager_until = time.monotonic() + JOIN_FAST_S

    def knock(self, held: frozenset[int] | None = None,
              started: frozenset[int] | None = None, beat: bool = False) -> p.Heartbeat:
        """A heartbeat: our knock before joining, our liveness after."""
        # `sent` before `seen`: what the master has read from us, and we from it, only grows.
        sent = self.seal.counter
        return p.Heartbeat(self.name, self.nonce, held, started, beat, self.master_counter,
                           sent)
