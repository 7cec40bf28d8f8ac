"""Who the master's slaves are: the welcome handshake, sessions, replay counters, liveness.

A slave joins in two steps. It knocks (a heartbeat from an identity the master does not know);
the master offers a session in a WELCOME that echoes the knock's nonce; the slave answers READY
with that session and becomes a member. The nonce makes a late or replayed WELCOME useless, the
session a late or replayed READY. Pure bookkeeping: the master does the sending.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from .config import HEARTBEAT_INTERVAL_S, IDLE_PING_S, MAX_TRACKED_SENDERS, WELCOME_REPEAT_S
from .messages import Ready
from .protocol import HEARTBEAT_SUFFIX, idle_interval


@dataclass
class SlaveInfo:
    """What the master knows of one member slave."""

    ident: bytes
    host: str = "?"
    pid: int = 0
    concurrency: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    max_bytes: int = 0
    """The largest message it takes."""
    takers: set[bytes] = field(default_factory=set, repr=False, compare=False)
    """Its registry's members that would take work now, which `window` and `leaving` keep."""
    _window: int = field(default=0, init=False, repr=False)
    _leaving: bool = field(default=False, init=False, repr=False)
    last_sent: float = float("-inf")
    """When the master last sent it a message (of any kind: each says the master lives)."""
    idle_ping_s: float = HEARTBEAT_INTERVAL_S
    """How long it may go without a message from us while it holds nothing (see
    `IDLE_PING_S`): from the patience its READY gave, the heartbeat interval if it gave none."""
    started: frozenset[int] | None = None
    """Batches the slave said it had started, in its last heartbeat, having received our
    messages up to the counter ``started_seen``."""
    started_seen: int = 0
    last_counter: int = 0
    """The counter of the last message read from its own socket."""
    done: int = 0
    """Jobs it finished (acknowledged without an error), this session."""
    said_bye: bool = False
    """It said it was leaving (BYE): what it still holds, it was finishing."""
    gone: tuple[float, int | None, str] | None = None
    """Its process is known to be gone: since when, its exit status if known, and how we
    know; its leases are taken back `GONE_GRACE_S` later."""

    @property
    def name(self) -> str:
        return f"{self.host}:{self.pid}"

    @property
    def window(self) -> int:
        """Jobs the slave asks to hold at once (it measures how many keep it busy)."""
        return self._window

    @window.setter
    def window(self, jobs: int) -> None:
        self._window = jobs
        self._count()

    @property
    def leaving(self) -> bool:
        return self._leaving

    @leaving.setter
    def leaving(self, leaving: bool) -> None:
        self._leaving = leaving
        self._count()

    def _count(self) -> None:
        # Kept as they change, not counted when asked: every offer asks, and a count would
        # walk every member.
        if self._window and not self._leaving:
            self.takers.add(self.ident)
        else:
            self.takers.discard(self.ident)


