"""The typed messages of the wire contract: one frozen dataclass per kind.

Each message knows its kind, how to become a JSON (or, for JOBS, pickle) body, and how to be
parsed from one; parsing checks the type and range of every field and raises `ProtocolError`
for anything else, so a receiver acts on a message without guarding against its shape.
Framing, signing and the choice of decoder are protocol.py's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .config import DEFAULT_MAX_MESSAGE_BYTES, MAX_ERROR_CHARS, MAX_HOST_CHARS, MAX_NAME_CHARS
from .errors import user_traceback

READY = b"READY"
ACK = b"ACK"
HEARTBEAT = b"HB"
BYE = b"BYE"
GONE = b"GONE"
WELCOME = b"WELCOME"
JOBS = b"JOBS"
PING = b"PING"
STOP = b"STOP"
DONE = b"DONE"

MOST_COUNT = 2**62
"""Largest number any count field may hold (JSON itself has no bound)."""


class ProtocolError(ValueError):
    """A message that does not fit the protocol; it is dropped and counted, never acted on."""


@dataclass(frozen=True, slots=True)
class JobError:
    """A user's exception as data: what travels to the master and lands in failure records."""

    type: str
    message: str
    traceback: str = ""

    @classmethod
    def of(cls, e: BaseException) -> JobError:
        """The error of a user's call that raised ``e`` (its traceback from the user's own
        frames on)."""
        return cls(type(e).__name__, _str(e)[:MAX_ERROR_CHARS],
                   user_traceback(e)[-MAX_ERROR_CHARS:])

    def to_wire(self) -> list[str]:
        return [self.type, self.message, self.traceback]

    @classmethod
    def from_wire(cls, value: Any) -> JobError:
        kind, message, trace = _fields(value, 3, "error")
        return cls(_text(kind, MAX_NAME_CHARS), _text(message, MAX_ERROR_CHARS),
                   _text(trace, MAX_ERROR_CHARS))


@dataclass(frozen=True, slots=True)
class Ready:
    """Slave to master, answering a WELCOME: "I am in; I hold up to ``window`` jobs, and take
    messages of up to ``max_bytes``"."""

    KIND: ClassVar[bytes] = READY
    session: int
    window: int
    concurrency: int
    host: str
    pid: int
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES

    def body(self) -> Any:
        return [self.session, self.window, self.concurrency, self.host, self.pid,
                self.max_bytes]

    @classmethod
    def parse(cls, body: Any) -> Ready:
        session, window, concurrency, host, pid, max_bytes = _fields(body, 6, "READY")
        return cls(_count(session), _count(window), _count(concurrency),
                   _text(host, MAX_HOST_CHARS), _count(pid), _count(max_bytes))


@dataclass(frozen=True, slots=True)
class BatchDone:
    """One finished batch in an ACK: the jobs of it that raised, by index in the batch."""

    bid: int
    failures: tuple[tuple[int, JobError], ...] = ()


