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
from .fields import MOST_COUNT as MOST_COUNT  # re-exported: the contract's bound
from .fields import (
    ProtocolError,
    a_list,
    as_list,
    count,
    fields,
    ids,
    safe_str,
    text,
)

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
CONTROL = b"CTL"
ANSWER = b"ANSWER"

COMMANDS = ("hello", "status", "pause", "resume", "stop", "rate")
"""What tm-ctl may ask (hello: the master's epoch, answered to anyone who may ask)."""
MOST_RATE = 1e9
"""Largest rate limit a request may set, in jobs per second."""

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
        return cls(type(e).__name__, safe_str(e)[:MAX_ERROR_CHARS],
                   user_traceback(e)[-MAX_ERROR_CHARS:])

    def cut(self, chars: int) -> JobError:
        """The same error in about ``chars`` characters: the head of its message, and the
        tail of its traceback (where the user's own frame is) in what is left."""
        if len(self.message) + len(self.traceback) <= chars:
            return self
        message = self.message if len(self.message) <= chars // 2 else \
            self.message[:chars // 2] + "…"
        rest = chars - min(len(self.message), chars // 2)
        traceback = self.traceback if len(self.traceback) <= rest else \
            "…" + self.traceback[len(self.traceback) - rest:]
        return JobError(self.type, message, traceback)

    def to_wire(self) -> list[str]:
        return [self.type, self.message, self.traceback]

    @classmethod
    def from_wire(cls, value: Any) -> JobError:
        kind, message, trace = fields(value, 3, "error")
        return cls(text(kind, MAX_NAME_CHARS), text(message, MAX_ERROR_CHARS),
                   text(trace, MAX_ERROR_CHARS))


@dataclass(frozen=True, slots=True)
class Ready:
    """Slave to master, answering a WELCOME: "I am in; I hold up to ``window`` jobs, take
    messages of up to ``max_bytes``, and give up on a master silent for ``patience_ms``" (0:
    not said)."""

    KIND: ClassVar[bytes] = READY
    session: int
    window: int
    concurrency: int
    host: str
    pid: int
    max_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    patience_ms: int = 0

    def body(self) -> Any:
        return [self.session, self.window, self.concurrency, self.host, self.pid,
                self.max_bytes, self.patience_ms]

    @classmethod
    def parse(cls, body: Any) -> Ready:
        session, window, concurrency, host, pid, max_bytes, patience_ms = fields(body, 7,
                                                                                 "READY")
        return cls(count(session), count(window), count(concurrency),
                   text(host, MAX_HOST_CHARS), count(pid), count(max_bytes), count(patience_ms))


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
        done, window = fields(body, 2, "ACK")
        batches = []
        for item in a_list(done, "ACK batches"):
            bid, failures = fields(item, 2, "ACK batch")
            batches.append(BatchDone(count(bid), tuple(
                (count(index), JobError.from_wire(error))
                for index, error in (fields(f, 2, "failure") for f in a_list(failures,
                                                                            "failures")))))
        return cls(tuple(batches), count(window))


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
        return [self.slave, self.nonce, as_list(self.held), as_list(self.started),
                self.beat, self.seen, self.sent]

    @classmethod
    def parse(cls, body: Any) -> Heartbeat:
        slave, nonce, held, started, beat, seen, sent = fields(body, 7, "HB")
        if type(beat) is not bool:
            raise ProtocolError("HB: expected a flag")
        return cls(text(slave, MAX_NAME_CHARS), text(nonce, MAX_NAME_CHARS), ids(held),
                   ids(started), beat, count(seen), count(sent))


@dataclass(frozen=True, slots=True)
class Bye:
    """Slave to master: I am leaving; these batches I never started, hand them to others."""

    KIND: ClassVar[bytes] = BYE
    handed_back: tuple[int, ...] = ()

    def body(self) -> Any:
        return list(self.handed_back)

    @classmethod
    def parse(cls, body: Any) -> Bye:
        return cls(tuple(count(bid) for bid in a_list(body, "BYE")))


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
        slave, code, timed_out, handed_back = fields(body, 4, "GONE")
        if code is not None and (type(code) is not int or not -256 < code < 256):
            raise ProtocolError("GONE: expected an exit status")
        job = None
        if timed_out is not None:
            bid, index, error = fields(timed_out, 3, "GONE job")
            job = (count(bid), count(index), JobError.from_wire(error))
        return cls(text(slave, MAX_NAME_CHARS), code, job,
                   tuple(count(bid) for bid in a_list(handed_back, "GONE batches")))


@dataclass(frozen=True, slots=True)
class Welcome:
    """Master to slave: this is my epoch; forget any earlier lease and send READY. I give up
    on a slave silent for ``lease_ms`` (0: not said)."""

    KIND: ClassVar[bytes] = WELCOME
    session: int
    nonce: str
    lease_ms: int = 0

    def body(self) -> Any:
        return [self.session, self.nonce, self.lease_ms]

    @classmethod
    def parse(cls, body: Any) -> Welcome:
        session, nonce, lease_ms = fields(body, 3, "WELCOME")
        return cls(count(session), text(nonce, MAX_NAME_CHARS), count(lease_ms))


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
        return cls(count(bid), jobs, isolate)


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
        finished, failed, nonce = fields(body, 3, "DONE")
        return cls(count(finished), count(failed),
                   None if nonce is None else text(nonce, MAX_NAME_CHARS))


@dataclass(frozen=True, slots=True)
class Control:
    """tm-ctl to master: a request. ``client`` names the connection it comes from (the MAC
    does not cover a connection's identity, which a peer picks itself); ``value`` is the rate
    of "rate" (None: no limit)."""

    KIND: ClassVar[bytes] = CONTROL
    client: str
    nonce: str
    command: str
    value: float | None = None

    def body(self) -> Any:
        return [self.client, self.nonce, self.command, self.value]

    @classmethod
    def parse(cls, body: Any) -> Control:
        client, nonce, command, value = fields(body, 4, "CTL")
        if command not in COMMANDS:
            raise ProtocolError(f"CTL: unknown command {safe_str(command)[:20]!r}")
        if value is not None and (type(value) not in (int, float)
                                  or not 0 < value <= MOST_RATE):  # NaN fails this too
            raise ProtocolError("CTL: a rate must be a positive number of jobs per second")
        return cls(text(client, MAX_NAME_CHARS), text(nonce, MAX_NAME_CHARS), command,
                   None if value is None else float(value))


@dataclass(frozen=True, slots=True)
class Answer:
    """Master to tm-ctl: whether the request was done, one line saying what changed, and
    for "status" the run's numbers."""

    KIND: ClassVar[bytes] = ANSWER
    nonce: str
    ok: bool
    line: str
    status: dict[str, Any] | None = None

    def body(self) -> Any:
        return [self.nonce, self.ok, self.line, self.status]

    @classmethod
    def parse(cls, body: Any) -> Answer:
        nonce, ok, line, status = fields(body, 4, "ANSWER")
        if type(ok) is not bool or (status is not None and type(status) is not dict):
            raise ProtocolError("ANSWER: expected a flag and a status object")
        return cls(text(nonce, MAX_NAME_CHARS), ok, text(line, MAX_ERROR_CHARS), status)


Message = (Ready | Ack | Heartbeat | Bye | Gone | Welcome | Jobs | Ping | Stop | Done | Control
           | Answer)
TYPES: dict[bytes, Any] = {t.KIND: t for t in (Ready, Ack, Heartbeat, Bye, Gone, Welcome, Jobs,
                                                Ping, Stop, Done, Control, Answer)}
"""Each kind's message class."""