class Registry:
    """The member slaves, the sessions offered to newcomers, and every sender's counter."""

    def __init__(self) -> None:
        self.slaves: dict[bytes, SlaveInfo] = {}
        self.waiting = Waiting()
        """Members with room left and nothing to give them: served first when work comes."""
        self._takers: set[bytes] = set()
        self._offers: dict[bytes, tuple[int, float]] = {}  # session offered, when
        self._counters: dict[bytes, int] = {}  # last counter seen from each sender
        self._sessions = itertools.count(1)

    def __len__(self) -> int:
        return len(self.slaves)

    def __iter__(self) -> Iterator[SlaveInfo]:
        return iter(list(self.slaves.values()))

    def get(self, ident: bytes) -> SlaveInfo | None:
        return self.slaves.get(ident)

    def fresh(self, sender: bytes, counter: int) -> bool:
        """Each sender's counter only grows; a repeat is a replayed capture."""
        if counter <= self._counters.get(sender, 0):
            return False
        if len(self._counters) > MAX_TRACKED_SENDERS:
            # Only authenticated senders get here, so this is many slaves over a long run.
            self._counters.clear()
        self._counters[sender] = counter
        return True

    @staticmethod
    def speaks_for(sender: bytes, slave: str, beat: bool) -> bytes | None:
        """The identity a heartbeat names, if its sender may speak for it: only the slave's
        own socket of the kind the heartbeat says (``beat``: its heartbeat thread's). The MAC
        does not cover the connection's identity, which a peer picks itself, and each socket
        has counters of its own: a heartbeat replayed from another socket could otherwise keep
        a dead slave's leases alive."""
        ident = slave.encode("utf-8", "surrogateescape")
        return ident if sender == (ident + HEARTBEAT_SUFFIX if beat else ident) else None

    def offer(self, ident: bytes, now: float) -> int | None:
        """The session to offer a knocking stranger, or None when it was offered one just now
        (knocks are not answered more often than `WELCOME_REPEAT_S`)."""
        offered = self._offers.get(ident)
        if offered is not None and now - offered[1] < WELCOME_REPEAT_S:
            return None
        session = offered[0] if offered is not None else next(self._sessions)
        if len(self._offers) > MAX_TRACKED_SENDERS:
            self._offers.clear()
        self._offers[ident] = (session, now)
        return session

    def accept(self, ident: bytes, ready: Ready) -> bool:
        """True when ``ready`` takes up the session offered to ``ident`` (and uses it up)."""
        offer = self._offers.get(ident)
        if offer is None or offer[0] != ready.session:
            return False
        del self._offers[ident]
        return True

    def join(self, ident: bytes, ready: Ready, now: float) -> SlaveInfo:
        """Make ``ident`` a member, as its READY describes it."""
        self.forget(ident)
        slave = self.slaves[ident] = SlaveInfo(ident, ready.host, ready.pid, ready.concurrency,
                                               last_seen=now, max_bytes=ready.max_bytes,
                                               takers=self._takers)
        slave.idle_ping_s = idle_interval(ready.patience_ms, IDLE_PING_S)
        return slave

    def forget(self, ident: bytes) -> None:
        slave = self.slaves.pop(ident, None)
        if slave is not None:
            # Whatever is still done to it (a caller holding it) no longer counts here.
            slave.takers = set()
        self._takers.discard(ident)
        self.waiting.discard(ident)

    def silent(self, now: float, timeout_s: float) -> list[SlaveInfo]:
        """Members not heard from for longer than ``timeout_s`` (and not known to be gone)."""
        return [s for s in self.slaves.values()
                if now - s.last_seen > timeout_s and s.gone is None]

    def departed(self, now: float, grace_s: float) -> list[SlaveInfo]:
        """Members known to be gone for ``grace_s`` or more."""
        return [s for s in self.slaves.values()
                if s.gone is not None and now - s.gone[0] >= grace_s]

    def excuse(self, now: float) -> None:
        """The master itself was not listening until ``now`` (a stalled disk, a frozen
        process): silence until then says nothing about the slaves."""
        for slave in self.slaves.values():
            slave.last_seen = max(slave.last_seen, now)

    def takers(self) -> int:
        """Members that would take work now (with a window, and not leaving)."""
        return len(self._takers)


class Waiting:
    """Members waiting for work, in the order they are to be served: the longest waiting
    first, and one that was served goes to the back of the line. In any fixed order the
    same few slaves would take every job that comes while the rest go without."""

    def __init__(self) -> None:
        self._line: dict[bytes, None] = {}  # a dict keeps its keys in the order they came

    def add(self, ident: bytes) -> None:
        """Wait in line (where it was, if it waits already)."""
        self._line.setdefault(ident, None)

    def requeue(self, ident: bytes) -> None:
        """Wait again, at the back of the line: it has just been served."""
        self._line.pop(ident, None)
        self._line[ident] = None

    def discard(self, ident: bytes) -> None:
        self._line.pop(ident, None)

    def first(self) -> bytes:
        """The one to serve next (the line must not be empty)."""
        return next(iter(self._line))

    def __contains__(self, ident: object) -> bool:
        return ident in self._line

    def __len__(self) -> int:
        return len(self._line)

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._line))
