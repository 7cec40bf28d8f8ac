"""The wire format, and nothing else: message kinds, pack/unpack, authentication.

A message is four frames::

    kind | header | body | mac

``kind`` is one of the constants below. ``header`` is the run's epoch (8 random bytes chosen
by each master start, so that messages meant for an earlier run are recognised) and a sender
counter (so that a captured message cannot be replayed). ``mac`` is an HMAC-SHA256 over the
kind, header and body when a shared secret is set, else empty.

``body`` is JSON for every kind but JOBS, whose body is a pickle of the user's jobs. So the
master never unpickles anything that arrives from the network, secret or not; a slave unpickles
only JOBS, and with a secret only once the MAC has verified.

`unpack` checks frame count, kind, sizes and the MAC before it decodes anything, and raises
`ProtocolError` for whatever does not fit; callers count and drop those. No zmq and no gevent
here: this module is pure so that it can be tested and fuzzed on its own.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import pickle
import struct
from dataclasses import dataclass
from typing import Any

# Slave -> master.
READY = b"READY"  # body: [session, window, concurrency, host, pid]: "I hold up to `window`"
ACK = b"ACK"  # body: [done, window]; done = [[batch_id, [[index, error], ...]], ...]
HEARTBEAT = b"HB"  # body: [slave_id, nonce, held batch ids or null, started ids or null]
#                    (also sent from a second socket, so it names its slave; the nonce is
#                    what a WELCOME must echo)
BYE = b"BYE"  # body: [batch_id, ...] handed back unstarted; the slave is leaving
# Master -> slave.
WELCOME = b"WELCOME"  # body: [session, nonce]; "this is my epoch: forget old leases, send READY"
JOBS = b"JOBS"  # body (pickle): (batch_id, jobs, isolate)
PING = b"PING"  # body: null; the master is alive
STOP = b"STOP"  # body: null; the master is stopping: start no more jobs
DONE = b"DONE"  # body: [finished, failed, nonce or null]; the run is complete: exit

SLAVE_KINDS = frozenset({READY, ACK, HEARTBEAT, BYE})
MASTER_KINDS = frozenset({WELCOME, JOBS, PING, STOP, DONE})

BODY_FRAME = 2
"""Index of the body among a message's frames."""
EPOCH_BYTES = 8
_HEADER = struct.Struct("!8sQ")
MAC_BYTES = hashlib.sha256().digest_size
PICKLE_PROTOCOL = pickle.HIGHEST_PROTOCOL


class ProtocolError(ValueError):
    """A message that does not fit the protocol; it is dropped and counted, never acted on."""


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded message."""

    kind: bytes
    epoch: bytes
    counter: int
    body: Any


def new_epoch() -> bytes:
    """A fresh run epoch: random, so two master starts never share one."""
    return os.urandom(EPOCH_BYTES)


def _mac(key: bytes, kind: bytes, header: bytes, body: bytes) -> bytes:
    # Length-prefix the kind so that no two (kind, header, body) splits sign the same bytes.
    m = hmac.new(key, len(kind).to_bytes(2, "big") + kind, hashlib.sha256)
    m.update(header)
    m.update(body)
    return m.digest()


def pack(kind: bytes, body: Any, *, epoch: bytes, counter: int = 0,
         key: bytes | None = None) -> list[bytes]:
    """Encode one message as its frames."""
    header = _HEADER.pack(epoch, counter)
    if kind == JOBS:
        payload = pickle.dumps(body, PICKLE_PROTOCOL)
    else:
        payload = json.dumps(body, separators=(",", ":")).encode()
    mac = _mac(key, kind, header, payload) if key else b""
    return [kind, header, payload, mac]


def unpack(frames: list[bytes], *, key: bytes | None = None,
           kinds: frozenset[bytes] = SLAVE_KINDS | MASTER_KINDS,
           max_bytes: int | None = None) -> Message:
    """Decode frames into a Message, authenticating before unpickling.

    Raises ProtocolError for anything malformed, unknown, oversized or unauthenticated.
    """
    if len(frames) != 4:
        raise ProtocolError(f"expected 4 frames, got {len(frames)}")
    kind, header, payload, mac = (bytes(f) for f in frames)
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
        body = pickle.loads(payload) if kind == JOBS else json.loads(payload)
    except Exception as e:  # noqa: BLE001 - any decoding failure is a malformed message
        raise ProtocolError(f"undecodable body: {type(e).__name__}") from None
    return Message(kind, epoch, counter, body)