@dataclass(frozen=True, slots=True)
class Ack:
    """Slave to master: these batches are done; this is the window I ask for now."""

    KIND: ClassVar[bytes] = ACK
    done: tuple[BatchDone, ...]
    window: int

    def body(self) -> Any:
        return [[[b.bid, [[i, e.to_wire()] for i, e in b.failures]] for b in self.done],
                self.window]

    @classmethod
    def parse(cls, body: Any) -> Ack:
        done, window = _fields(body, 2, "ACK")
        batches = []
        for item in _list(done, "ACK batches"):
            bid, failures = _fields(item, 2, "ACK batch")
            batches.append(BatchDone(_count(bid), tuple(
                (_count(index), JobError.from_wire(error))
                for index, error in (_fields(f, 2, "failure") for f in _list(failures,
                                                                            "failures")))))
        return cls(tuple(batches), _count(window))


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Slave to master, every second from a thread of its own (and as a knock before it is
    welcomed). It names its slave because it comes from a second socket, and says which
    (``beat``: the heartbeat thread's), so that one captured from either cannot be replayed as
    from the other; ``nonce`` is what a WELCOME must echo. ``held`` and ``started`` are the
    batch ids the slave holds and has begun, or None in a knock. ``seen`` is the counter of
    the last message the slave's own socket received from the master, ``sent`` that of the
    last it sent: the master judges what ``held`` leaves out only once it has read all the
    slave sent before, and only for batches it sent before the slave's ``seen`` (a heartbeat
    read late, after a pause of the master's, says nothing of batches sent since)."""

    KIND: ClassVar[bytes] = HEARTBEAT
    slave: str
    nonce: str
    held: frozenset[int] | None = None
    started: frozenset[int] | None = None
    beat: bool = False
    seen: int = 0
    sent: int = 0

    def body(self) -> Any:
        return [self.slave, self.nonce, _as_list(self.held), _as_list(self.started),
                self.beat, self.seen, self.sent]

    @classmethod
    def parse(cls, body: Any) -> Heartbeat:
        slave, nonce, held, started, beat, seen, sent = _fields(body, 7, "HB")
        if type(beat) is not bool:
            raise ProtocolError("HB: expected a flag")
        return cls(_text(slave, MAX_NAME_CHARS), _text(nonce, MAX_NAME_CHARS), _ids(held),
                   _ids(started), beat, _count(seen), _count(sent))


@dataclass(frozen=True, slots=True)
class Bye:
    """Slave to master: I am leaving; these batches I never started, hand them to others."""

    KIND: ClassVar[bytes] = BYE
    handed_back: tuple[int, ...] = ()

    def body(self) -> Any:
        return list(self.handed_back)

    @classmethod
    def parse(cls, body: Any) -> Bye:
        return cls(tuple(_count(bid) for bid in _list(body, "BYE")))


@dataclass(frozen=True, slots=True)
class Gone:
    """To the master, from a slave's supervisor or the slave's own watchdog: that slave is
    gone now, do not wait out its silence. ``code`` is how its process ended (None while it
    is being replaced); ``timed_out``, when set, is the job whose --job-timeout made its
    watchdog replace it: (batch id, index in the batch, the error); ``handed_back``, the
    batches it never started."""

    KIND: ClassVar[bytes] = GONE
    slave: str
    code: int | None = None
    timed_out: tuple[int, int, JobError] | None = None
    handed_back: tuple[int, ...] = ()

    def body(self) -> Any:
        timed_out = self.timed_out
        return [self.slave, self.code,
                None if timed_out is None else [timed_out[0], timed_out[1],
                                                timed_out[2].to_wire()],
                list(self.handed_back)]

    @classmethod
    def parse(cls, body: Any) -> Gone:
        slave, code, timed_out, handed_back = _fields(body, 4, "GONE")
        if code is not None and (type(code) is not int or not -256 < code < 256):
            raise ProtocolError("GONE: expected an exit status")
        job = None
        if timed_out is not None:
            bid, index, error = _fields(timed_out, 3, "GONE job")
            job = (_count(bid), _count(index), JobError.from_wire(error))
        return cls(_text(slave, MAX_NAME_CHARS), code, job,
                   tuple(_count(bid) for bid in _list(handed_back, "GONE batches")))


@dataclass(frozen=True, slots=True)
class Welcome:
    """Master to slave: this is my epoch; forget any earlier lease and send READY."""

    KIND: ClassVar[bytes] = WELCOME
    session: int
    nonce: str

    def body(self) -> Any:
        return [self.session, self.nonce]

    @classmethod
    def parse(cls, body: Any) -> Welcome:
        session, nonce = _fields(body, 2, "WELCOME")
        return cls(_count(session), _text(nonce, MAX_NAME_CHARS))


@dataclass(frozen=True, slots=True)
class Jobs:
    """Master to slave: a batch of consecutive jobs, acknowledged as a whole. ``isolate``:
    run it with nothing else beside it (a slave died holding it before)."""

    KIND: ClassVar[bytes] = JOBS
    bid: int
    jobs: list[Any]
    isolate: bool = False

    def body(self) -> Any:
        return (self.bid, self.jobs, self.isolate)

    @classmethod
    def parse(cls, body: Any) -> Jobs:
        if not isinstance(body, tuple) or len(body) != 3:
            raise ProtocolError("JOBS: expected (batch id, jobs, isolate)")
        bid, jobs, isolate = body
        if type(jobs) is not list or not jobs or type(isolate) is not bool:
            raise ProtocolError("JOBS: expected a non-empty list of jobs and a flag")
        return cls(_count(bid), jobs, isolate)


@dataclass(frozen=True, slots=True)
class Ping:
    """Master to slave: I am alive."""

    KIND: ClassVar[bytes] = PING

    def body(self) -> Any:
        return None

    @classmethod
    def parse(cls, body: Any) -> Ping:
        return cls()


@dataclass(frozen=True, slots=True)
class Stop:
    """Master to slave: I am stopping; start nothing more, hand back what you have not begun."""

    KIND: ClassVar[bytes] = STOP

    def body(self) -> Any:
        return None

    @classmethod
    def parse(cls, body: Any) -> Stop:
        return cls()


@dataclass(frozen=True, slots=True)
class Done:
    """Master to slave: the run is complete, leave. ``nonce`` when it answers a knock."""

    KIND: ClassVar[bytes] = DONE
    finished: int
    failed: int
    nonce: str | None = None

    def body(self) -> Any:
        return [self.finished, self.failed, self.nonce]

    @classmethod
    def parse(cls, body: Any) -> Done:
        finished, failed, nonce = _fields(body, 3, "DONE")
        return cls(_count(finished), _count(failed),
                   None if nonce is None else _text(nonce, MAX_NAME_CHARS))


Message = Ready | Ack | Heartbeat | Bye | Gone | Welcome | Jobs | Ping | Stop | Done
TYPES: dict[bytes, Any] = {t.KIND: t for t in (Ready, Ack, Heartbeat, Bye, Gone, Welcome, Jobs,
                                                Ping, Stop, Done)}
"""Each kind's message class."""


# -- field checks: each returns the value, or raises ProtocolError ---------------------------


def _count(value: Any) -> int:
    # type() rather than isinstance(): True is an int too, and JSON allows floats, 1e999, NaN.
    if type(value) is not int or not 0 <= value <= MOST_COUNT:
        raise ProtocolError(f"expected a count, got {_str(value)[:40]!r}")
    return value


def _text(value: Any, most_chars: int) -> str:
    if type(value) is not str:
        raise ProtocolError(f"expected text, got {type(value).__name__}")
    try:
        # JSON can carry a lone surrogate, which no encoding of ours would take later. (A
        # slave's name from a host that is not UTF-8 arrives surrogate-escaped: that is fine.)
        value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ProtocolError("text that cannot be encoded (a lone surrogate)") from None
    return value[:most_chars]


def _list(value: Any, what: str) -> list[Any]:
    if type(value) is not list:
        raise ProtocolError(f"{what}: expected a list, got {type(value).__name__}")
    return value


def _fields(value: Any, n: int, what: str) -> list[Any]:
    if type(value) is not list or len(value) != n:
        raise ProtocolError(f"{what}: expected a list of {n} fields")
    return value


def _ids(value: Any) -> frozenset[int] | None:
    return None if value is None else frozenset(_count(v) for v in _list(value, "batch ids"))


def _as_list(ids: frozenset[int] | None) -> list[int] | None:
    return None if ids is None else list(ids)


def _str(value: Any) -> str:
    """str() that never raises: a user's exception may have a broken __str__."""
    try:
        return str(value)
    except Exception as e:  # noqa: BLE001
        return f"<unprintable {type(value).__name__}: {type(e).__name__}>"
