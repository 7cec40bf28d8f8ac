"""The wire contract: every message master and slaves exchange, and how it is framed.

A message is four frames::

    kind | header | body | mac

``kind`` names the message. ``header`` is the run's epoch (8 random bytes chosen by each master
start, so that messages meant for an earlier run are recognised) and a sender counter (so that
a captured message cannot be replayed). ``mac`` is an HMAC-SHA256 over kind, header and body
when a shared secret is set, else empty.

``body`` is JSON for every kind but JOBS, whose body is a pickle of the user's jobs. So the
master never unpickles anything that arrives from the network, secret or not; a slave unpickles
only JOBS, and with a secret only once the MAC has verified.

Two layers: `pack`/`unpack` frame and authenticate a raw body; `encode`/`decode` turn the typed
messages of messages.py (re-exported here: they are the contract) into frames and back.
`decode` checks the frame count, kind, size and MAC before it decodes anything, then the type
and range of every field, and raises `ProtocolError` (only that) for whatever does not fit: a
receiver acts on a decoded message without guarding against its shape. No zmq and no gevent
here: this module is pure, tested and fuzzed alone.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

from .config import HEARTBEAT_INTERVAL_S
from .messages import (
    ACK,
    ANSWER,
    BYE,
    CONTROL,
    DONE,
    GONE,
    HEARTBEAT,
    JOBS,
    MOST_COUNT,
    PING,
    READY,
    STOP,
    TYPES,
    WELCOME,
    Ack,
    Answer,
    BatchDone,
    Bye,
    Control,
    Done,
    Gone,
    Heartbeat,
    JobError,
    Jobs,
    Message,
    Ping,
    ProtocolError,
    Ready,
    Stop,
    Welcome,
)

__all__ = [  # the messages are part of the contract: protocol.Ready, protocol.JobError, ...
    "ACK",
    "ANSWER",
    "BYE",
    "CONTROL",
    "DONE",
    "GONE",
    "HEARTBEAT",
    "JOBS",
    "MOST_COUNT",
    "PING",
    "READY",
    "STOP",
    "WELCOME",
    "Ack",
    "Answer",
    "BatchDone",
    "Bye",
    "Control",
    "Done",
    "Envelope",
    "Gone",
    "Heartbeat",
    "JobError",
    "Jobs",
    "Message",
    "Ping",
    "ProtocolError",
    "Ready",
    "Seal",
    "Stop",
    "Welcome",
    "decode",
    "encode",
    "new_epoch",
    "pack",
    "unpack",
]

SLAVE_KINDS = frozenset({READY, ACK, HEARTBEAT, BYE, GONE, CONTROL})
"""What a master accepts from slaves (and `CONTROL` from tm-ctl)."""
CONTROL_KINDS = frozenset({ANSWER})
"""What tm-ctl accepts."""
MASTER_KINDS = frozenset({WELCOME, JOBS, PING, STOP, DONE})
"""What a slave accepts."""

BODY_FRAME = 2
"""Index of the body among a message's frames."""
EPOCH_BYTES = 8
NO_EPOCH = bytes(EPOCH_BYTES)
"""The epoch of a slave that no master has welcomed yet."""
_HEADER = struct.Struct("!8sQ")
MAC_BYTES = hashlib.sha256().digest_size
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL
HEARTBEAT_SUFFIX = b"/heartbeat"
"""A slave's heartbeat thread connects as the slave's identity plus this."""


def idle_interval(patience_ms: int, most_s: float) -> float:
    """How long a side may leave a peer without a message while nothing of theirs is in
    flight, the peer giving up after ``patience_ms`` (0: it did not say): a quarter of that,
    at most ``most_s``, never less than the heartbeat interval."""
    if not patience_ms:
        return HEARTBEAT_INTERVAL_S
    return max(HEARTBEAT_INTERVAL_S, min(most_s, patience_ms / 1000 / 4))


@dataclass(frozen=True, slots=True)
class Envelope:
    """A decoded message with what its header said."""

    epoch: bytes
    counter: int
    message: Message


def new_epoch() -> bytes:
    """A fresh run epoch: random, so two master starts never share one."""
    return os.urandom(EPOCH_BYTES)


# -- framing --------------------------------------------------------------------------------


_JSON = json.JSONEncoder(separators=(",", ":"))
_UNJSON = json.JSONDecoder()


