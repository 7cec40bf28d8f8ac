"""The master's message handling built from its parts, with no socket: for in-process tests.

`Parts` is what `Master.start` wires together (ledger, registry, checkpointer, handout,
exchange), over a `Wire` that records what would have been sent instead of a socket.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskmaster import protocol as p
from taskmaster.checkpointer import Checkpointer
from taskmaster.errors import TaskmasterError
from taskmaster.exchange import Exchange
from taskmaster.handout import Handout
from taskmaster.ledger import Ledger
from taskmaster.records import FailureLog
from taskmaster.redelivery import Redelivery
from taskmaster.registry import Registry
from taskmaster.settings import signing_key
from taskmaster.state import StateFile

SLAVE = b"fuzz-slave:1:abcdef"


@dataclass
class Wire:
    """Stands where the master's socket would: records each message, connected or not."""

    connected: bool = True
    sent: list[tuple[bytes, list[bytes]]] = field(default_factory=list)

    def send(self, ident: bytes, frames: list[bytes]) -> bool:
        if self.connected:
            self.sent.append((ident, frames))
        return self.connected

    def messages(self, key: bytes | None) -> list[tuple[bytes, p.Message]]:
        return [(ident, p.decode(frames, key=key, kinds=p.MASTER_KINDS | p.CONTROL_KINDS).message)
                for ident, frames in self.sent]


class Parts:
    """A master's parts over a `Wire`, with ``jobs`` jobs fed and the stream ended."""

    def __init__(self, tmp_path: Path, *, jobs: int = 10, secret: bytes | None = None,
                 max_retries: int = 1, max_deaths: int = 3,
                 size: int | None = None) -> None:
        self.key = signing_key(secret)
        self.epoch = p.new_epoch()
        self.ledger = Ledger(size or jobs, policy=Redelivery(max_retries, max_deaths))
        self.ledger.feed(list(range(jobs)), exhausted=True)
        self.registry = Registry()
        self.failures_path = tmp_path / f"{self.epoch.hex()}.failures.jsonl"
        self.state = StateFile(tmp_path / f"{self.epoch.hex()}.tmstate")
        self.checkpointer = Checkpointer(self.state, FailureLog(self.failures_path), None, {})
        self.wire = Wire()
        self.stops: list[TaskmasterError] = []
        self.handout = Handout(self.ledger, self.registry, self.checkpointer, self.wire.send,
                               p.Seal(self.key, self.epoch), stop=self.stops.append,
                               room_freed=lambda: None)
        self.exchange = Exchange(self.ledger, self.registry, self.handout, self.checkpointer,
                                 key=self.key, epoch=self.epoch)
        self._counters: dict[bytes, itertools.count[int]] = {}

    def frames(self, sender: bytes, message: p.Message, *, epoch: bytes | None = None,
               key: Any = "right") -> list[bytes]:
        """``message`` as ``sender`` would send it: its next counter, this run's epoch."""
        counter = next(self._counters.setdefault(sender, itertools.count(1)))
        return p.encode(message, epoch=self.epoch if epoch is None else epoch,
                        counter=counter, key=self.key if key == "right" else key)

    def receive(self, sender: bytes, message: p.Message, **kw: Any) -> None:
        self.exchange.handle(sender, self.frames(sender, message, **kw), time.monotonic())

    def join(self, ident: bytes = SLAVE, window: int = 0, concurrency: int = 1) -> None:
        """Take ``ident`` through the real handshake: knock, WELCOME, READY."""
        self.receive(ident, p.Heartbeat(ident.decode(), "knock"), epoch=p.NO_EPOCH)
        welcome = self.wire.messages(self.key)[-1][1]
        assert isinstance(welcome, p.Welcome), welcome
        self.receive(ident, p.Ready(welcome.session, window, concurrency, "fuzz", 1))
        assert self.registry.get(ident) is not None

    def unsettled(self) -> int:
        ledger = self.ledger
        return ledger.buffered + ledger.requeued + ledger.leased + ledger.recording