@functools.lru_cache(maxsize=4)
def _keyed(key: bytes) -> hmac.HMAC:
    """An HMAC with the key taken in, for copies: keying one costs more than hashing the few
    hundred bytes of most messages (a heartbeat a second from every slave). It is only ever
    copied, never updated, so threads (a slave's heartbeat thread) may share it."""
    return hmac.new(key, digestmod=hashlib.sha256)


def _mac(key: bytes, kind: bytes, header: bytes, body: bytes) -> bytes:
    m = _keyed(key).copy()
    # Length-prefix the kind so that no two (kind, header, body) splits sign the same bytes.
    m.update(len(kind).to_bytes(2, "big") + kind)
    m.update(header)
    m.update(body)
    return m.digest()


def pack(kind: bytes, body: Any, *, epoch: bytes, counter: int = 0,
         key: bytes | None = None) -> list[bytes]:
    """Frame a raw body (pickled for JOBS, JSON otherwise), signed when there is a key."""
    header = _HEADER.pack(epoch, counter)
    # (One encoder for all: json.dumps with separators would build one for each message.)
    payload = (pickle.dumps(body, PICKLE_PROTOCOL) if kind == JOBS
               else _JSON.encode(body).encode())
    mac = _mac(key, kind, header, payload) if key else b""
    return [kind, header, payload, mac]


def encode(message: Message, *, epoch: bytes, counter: int,
           key: bytes | None = None) -> list[bytes]:
    """A typed message as its frames."""
    return pack(message.KIND, message.body(), epoch=epoch, counter=counter, key=key)


def unpack(frames: list[bytes], *, key: bytes | None = None,
           kinds: frozenset[bytes] = SLAVE_KINDS | MASTER_KINDS | CONTROL_KINDS,
           max_bytes: int | None = None) -> tuple[bytes, bytes, int, Any]:
    """(kind, epoch, counter, raw body) of a message, authenticated before it is decoded."""
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}")
    # The body as it came (a slave's is a view of ZeroMQ's memory, not a copy of up to a
    # megabyte); the small frames as bytes.
    kind, header, payload, mac = bytes(frames[0]), bytes(frames[1]), frames[2], bytes(frames[3])
    if kind not in kinds:
        raise ProtocolError(f"unknown message kind {kind[:16]!r}")
    if len(header) != _HEADER.size:
        raise ProtocolError("bad header size")
    if max_bytes is not None and len(payload) > max_bytes:
        raise ProtocolError(f"message body of {len(payload)} bytes exceeds {max_bytes}")
    if key:
        if len(mac) != MAC_BYTES or not hmac.compare_digest(mac, _mac(key, kind, header, payload)):
            raise ProtocolError("bad signature (wrong or missing shared secret)")
    elif mac:
        raise ProtocolError("signed message, but no shared secret is set here")
    epoch, counter = _HEADER.unpack(header)
    try:
        # (As json.loads takes bytes, but with no guessing of UTF-16 or -32: ours are UTF-8.)
        body = (pickle.loads(payload) if kind == JOBS
                else _UNJSON.decode(str(payload, "utf-8", "surrogatepass")))
    except Exception as e:  # noqa: BLE001 - whatever the decoder raises, the body is malformed
        raise ProtocolError(f"undecodable body: {type(e).__name__}") from None
    return kind, epoch, counter, body


def decode(frames: list[bytes], *, key: bytes | None, kinds: frozenset[bytes],
           max_bytes: int | None = None) -> Envelope:
    """Frames into a typed message: authenticated, then checked field by field."""
    kind, epoch, counter, body = unpack(frames, key=key, kinds=kinds, max_bytes=max_bytes)
    return Envelope(epoch, counter, TYPES[kind].parse(body))


class Seal:
    """Encodes one sender's messages: under its epoch, with its own growing counter, signed
    with its key. A sender's counter must never repeat (a repeat is a replay), so each socket
    that sends has a Seal of its own."""

    def __init__(self, key: bytes | None, epoch: bytes = NO_EPOCH) -> None:
        self.key = key
        self.epoch = epoch
        self._counter = 0

    @property
    def counter(self) -> int:
        """The counter of the last message sealed."""
        return self._counter

    def __call__(self, message: Message) -> list[bytes]:
        self._counter += 1
        return encode(message, epoch=self.epoch, counter=self._counter, key=self.key)
